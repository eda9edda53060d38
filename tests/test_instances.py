"""Instance competitions as they ship (issue 27, the 2018 Data Science Bowl): one folder per image with one mask
PNG per object (``data.layout: instance_folders``), the contact-line targets, the DSB metric and the watershed
that splits touching objects."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from ternaus.config import load_config
from ternaus.data.instance_folders import contact_map, label_map, load_objects
from ternaus.data import layouts
from ternaus.data.layouts import MaskSpec, check_train, list_train, load_masks
from ternaus.data.source import DataSource
from ternaus.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "dsb2018-real"
INSTANCE = ["data.layout=instance_folders", "data.train_dir=stage1_train", "data.test_dir=stage1_test"]


def disc(shape, centre, radius) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def two_touching_discs(shape=(40, 60)) -> list[np.ndarray]:
    """Two discs of radius 10 whose centres lie 20 px apart on one row: they share the column between them."""
    left = disc(shape, (20, 20), 10)
    right = disc(shape, (40, 20), 10) & ~left
    return [left, right]


def write_instance_folders(root: Path, images: dict[str, list[np.ndarray]], split="stage1_train") -> Path:
    # Every split but the test's has masks.
    """``root/<split>/<id>/images/<id>.png`` (RGBA, as DSB ships them) and one 0/255 PNG per object."""
    for image_id, objects in images.items():
        folder = root / split / image_id
        (folder / "images").mkdir(parents=True)
        shape = objects[0].shape if objects else (32, 48)
        rgba = np.zeros((*shape, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[..., 1] = 200 * sum(o.astype(np.uint8) for o in objects) if objects else 0
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), rgba)
        if split != "stage1_test":
            (folder / "masks").mkdir()
            for k, mask in enumerate(objects):
                cv2.imwrite(str(folder / "masks" / f"object{k}.png"), mask.astype(np.uint8) * 255)
    return root


def source_of(root: Path, *overrides: str) -> DataSource:
    return DataSource.of(load_config(None, [f"data.root={root}", *INSTANCE, *overrides]))


# ---------------------------------------------------------------- the layout


def test_layout_reads_tiny_folders(tmp_path):
    discs = two_touching_discs()
    write_instance_folders(tmp_path, {"b": discs, "a": [discs[0]]})
    write_instance_folders(tmp_path, {"t": discs}, split="stage1_test")
    source = source_of(tmp_path)
    table = list_train(source)
    assert list(table["id"]) == ["a", "b"]  # ids are the folder names, sorted
    assert [len(objects) for objects in table["objects"]] == [1, 2]
    assert [row["id"] for row in layouts.test_rows(source)] == ["t"]
    assert check_train(table, spec=MaskSpec(1, layout="instance_folders")) == []
    row = table.to_dict("records")[1]
    union = load_masks(row, (40, 60), MaskSpec(1, layout="instance_folders"))
    assert union.shape == (1, 40, 60) and union[0].sum() == (discs[0] | discs[1]).sum()
    objects = load_objects(row, (40, 60))
    assert len(objects) == 2 and all((o == d).all() for o, d in zip(objects, discs))


def test_two_planes_add_the_contact_line(tmp_path):
    discs = two_touching_discs()
    write_instance_folders(tmp_path, {"b": discs})
    row = list_train(source_of(tmp_path)).to_dict("records")[0]
    masks = load_masks(row, (40, 60), MaskSpec(2, layout="instance_folders"))
    assert masks.shape == (2, 40, 60)
    contact = masks[1].astype(bool)
    # The contact band lies between the discs (around column 30, where they touch), nowhere near their far sides.
    assert contact[20, 30] and contact.any(0)[29:33].all()
    assert not contact[:, :27].any() and not contact[:, 35:].any()
    # One object alone has no contact.
    assert not contact_map(label_map([discs[0]], (40, 60))).any()


def test_contacts_of_objects_apart(tmp_path):
    """Objects more than 2 * CONTACT_RADIUS pixels apart do not touch; at 4 px apart (a gap of 3: reached from both sides in its middle column) they do."""
    shape = (20, 40)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[5:15, 2:10] = True
    b[5:15, 13:20] = True  # columns 10-12 between a and b: 3 px apart, within reach of both
    c[5:15, 30:38] = True  # 10 px from b
    contact = contact_map(label_map([a, b, c], shape))
    assert contact[5:15, 11].all() and not contact[:, 21:].any()


def test_layout_refuses_a_folder_without_its_image(tmp_path):
    write_instance_folders(tmp_path, {"a": two_touching_discs()})
    (tmp_path / "stage1_train" / "b" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="b.png"):
        list_train(source_of(tmp_path))


def test_layout_refuses_files_where_folders_belong(tmp_path):
    write_instance_folders(tmp_path, {"a": two_touching_discs()})
    (tmp_path / "stage1_train" / "stray.png").write_bytes(b"x")
    with pytest.raises(DataError, match="one folder per image"):
        list_train(source_of(tmp_path))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/dsb2018-real is absent (the real DSB 2018 sample)")
def test_layout_reads_the_real_dsb_folders():
    source = source_of(REAL, "model.num_classes=2", "data.class_names=[nucleus,contact]")
    table = list_train(source)
    assert len(table) == 200 and len(layouts.test_rows(source)) == 50
    row = table.to_dict("records")[0]
    from ternaus.data.files import image_size, read_image
    shape = image_size(row["image"])
    image = read_image(row["image"])
    assert image.shape == (*shape, 3)  # RGBA read as RGB
    masks = load_masks(row, shape, MaskSpec(2, layout="instance_folders"))
    objects = load_objects(row, shape)
    assert len(objects) == len(row["objects"]) > 1
    assert masks[0].sum() == sum(int(o.sum()) for o in objects)  # objects do not overlap
    assert masks[1].any()
    assert check_train(table.iloc[:5], spec=MaskSpec(2, layout="instance_folders")) == []


# ---------------------------------------------------------------- the metric


def box(shape, top, left, height, width) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top: top + height, left: left + width] = True
    return mask


def test_dsb_ap_hand_computed():
    from ternaus.metrics import instance_ap
    from ternaus.registry import METRICS

    dsb_ap = METRICS["dsb_ap"].load()
    shape = (30, 30)
    a, b = box(shape, 0, 0, 10, 10), box(shape, 15, 15, 10, 10)
    assert dsb_ap([], []) == 1.0  # no object and no prediction
    assert dsb_ap([], [a]) == 0.0  # an object, no prediction: FN 1 at every threshold
    assert dsb_ap([a], []) == 0.0  # a prediction, no object: FP 1
    assert dsb_ap([a, b], [a, b]) == 1.0
    # One hit, one false object and one missed object at every threshold: 1 / (1 + 1 + 1).
    assert dsb_ap([a, box(shape, 0, 20, 5, 5)], [a, b]) == pytest.approx(1 / 3)
    # IoU 80 / 100 = 0.8: a hit at 0.50 ... 0.75 (6 thresholds), at 0.80 (not above) and up a miss (FP 1, FN 1).
    assert dsb_ap([box(shape, 0, 0, 8, 10)], [a]) == pytest.approx(0.6)
    # The family: F-beta with beta 2 is Airbus's F2 (TP 1, FN 1: 5 / 9), beta 1 is the F1 (2 / 3).
    assert instance_ap([a], [a, b], "fbeta", 2.0) == pytest.approx(5 / 9)
    assert instance_ap([a], [a, b], "fbeta", 1.0) == pytest.approx(2 / 3)
    assert dsb_ap([a], [a, b]) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="formula"):
        instance_ap([a], [a], "recall")


def test_dsb_ap_a_duplicate_is_a_false_positive():
    """Two predictions of one object: one matches, the other is a false positive (1 / 2), not a second hit."""
    from ternaus.registry import METRICS

    a = box((20, 20), 0, 0, 10, 10)
    assert METRICS["dsb_ap"].load()([a, a], [a]) == pytest.approx(0.5)


def test_dsb_ap_is_the_mean_over_images():
    from ternaus.evaluation import Evaluator

    shape = (30, 30)
    a, b = box(shape, 0, 0, 10, 10), box(shape, 15, 15, 10, 10)
    evaluator = Evaluator("dsb_ap")
    evaluator.add_objects("perfect", [a, b], [a, b], shape)
    evaluator.add_objects("half", [a], [a, b], shape)
    assert evaluator.means()["dsb_ap"] == pytest.approx((1 + 0.5) / 2)


# ---------------------------------------------------------------- objects from the maps


def test_the_watershed_splits_two_touching_discs():
    from ternaus.metrics import object_ious
    from ternaus.separation import masks_of_labels, object_labels

    discs = two_touching_discs()
    union = discs[0] | discs[1]
    contact = contact_map(label_map(discs, union.shape)).astype(bool)
    masks = np.stack([union, contact])
    assert object_labels(masks, "components").max() == 1  # one blob: what rows=instance wrote before
    found = masks_of_labels(object_labels(masks, "watershed"))
    assert len(found) == 2
    ious = object_ious(found, discs)
    assert ious.max(1).min() > 0.9 and sorted(ious.argmax(1)) == [0, 1]
    assert sum(int(o.sum()) for o in found) == union.sum()  # every mask pixel goes to one object


def test_the_watershed_keeps_an_object_without_seed_and_drops_small_ones():
    from ternaus.separation import object_labels

    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True  # a square with a seed
    mask[15:17, 15:17] = True  # 4 px, all contact: no seed, yet an object
    contact = np.zeros_like(mask)
    contact[15:17, 15:17] = True
    labels = object_labels(np.stack([mask, contact]), "watershed")
    assert labels.max() == 2 and (labels > 0).sum() == mask.sum()
    assert object_labels(np.stack([mask, contact]), "watershed", min_area=5).max() == 1


def test_label_ious_equal_the_masks_products():
    from ternaus.metrics import object_ious
    from ternaus.separation import label_ious, labels_of_masks

    shape = (12, 12)
    predicted = [box(shape, 0, 0, 4, 4), box(shape, 5, 5, 5, 5)]
    truth = [box(shape, 0, 0, 4, 6), box(shape, 6, 6, 5, 5), box(shape, 11, 0, 1, 1)]
    # |a & A| = 16, |a | A| = 24; |b & B| = 16, |b | B| = 34.
    expected = np.array([[16 / 24, 0, 0], [0, 16 / 34, 0]])
    assert label_ious(labels_of_masks(predicted, shape), labels_of_masks(truth, shape)) == pytest.approx(expected)
    assert object_ious(predicted, truth) == pytest.approx(expected)
    overlapping = [box(shape, 0, 0, 4, 4), box(shape, 0, 0, 2, 2)]
    assert labels_of_masks(overlapping, shape) is None
    assert object_ious(overlapping, truth[:1]) == pytest.approx(np.array([[16 / 24], [4 / 24]]))


def test_rows_instance_writes_one_row_per_separated_object():
    from ternaus.rle import decode_rle
    from ternaus.submission import SubmissionFormat, image_rows

    discs = two_touching_discs()
    union = discs[0] | discs[1]
    masks = np.stack([union, contact_map(label_map(discs, union.shape)).astype(bool)])
    fmt = SubmissionFormat(("ImageId", "EncodedPixels"), ("{stem}", "{rle}"), "instance", ("nucleus", "contact"),
                           objects="watershed")
    rows = image_rows("a.png", masks, fmt)
    assert [row[0] for row in rows] == ["a", "a"]
    decoded = [decode_rle(row[1], union.shape, fmt.rle).astype(bool) for row in rows]
    assert not (decoded[0] & decoded[1]).any() and (decoded[0] | decoded[1]).sum() == union.sum()
    plain = image_rows("a.png", masks, SubmissionFormat(("ImageId", "EncodedPixels"), ("{stem}", "{rle}"),
                                                        "instance", ("nucleus",)))
    assert len(plain) == 1
    assert image_rows("a.png", np.zeros_like(masks), fmt) == [("a", "")]


def test_the_search_scores_the_watershed_beside_components():
    from ternaus.analysis import SeparationGrid, choose_separation, separation_scores_of_image

    discs = two_touching_discs()
    union = discs[0] | discs[1]
    levels = np.stack([union, contact_map(label_map(discs, union.shape))]).astype(np.uint8) * 255
    grid = SeparationGrid.around((0.5, 0.5))
    row = separation_scores_of_image(levels, union, discs, grid, "dsb_ap")
    chosen, table = choose_separation(row[None], grid, "dsb_ap", (0.5, 0.5))
    assert len(table) == len(grid.settings()) == len(row)
    # The watershed's objects cover each disc but the contact band's share: IoU above 0.9 each.
    assert chosen["score"] >= 0.8 and chosen["default_score"] >= 0.8
    # One merged blob: its IoU with the left disc (which kept the shared column) is just above 0.5, a hit at 0.50
    # alone, beside one missed disc: 1 / 2 at one threshold of ten.
    assert chosen["components_score"] == pytest.approx(0.05)
    assert chosen["threshold"][1] is not None and chosen["objects"] == "watershed"


# ---------------------------------------------------------------- mixed sizes


def test_training_crops_make_one_size_from_mixed_sizes(tmp_path):
    """train.crop: images of 40 x 60 and 96 x 80 both come out 64 x 64 (the small one reflect-padded), image and
    masks cut at one place, drawn from the item's seed alone."""
    import torch

    from ternaus.data.dataset import SegmentationDataset, pad_collate
    from ternaus.data.geometry import Geometry

    big = [disc((96, 80), (40, 50), 12)]
    write_instance_folders(tmp_path, {"small": two_touching_discs(), "big": big})
    rows = list_train(source_of(tmp_path)).to_dict("records")
    dataset = SegmentationDataset(rows, Geometry(None, 8), True, masks=MaskSpec(2, layout="instance_folders"),
                                  crop=(64, 64))
    items = [dataset[(0, 7)], dataset[(1, 7)]]
    assert [tuple(i["image"].shape) for i in items] == [(3, 64, 64)] * 2
    assert [tuple(i["mask"].shape) for i in items] == [(2, 64, 64)] * 2
    assert all(i["size"].tolist() == [64, 64] for i in items)
    again = dataset[(1, 7)]
    assert torch.equal(again["image"], items[1]["image"]) and torch.equal(again["mask"], items[1]["mask"])
    # The mask moved with the image: the green channel is 200 exactly on the objects (write_instance_folders).
    for item in items:
        assert torch.equal(item["image"][1] == 200, item["mask"][0].bool())
    batch = pad_collate(items)
    assert tuple(batch["image"].shape) == (2, 3, 64, 64)


