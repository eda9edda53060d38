import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ternaus.run_files import RunFiles
from ternaus.data.source import DataSource
from ternaus.config import load_config
from ternaus.data.dataset import SegmentationDataset
from ternaus.data.files import read_mask
from ternaus.data.geometry import Geometry
from ternaus.data.layouts import list_train
from ternaus.errors import DataError
from ternaus.folds import assign_folds
from ternaus.prepare import prepare_folds
from ternaus.rle import rle_decode


def test_padding_is_split_evenly_like_carvana_1918_to_1920():
    geometry = Geometry(None)
    assert geometry.pads(1280, 1918) == (0, 0, 1, 1)
    assert geometry.pads(40, 62) == (12, 12, 1, 1)
    image = np.arange(40 * 62 * 3, dtype=np.uint8).reshape(40, 62, 3)
    padded = geometry.image_to_input(image)
    assert padded.shape == (64, 64, 3)
    assert np.array_equal(padded[12:52, 1:63], image)
    assert np.array_equal(padded[12:52, 0], image[:, 1])  # reflected, not copied, edge
    restored = geometry.restore(torch.from_numpy(padded).permute(2, 0, 1), (40, 62))
    assert np.array_equal(restored.permute(1, 2, 0).numpy(), image)


def test_resize_geometry_returns_to_the_original_size():
    geometry = Geometry((64, 96))
    image = np.zeros((128, 190, 3), np.uint8)
    assert geometry.image_to_input(image).shape == (64, 96, 3)
    assert geometry.restore(torch.rand(1, 64, 96), (128, 190)).shape == (1, 128, 190)


def test_masks_0_255_are_normalised_and_other_values_refused(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "a.png")
    assert read_mask(tmp_path / "a.png").tolist() == [[0, 1], [1, 0]]
    Image.fromarray(np.array([[0, 3], [1, 0]], np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b.png holds values \[0, 1, 3\]"):
        read_mask(tmp_path / "b.png")


def test_no_car_is_in_two_folds():
    cars = [f"car{i:02d}" for i in range(13)]
    table = pd.DataFrame({"id": [f"{c}_{v:02d}" for c in cars for v in range(1, 17)],
                          "car_id": [c for c in cars for _ in range(16)],
                          "mask_area": [1000 * i + v for i in range(13) for v in range(16)]})
    for stratify in ("none", "mask_area"):
        folds = assign_folds(table, 5, stratify, seed=0)
        assert folds.groupby("car_id")["fold"].nunique().max() == 1
        assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
        assert folds.groupby("fold")["car_id"].nunique().between(2, 3).all()


def test_too_few_cars_for_the_folds():
    table = pd.DataFrame({"id": ["a_01", "b_01"], "car_id": ["a", "b"]})
    with pytest.raises(DataError, match="2 car"):
        assign_folds(table, 3)


def config_for(root, tmp_path, *overrides):
    return load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "folds.n_folds=3",
                              *overrides])


def test_prepare_folds_groups_cars_and_writes_the_csv(tiny_dataset, tmp_path):
    path = prepare_folds(config_for(tiny_dataset, tmp_path, "folds.stratify=mask_area"))
    folds = pd.read_csv(path, dtype=str)
    assert len(folds) == 48 and folds.groupby("car_id")["fold"].nunique().max() == 1
    assert (tmp_path / "run" / "configs" / "prepare_folds.yaml").is_file()


def test_masks_come_from_the_csv_when_the_gif_is_missing(tiny_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    gif = sorted((root / "train_masks").iterdir())[0]
    truth = read_mask(gif)
    gif.unlink()
    table = list_train(DataSource.of(config_for(root, tmp_path)))
    row = table[table["mask"] == ""].iloc[0].to_dict()
    item = SegmentationDataset([row], Geometry(None), True, mask_at_input_size=False)[0]
    assert np.array_equal(item["mask"][0].numpy(), truth)


def test_prepare_lists_every_problem_with_file_names(tiny_dataset, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tiny_dataset, root)
    (root / "train_masks.csv").unlink()
    masks = sorted((root / "train_masks").iterdir())
    masks[0].unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks[1], format="GIF")
    with pytest.raises(DataError) as err:
        prepare_folds(config_for(root, tmp_path))
    message = str(err.value)
    assert "2 problem(s)" in message
    assert masks[0].name.replace("_mask.gif", ".jpg") in message and "no mask" in message
    assert f"{masks[1]}: mask is 10x10, its image 62x40" in message


def test_synthetic_layout_masks_and_rle_agree(tiny_dataset):
    train = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    assert len(train) == 48 and train[0].endswith("_01.jpg") and train[15].endswith("_16.jpg")
    car = train[0].split("_")[0]
    assert len(car) == 12 and int(car, 16) >= 0
    csv = pd.read_csv(tiny_dataset / "train_masks.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == ["img", "rle_mask"] and len(csv) == 48
    for name, rle in list(zip(csv["img"], csv["rle_mask"]))[:16]:
        with Image.open(tiny_dataset / "train_masks" / name.replace(".jpg", "_mask.gif")) as gif:
            assert gif.mode == "P"
            mask = np.array(gif)
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        assert np.array_equal(rle_decode(rle, mask.shape), mask)
    sample = pd.read_csv(tiny_dataset / "sample_submission.csv")
    assert len(sample) == 16 and set(sample["img"]) == {p.name for p in (tiny_dataset / "test").iterdir()}
    assert len(list((tiny_dataset / "test_masks").iterdir())) == 16
    metadata = pd.read_csv(tiny_dataset / "metadata.csv", dtype=str)
    assert list(metadata.columns) == ["id", "year", "make", "model", "trim1", "trim2"] and len(metadata) == 4


def test_synthetic_views_change_the_silhouette(tiny_dataset):
    car = sorted((tiny_dataset / "train_masks").iterdir())[0].name.split("_")[0]
    masks = [read_mask(tiny_dataset / "train_masks" / f"{car}_{v:02d}_mask.gif") for v in (1, 5, 9)]
    widths = [np.ptp(np.flatnonzero(m.any(0))) for m in masks]
    assert widths[1] > 1.3 * widths[0]  # the side view is much wider than the front view


def test_synthetic_is_deterministic(tmp_path):
    from ternaus.fixtures.carvana import generate

    a = generate(tmp_path / "a", cars=1, test_cars=1, size=(64, 48), seed=7)
    b = generate(tmp_path / "b", cars=1, test_cars=1, size=(64, 48), seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 16 * 4 + 3
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_a_folds_file_from_another_fold_count_is_refused(tiny_dataset, tmp_path):
    from ternaus.run_files import read_folds

    prepare_folds(config_for(tiny_dataset, tmp_path))
    with pytest.raises(DataError, match=r"holds folds \[0, 1, 2\] but folds.n_folds=2; run prepare_folds.py"):
        read_folds(RunFiles.of(config_for(tiny_dataset, tmp_path, "folds.n_folds=2")).folds_csv, 2)
