"""The three example configs besides Carvana, end to end on their synthetic fixtures: prepare_folds -> train ->
predict -> make_submission, each stage through its script's main(), on tiny data (8 training and 2 test
images of about 32 px, one epoch of fold 0 of 2), then the written files checked against the competition's
format and the predictions."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import make_submission
import predict
import prepare_folds
import train
from ternaus.run_files import RunFiles
from ternaus.analysis import read_postprocessing, resolve_postprocessing
from ternaus.config import load_config
from ternaus.evaluate import score_submission
from ternaus.fixtures.competitions import GENERATORS, TRUTH
from ternaus.rle import RleFormat, decode_rle
from ternaus.submission import masks_to_encode

ROOT = Path(__file__).resolve().parents[1]
COLUMN_MAJOR = RleFormat(order="F")
# TGS at 29 x 29 (odd, padded to 32 and cropped back), Airbus at 32 x 32, Severstal at 32 x 96 (H x W).
SIZES = {"tgs": {"size": 29}, "airbus": {"size": 32}, "severstal": {"size": (32, 96)}}
FIGURES: dict[str, dict] = {}


class Run:
    def __init__(self, name: str, root: Path, out: Path, args: list[str]):
        self.name, self.root, self.out, self.args = name, root, out, args
        self.cfg = load_config(args[1], args[2:])

    def submission(self) -> pd.DataFrame:
        return pd.read_csv(self.out / self.cfg.submission.filename, dtype=str, keep_default_na=False)

    def submitted(self, probs: np.ndarray) -> np.ndarray:
        """The uint8 0/1 mask make_submission.py encodes from one class's probabilities: at the threshold and
        minimum area it resolved (for TGS and Airbus, those predict.py searched on the out-of-fold images)."""
        threshold, min_area, _ = resolve_postprocessing(self.cfg.postprocess, RunFiles.of(self.cfg))
        return masks_to_encode(probs[None], [threshold], None, min_area)[0].astype(np.uint8)

    def prediction(self, stem: str) -> np.ndarray:
        stacked = cv2.imread(str(self.out / "predictions" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        return stacked.reshape(self.cfg.model.num_classes, -1, stacked.shape[1])


def run_competition(name: str, tmp: Path) -> Run:
    root = GENERATORS[name](tmp / "data", images=8, test_images=2, seed=0, **SIZES[name])
    args = ["--config", str(ROOT / "configs" / f"{name}.yaml"), f"data.root={root}", f"output_dir={tmp / 'run'}",
            "folds.n_folds=2", "train.folds=[0]", "train.epochs=1", "train.batch_size=4", "train.lr=1e-3",
            "data.num_workers=0", "model.init=lecun", "predict.batch_size=8", "submission.processes=1"]
    started = time.perf_counter()
    for stage in (prepare_folds, train, predict, make_submission):
        assert stage.main(args) == 0, f"{stage.__name__} failed on the {name} fixture"
    run = Run(name, root, tmp / "run", args)
    metric = run.cfg.postprocess.metric
    oof = pd.read_csv(run.out / "oof.csv")
    test = score_submission(run.cfg, run.out / run.cfg.submission.filename, root / TRUTH[name], None,
                            tuple(dict.fromkeys((metric, "dice"))))
    FIGURES[name] = {"seconds": round(time.perf_counter() - started, 1),
                     **{f"oof_{k}": round(float(oof[k].mean()), 4) for k in dict.fromkeys(("dice", metric))},
                     **{f"test_{k}": round(v, 4) for k, v in test.items()}}
    print(f"{name}: {FIGURES[name]}")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            done[name] = run_competition(name, tmp_path_factory.mktemp(name))
        return done[name]

    return get


def test_tgs_greyscale_101_like_images_pad_crop_and_submit_column_major(runs):
    run = runs("tgs")
    assert read_postprocessing(run.out) is not None  # one class: predict.py searched the threshold and min_area
    folds = pd.read_csv(run.out / "folds.csv", dtype={"id": str, "group": str})
    assert (folds["group"] == folds["id"]).all() and "mask_area" in folds  # one image per group, stratified
    sample = pd.read_csv(run.root / "sample_submission.csv", dtype=str)
    submission = run.submission()
    assert list(submission.columns) == ["id", "rle_mask"]
    assert submission["id"].tolist() == sample["id"].tolist()  # the sample's ids (no .png) in its order
    for stem, rle in zip(submission["id"], submission["rle_mask"]):
        probs = run.prediction(stem)[0]
        assert probs.shape == (29, 29)  # padded to 32 x 32 for the network, cropped back
        assert np.array_equal(decode_rle(rle, probs.shape, COLUMN_MAJOR), run.submitted(probs))
    assert 0.0 <= FIGURES["tgs"]["test_dice"] <= 1.0 and 0.0 <= FIGURES["tgs"]["test_iou_ap"] <= 1.0


def test_airbus_instances_are_unioned_for_training_and_split_into_rows_for_the_submission(runs):
    run = runs("airbus")
    submission = run.submission()
    assert list(submission.columns) == ["ImageId", "EncodedPixels"]
    sample = pd.read_csv(run.root / "sample_submission_v2.csv", dtype=str)
    assert list(dict.fromkeys(submission["ImageId"])) == sample["ImageId"].tolist()
    for name, rows in submission.groupby("ImageId", sort=False):
        probs = run.prediction(Path(name).stem)[0]
        ships = [decode_rle(rle, probs.shape, COLUMN_MAJOR) for rle in rows["EncodedPixels"]]
        if rows["EncodedPixels"].tolist() == [""]:
            assert not run.submitted(probs).any()
            continue
        assert all(ship.any() for ship in ships)
        assert np.array_equal(np.sum(ships, axis=0), run.submitted(probs))  # disjoint, the whole mask
        for ship in ships:
            assert cv2.connectedComponents(ship, connectivity=8)[0] == 2  # one component per row


def test_severstal_four_classes_one_row_per_image_and_class(runs):
    run = runs("severstal")
    log = pd.read_csv(run.out / "fold_0" / "log.csv")
    oof = pd.read_csv(run.out / "oof.csv")
    assert {f"val_dice_{c}" for c in "1234"} <= set(log.columns)
    assert {f"dice_{c}" for c in "1234"} <= set(oof.columns)
    assert np.allclose(oof[[f"dice_{c}" for c in "1234"]].mean(axis=1), oof["dice"])
    submission = run.submission()
    sample = pd.read_csv(run.root / "sample_submission.csv", dtype=str)
    assert list(submission.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert submission[["ImageId", "ClassId"]].values.tolist() == sample[["ImageId", "ClassId"]].values.tolist()
    for name, rle, class_id in submission.itertuples(index=False):
        probs = run.prediction(Path(name).stem)
        assert probs.shape == (4, 32, 96)  # stored per class
        plane = probs[int(class_id) - 1]
        assert np.array_equal(decode_rle(rle, plane.shape, COLUMN_MAJOR), (plane >= 128).astype(np.uint8))


def test_severstal_as_exclusive_classes_with_softmax(runs, tmp_path):
    """The fixture's defects never overlap, so they can also be trained as exclusive classes: the network then
    has a background channel, and the stored predictions still hold one plane per class."""
    run = runs("severstal")
    args = [*run.args, f"output_dir={tmp_path}", "model.activation=softmax"]
    for stage in (prepare_folds, train, predict, make_submission):
        assert stage.main(args) == 0, f"{stage.__name__} failed with model.activation=softmax"
    import torch

    weights = torch.load(tmp_path / "fold_0" / "best.pt", weights_only=True)["model"]
    assert weights["final.weight"].shape[0] == 5  # background + 4 classes
    stacked = cv2.imread(str(next((tmp_path / "predictions").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    planes = stacked.reshape(4, 32, 96).astype(int)
    assert (planes.sum(0) <= 255 + 4).all()  # softmax probabilities of exclusive classes sum to at most 1
    oof = pd.read_csv(tmp_path / "oof.csv")
    FIGURES["severstal softmax"] = {"oof_dice": round(float(oof["dice"].mean()), 4)}
    print(f"severstal softmax: {FIGURES['severstal softmax']}")
    submission = pd.read_csv(tmp_path / run.cfg.submission.filename, dtype=str, keep_default_na=False)
    assert len(submission) == 4 * 2