# ---------------------------------------------------------------- the stages on a tiny DSB-like set


def nuclei(shape, rng, count) -> list[np.ndarray]:
    """``count`` discs of radius 5-8 at random places, some touching; each keeps the pixels no earlier disc
    took (DSB's objects do not overlap)."""
    taken, objects = np.zeros(shape, bool), []
    for _ in range(count):
        radius = int(rng.integers(5, 9))
        centre = (int(rng.integers(radius, shape[1] - radius)), int(rng.integers(radius, shape[0] - radius)))
        mask = disc(shape, centre, radius) & ~taken
        if mask.sum() > 20:
            objects.append(mask)
            taken |= mask
    return objects


@pytest.fixture(scope="module")
def dsb_run(tmp_path_factory):
    """prepare_folds, train (1 epoch of the tiny network on 32 x 32 crops), predict, make_submission on six
    training images of three sizes and two test images, from configs/dsb2018.yaml."""
    import make_submission
    import predict
    import prepare_folds
    import train
    from conftest import TINY_NET

    tmp = tmp_path_factory.mktemp("dsb")
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 64), (40, 72)]
    write_instance_folders(tmp / "data", {f"tr{k}": nuclei(sizes[k % 3], rng, 5) for k in range(6)})
    test = {f"te{k}": nuclei(sizes[k], rng, 4) for k in range(2)}
    write_instance_folders(tmp / "data", test, split="stage1_test")
    write_instance_folders(tmp, test, split="truth")  # the test set with its masks, for ternaus.evaluate
    (tmp / "data" / "stage1_sample_submission.csv").write_text("ImageId,EncodedPixels\nte1,1 1\nte0,1 1\n")
    args = ["--config", str(ROOT / "configs" / "dsb2018.yaml"), f"data.root={tmp / 'data'}",
            f"output_dir={tmp / 'run'}", *TINY_NET, "model.encoder=null", "folds.n_folds=2", "train.folds=[0]", "train.epochs=1",
            "train.batch_size=4", "train.crop=[32,32]", "data.num_workers=0", "predict.batch_size=2",
            "submission.processes=1", "train.tensorboard=false"]
    for stage in (prepare_folds, train, predict, make_submission):
        assert stage.main(args) == 0, f"{stage.__name__} failed on the tiny DSB set"
    return tmp, args


