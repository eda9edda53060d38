"""Data sources other than Carvana's layout: folders paired by stem (greyscale, mixed sizes, class-index masks),
RLE CSVs with a row per image, per instance (unioned) or per (image, class); folds grouped and stratified."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from ternaus.data.source import DataSource
from ternaus.config import load_config
from ternaus.data.dataset import SegmentationDataset, pad_collate
from ternaus.data.geometry import Geometry
from ternaus.data.layouts import MaskSpec, list_train, load_masks, mask_spec
from ternaus.data.layouts import test_rows as listed_test_rows
from ternaus.errors import ConfigError, DataError
from ternaus.folds import assign_folds, group_ids
from ternaus.rle import RleFormat, encode_rle

COLUMN_MAJOR = RleFormat(order="F")


def folders_config(root, *overrides):
    return load_config(None, [f"data.root={root}", "data.layout=folders", "data.train_dir=images",
                              "data.masks_dir=masks", "data.test_dir=images", *overrides])


@pytest.fixture
def mixed_folder(tmp_path):
    """Three greyscale images of different sizes as PNG, JPEG and TIFF; masks 0/255 PNG and 0/1 GIF."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem, (h, w), suffix, mask_suffix, scale in [("a", (20, 30), ".png", ".png", 255),
                                                     ("b", (33, 17), ".jpg", ".png", 255),
                                                     ("c", (40, 40), ".tif", ".gif", 1)]:
        cv2.imwrite(str(tmp_path / "images" / f"{stem}{suffix}"), rng.integers(0, 255, (h, w), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2, : w // 3] = 1
        if mask_suffix == ".gif":
            from PIL import Image
            Image.fromarray(mask * scale, mode="L").save(tmp_path / "masks" / f"{stem}{mask_suffix}")
        else:
            cv2.imwrite(str(tmp_path / "masks" / f"{stem}{mask_suffix}"), mask * scale)
    return tmp_path


def test_folders_pair_by_stem_and_mixed_sizes_are_padded_and_restored(mixed_folder):
    cfg = folders_config(mixed_folder)
    table = list_train(DataSource.of(cfg))
    assert table["id"].tolist() == ["a", "b", "c"] and all(table["mask"].str.len() > 0)
    dataset = SegmentationDataset(table.to_dict("records"), Geometry(None, 32), True, masks=mask_spec(DataSource.of(cfg)))
    batch = pad_collate([dataset[i] for i in range(3)])
    # Each image padded to its own multiple of 32 (32x32, 64x32, 64x64), the batch to the largest.
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 1, 64, 64)
    assert batch["size"].tolist() == [[20, 30], [33, 17], [40, 40]]
    b = dataset[1]  # greyscale: three equal channels for the ImageNet encoder
    assert torch.equal(b["image"][0], b["image"][1]) and torch.equal(b["image"][1], b["image"][2])
    for maps, size in zip(batch["mask"], batch["size"].tolist()):
        mask = Geometry(None, 32).restore(maps, tuple(size))[0].numpy()
        h, w = size
        assert mask.shape == (h, w) and mask.sum() == (h // 2) * (w // 3) and mask[: h // 2, : w // 3].all()
    assert [r["id"] for r in listed_test_rows(DataSource.of(cfg))] == ["a", "b", "c"]


def test_folders_refuse_two_images_of_one_stem_and_masks_without_images(mixed_folder):
    cv2.imwrite(str(mixed_folder / "images" / "a.jpg"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="both a.jpg and a.png"):
        list_train(DataSource.of(folders_config(mixed_folder)))
    (mixed_folder / "images" / "a.jpg").unlink()
    (mixed_folder / "images" / "c.tif").unlink()
    with pytest.raises(DataError, match=r"1 mask\(s\) .* have no image.*\['c'\]"):
        list_train(DataSource.of(folders_config(mixed_folder)))


def test_class_index_masks_become_one_plane_per_class(tmp_path):
    index = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), index)
    row = {"id": "m", "mask": str(tmp_path / "m.png"), "rle": ""}
    planes = load_masks(row, (2, 3), MaskSpec(2, layout="folders")).tolist()
    assert planes == [[[0, 1, 0], [0, 0, 0]], [[0, 0, 1], [1, 1, 0]]]
    with pytest.raises(DataError, match="class index 3"):
        cv2.imwrite(str(tmp_path / "m.png"), index + 1)
        load_masks(row, (2, 3), MaskSpec(2, layout="folders"))


def write_images(folder, names, shape=(4, 5)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros(shape, np.uint8))


def csv_config(root, rows, *overrides):
    return load_config(None, [f"data.root={root}", "data.layout=rle_csv", "data.train_dir=train",
                              "data.masks_csv=masks.csv", "data.csv.image_column=ImageId",
                              "data.csv.rle_column=EncodedPixels", f"data.csv.rows={rows}", "data.rle.order=F",
                              "submission.rows=image_class", "submission.values=[\"{image}_{class}\", \"{rle}\"]",
                              *overrides])


def test_instance_rows_are_unioned_and_an_empty_row_is_an_empty_mask(tmp_path):
    write_images(tmp_path / "train", ["s1.jpg", "s2.jpg"])
    ship_a = np.zeros((4, 5), np.uint8)
    ship_a[0:2, 0] = 1
    ship_b = np.zeros((4, 5), np.uint8)
    ship_b[1:4, 3] = 1
    # Column-major, 1-indexed: ship a is pixels 1-2 of column 0; ship b pixels 2-4 of column 3, 14-16 overall.
    assert (encode_rle(ship_a, COLUMN_MAJOR), encode_rle(ship_b, COLUMN_MAJOR)) == ("1 2", "14 3")
    pd.DataFrame({"ImageId": ["s1.jpg", "s1.jpg", "s2.jpg"], "EncodedPixels": ["1 2", "14 3", ""]}).to_csv(
        tmp_path / "masks.csv", index=False)
    cfg = csv_config(tmp_path, "instance")
    rows = list_train(DataSource.of(cfg)).to_dict("records")
    assert [r["id"] for r in rows] == ["s1", "s2"]
    assert np.array_equal(load_masks(rows[0], (4, 5), mask_spec(DataSource.of(cfg)))[0], ship_a | ship_b)
    assert load_masks(rows[1], (4, 5), mask_spec(DataSource.of(cfg))).sum() == 0
    with pytest.raises(DataError, match="more than once.*data.csv.rows=instance"):
        list_train(DataSource.of(csv_config(tmp_path, "image")))


def test_image_class_rows_fill_their_class_plane_and_unlisted_images_are_empty(tmp_path):
    write_images(tmp_path / "train", ["x.jpg", "y.jpg"])
    pd.DataFrame({"ImageId": ["x.jpg", "x.jpg"], "ClassId": ["3", "1"], "EncodedPixels": ["1 2", "5 4"]}).to_csv(
        tmp_path / "masks.csv", index=False)
    cfg = csv_config(tmp_path, "image_class", "data.csv.class_column=ClassId", "model.num_classes=3")
    rows = list_train(DataSource.of(cfg)).to_dict("records")
    planes = load_masks(rows[0], (4, 5), mask_spec(DataSource.of(cfg)))
    assert planes.shape == (3, 4, 5)
    assert planes[0][:, 1].tolist() == [1, 1, 1, 1] and planes[0].sum() == 4  # "5 4": column 1, column-major
    assert planes[1].sum() == 0 and planes[2][0:2, 0].tolist() == [1, 1] and planes[2].sum() == 2
    assert load_masks(rows[1], (4, 5), mask_spec(DataSource.of(cfg))).sum() == 0  # y is not in the CSV: no defect


def test_rle_csv_refuses_rows_without_images_unknown_classes_and_runs_outside_the_image(tmp_path):
    write_images(tmp_path / "train", ["x.jpg"])
    pd.DataFrame({"ImageId": ["x.jpg", "gone.jpg"], "ClassId": ["1", "1"], "EncodedPixels": ["1 2", ""]}).to_csv(
        tmp_path / "masks.csv", index=False)
    cfg = csv_config(tmp_path, "image_class", "data.csv.class_column=ClassId", "model.num_classes=2")
    with pytest.raises(DataError, match=r"1 image\(s\) of .*masks.csv are not in .*\['gone'\]"):
        list_train(DataSource.of(cfg))
    pd.DataFrame({"ImageId": ["x.jpg"], "ClassId": ["5"], "EncodedPixels": ["1 2"]}).to_csv(tmp_path / "masks.csv",
                                                                                           index=False)
    with pytest.raises(DataError, match=r"classes \['5'\] are not in data.class_names \['1', '2'\]"):
        list_train(DataSource.of(cfg))
    pd.DataFrame({"ImageId": ["x.jpg"], "ClassId": ["1"], "EncodedPixels": ["19 5"]}).to_csv(tmp_path / "masks.csv",
                                                                                            index=False)
    with pytest.raises(DataError, match="does not fit its 5x4 image"):
        load_masks(list_train(DataSource.of(cfg)).to_dict("records")[0], (4, 5), mask_spec(DataSource.of(cfg)))


def test_group_ids_by_car_none_and_pattern():
    ids = pd.Series(["abc_01", "abc_02", "de_f_01"])
    assert group_ids(ids, "car").tolist() == ["abc", "abc", "de_f"]
    assert group_ids(ids, "none").tolist() == ids.tolist()
    assert group_ids(pd.Series(["p7-slice3", "p7-slice4", "p9-slice1"]), "pattern", r"^(p\d+)-").tolist() == \
        ["p7", "p7", "p9"]
    with pytest.raises(DataError, match="does not match 1 id"):
        group_ids(pd.Series(["p7-x", "q"]), "pattern", r"^(p\d+)-")


def test_stratifying_by_empty_masks_spreads_the_empty_images_evenly():
    # 40 images, 16 of them empty: every one of 4 folds should get 4 empty and 6 non-empty.
    table = pd.DataFrame({"id": [f"i{k}" for k in range(40)], "group": [f"i{k}" for k in range(40)],
                          "mask_area": [0] * 16 + list(range(1, 25))})
    folds = assign_folds(table, 4, "empty", seed=0, group="group")
    empty_per_fold = folds[folds["mask_area"] == 0].groupby("fold").size().tolist()
    assert empty_per_fold == [4, 4, 4, 4]


@pytest.mark.parametrize("overrides, message", [
    (["model.num_classes=4", "data.layout=rle_csv", "data.csv.rows=image_class"], "class_column"),
    (["submission.values=[\"{image}\"]"], "1 value(s) for 2 submission.columns"),
    (["submission.values=[\"{img}\", \"{rle}\"]"], "unknown field {img}"),
    (["submission.rows=image_class"], "must name the class"),
    (["postprocess.threshold=[0.5, 0.5]"], "2 threshold(s) for model.num_classes=1"),
    (["folds.group_by=pattern", "folds.group_pattern=abc"], "needs a group"),
    (["data.class_names=[a, b]"], "2 name(s) for model.num_classes=1"),
    (["data.rle.order=X"], "data.rle.order: must be one of C, F"),
])
def test_competition_settings_are_checked_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_an_image_without_its_mask_is_named_by_prepare_folds(mixed_folder, tmp_path):
    from ternaus.prepare import prepare_folds

    (mixed_folder / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match=r"b.jpg: no mask \(neither b.png nor b.gif in data.masks_dir\)"):
        prepare_folds(folders_config(mixed_folder, f"output_dir={tmp_path / 'run'}", "folds.group_by=none"))


def test_one_class_layouts_and_formats_are_refused_for_several_classes_when_used(tiny_dataset, tmp_path):
    from ternaus.submission import submission_format

    cfg = load_config(None, [f"data.root={tiny_dataset}", "model.num_classes=2"])  # training needs no format
    with pytest.raises(ConfigError, match="submission.rows=image writes one class, model.num_classes=2"):
        submission_format(cfg)
    rows = list_train(DataSource.of(cfg)).head(1).to_dict("records")
    with pytest.raises(DataError, match="1 mask plane.*model.num_classes=2: Carvana's layout holds one class"):
        SegmentationDataset(rows, Geometry(None, 32), True, masks=mask_spec(DataSource.of(cfg)))[0]