@pytest.mark.slow
def test_the_stages_run_on_instance_folders_from_the_config(dsb_run):
    import json

    import pandas as pd

    from ternaus.evaluate import score_submission
    from ternaus.rle import RleFormat, decode_rle

    tmp, args = dsb_run
    run = tmp / "run"
    searched = json.loads((run / "postprocess.json").read_text())
    assert searched["objects"] == "watershed" and len(searched["threshold"]) == 2
    assert 0.0 <= searched["components_score"] <= 1.0
    oof = pd.read_csv(run / "oof.csv")
    assert {"dsb_ap", "dsb_ap_pp", "dsb_ap_components"} <= set(oof.columns) and len(oof) == 3
    submission = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"]
    assert list(dict.fromkeys(submission["ImageId"])) == ["te1", "te0"]  # the sample's order, ids without .png
    for image_id, rows in submission.groupby("ImageId"):
        shape = (48, 64) if image_id == "te0" else (64, 64)
        objects = [decode_rle(rle, shape, RleFormat(order="F")) for rle in rows["EncodedPixels"] if rle]
        assert not objects or np.sum(objects, axis=0).max() == 1  # one object per pixel
    cfg = load_config(args[1], args[2:])
    # The truth as per-object mask folders (each mask file one object) and as the competition's CSV.
    by_folders = score_submission(cfg, run / "submission.csv", tmp / "truth", None, ("dsb_ap", "dice"))
    assert set(by_folders) == {"dsb_ap", "dice"} and 0.0 <= by_folders["dsb_ap"] <= 1.0
    perfect = by_folders_of_truth(tmp, cfg)
    assert perfect == pytest.approx(1.0)


def by_folders_of_truth(tmp: Path, cfg) -> float:
    """The truth folder's objects written as a submission and scored against the folder: 1."""
    import pandas as pd

    from ternaus.evaluate import score_submission, truth_rows
    from ternaus.submission import submission_format

    fmt = submission_format(cfg)
    rows = truth_rows(DataSource.of(cfg), fmt, tmp / "truth", tmp / "truth")
    assert len(rows) == 8  # four objects in each of the two images
    path = tmp / "perfect.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return score_submission(cfg, path, tmp / "truth", None, ("dsb_ap",))["dsb_ap"]


def test_objects_are_coloured_one_by_one():
    from ternaus.report import objects_coloured

    labels = np.zeros((4, 6), np.int32)
    labels[:, 1:3], labels[:, 3:5] = 1, 2  # two touching objects
    out = objects_coloured(np.full((4, 6, 3), 100, np.uint8), labels)
    assert (out[0, 1] != out[0, 3]).any()  # touching objects differ
    assert (out[:, 1:3] == out[0, 1]).all() and (out[:, 3:5] == out[0, 3]).all()  # one colour per object
    assert (out[:, 0] == 35).all()  # the background dimmed


@pytest.mark.slow
def test_the_report_colours_the_predicted_objects(dsb_run):
    import report

    tmp, args = dsb_run
    assert report.main(args) == 0
    page = (tmp / "run" / "report" / "index.html").read_text()
    assert "the predicted objects, one colour each" in page and "objects</figcaption>" in page
    assert "by mask threshold" in page  # the watershed's search chart
