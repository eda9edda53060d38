"""ternaus.evaluation: the one evaluator, and one set of predictions scored by its four drivers (validation,
predict.py's out-of-fold pass, the CV of a one-member ensemble, ternaus.evaluate on the submission) with the
same numbers."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ternaus.run_files import RunFiles
from ternaus.data.source import DataSource
from ternaus.config import load_config
from ternaus.evaluation import Evaluator

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the evaluator by hand


def test_the_forms_of_a_prediction_agree_and_the_sums_give_the_means():
    """Two classes, 1 x 4 images. Class "a" at 0.5, class "b" at 0.3 (level 77 = ceil(76.5)).
    Image x: a predicts pixels 0-1 of truth 0-2 (Dice 2*2/5 = 0.8, IoU 2/3); b predicts pixel 3 of an empty truth
    (Dice 0, IoU 0). Image y: a empty of an empty truth (1, 1); b pixels 0-3 of truth 0-3 (1, 1)."""
    levels = torch.tensor([[[[200, 128, 127, 0]], [[0, 0, 76, 77]]],
                           [[[0, 0, 0, 127]], [[77, 255, 100, 90]]]], dtype=torch.uint8)
    target = torch.tensor([[[[1, 1, 1, 0]], [[0, 0, 0, 0]]],
                           [[[0, 0, 0, 0]], [[1, 1, 1, 1]]]], dtype=torch.bool)
    evaluators = [Evaluator("jaccard", ["a", "b"], [0.5, 0.3]) for _ in range(3)]
    for k in range(2):
        evaluators[0].add(f"{k}", levels[k], target[k], fold=k)
        evaluators[1].add(f"{k}", levels[k].numpy().astype(np.float32) / 255, target[k].numpy(), fold=k)
        evaluators[2].add(f"{k}", levels[k] >= torch.tensor([128, 77]).view(2, 1, 1), target[k], fold=k)
    tables = [e.table() for e in evaluators]
    assert all(table.equals(tables[0]) for table in tables)
    assert list(tables[0].columns) == ["id", "fold", "dice", "jaccard", "dice_a", "dice_b"]
    assert tables[0]["dice"].tolist() == pytest.approx([0.4, 1.0])
    assert tables[0]["jaccard"].tolist() == pytest.approx([1 / 3, 1.0])
    assert evaluators[0].sums().tolist() == pytest.approx([2, 1.4, 4 / 3, 4 / 3, 1.8, 1.0])
    means = evaluators[0].means()
    assert means == pytest.approx({"dice": 0.7, "jaccard": 2 / 3, "dice_a": 0.9, "dice_b": 0.5})
    # Under DDP validation adds up the sums of every rank: two ranks' sums give the mean over both.
    assert evaluators[0].means(2 * evaluators[0].sums()) == pytest.approx(means)


def test_objects_and_masks_score_the_same_and_the_search_needs_levels():
    """f2_instances of two true 1 x 1 objects (columns 0 and 2) predicted as the first one only: TP 1, FN 1 at
    every IoU threshold, F2 = 5 / 9; the union of the objects gives Dice 2 * 1 / 3."""
    left, right = np.zeros((1, 3), bool), np.zeros((1, 3), bool)
    left[0, 0], right[0, 2] = True, True
    by_objects, by_masks = Evaluator("f2_instances"), Evaluator("f2_instances")
    by_objects.add_objects("x", [left], [left, right], (1, 3))
    by_masks.add("x", left[None], (left | right)[None])
    assert by_objects.table().equals(by_masks.table())
    assert by_objects.means() == pytest.approx({"dice": 2 / 3, "jaccard": 0.5, "f2_instances": 5 / 9})
    with pytest.raises(ValueError, match="uint8 levels"):
        Evaluator("dice", search=(0.5,)).add("x", left[None], left[None])
    with pytest.raises(ValueError, match="one class"):
        Evaluator("dice", ["a", "b"], search=(0.5,))


# ---------------------------------------------------------------- one set of predictions, four drivers


class LevelsOfTheImage(torch.nn.Module):
    """Logit = the image's grey level - 127.5 (undoing the ImageNet normalisation): the probability is >= 0.5
    exactly where the level is >= 128 (levels are integers; the float error is far below 0.5), and the uint8
    map of the out-of-fold pass, round(255 sigmoid(level - 127.5)), is >= 128 at exactly the same pixels."""

    def forward(self, images):
        from ternaus.data.dataset import IMAGENET_MEAN, IMAGENET_STD

        level = (images[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        return level - 127.5


def write_images_and_masks(root: Path, count: int = 8, shape: tuple[int, int] = (29, 27)) -> list[str]:
    """Greyscale images that are noisy, shifted copies of their masks (some masks empty, some with two objects),
    so that thresholding them at 128 gives every kind of error: stray pixels, misses, split objects."""
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"p{k}" for k in range(count)]
    for k, image_id in enumerate(ids):
        mask = np.zeros(shape, np.uint8)
        for _ in range(k % 3):  # 0, 1 or 2 rectangles
            top, left = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
            mask[top: top + rng.integers(3, 9), left: left + rng.integers(3, 9)] = 1
        shifted = np.roll(mask, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        image = np.clip(40 + 170.0 * shifted + rng.normal(0, 30, shape), 0, 255).astype(np.uint8)
        if k == 3:  # an empty mask with a stray blob predicted
            image[2:4, 2:4] = 200
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{image_id}.png"), mask * 255)
    return ids


def scored_four_ways(tmp_path: Path, metric: str, *extra: str) -> dict[str, dict[str, float]]:
    """{driver: {"dice": mean, metric: mean}} of one set of predictions at threshold 0.5, min_area 0."""
    from ternaus.data.geometry import geometry_of
    from ternaus.data.layouts import train_items
    from ternaus.distributed import World
    from ternaus.ensemble import ensemble
    from ternaus.evaluate import score_submission
    from ternaus.inference import PredictionRun, _score_oof
    from ternaus.losses import SegmentationLoss
    from ternaus.run_files import read_folds
    from ternaus.runtime import Runtime
    from ternaus.submission import make_submission
    from ternaus.training import TrainingRun, fold_data, validate

    data = tmp_path / "data"
    ids = write_images_and_masks(data)
    settings = [f"data.root={data}", "data.train_dir=images", "data.masks_dir=masks", "data.test_dir=images",
                "data.num_workers=0", "folds.n_folds=2", "postprocess.threshold=0.5",
                "train.val_batch_size=3", "predict.batch_size=3", "predict.writer_threads=2",
                f"postprocess.metric={metric}", *extra]
    run = tmp_path / "run"
    cfg = load_config(ROOT / "configs/tgs.yaml", [*settings, f"output_dir={run}"])
    run.mkdir()
    pd.DataFrame({"id": ids, "fold": [0, 0, 0, 0, 0, 1, 1, 1]}).to_csv(run / "folds.csv", index=False)
    runtime, model = Runtime(torch.device("cpu"), None, False), LevelsOfTheImage()
    found = {}

    # 1. validation, of each fold in turn; the two means weighted by the folds' image counts
    items = train_items(DataSource.of(cfg), read_folds(RunFiles.of(cfg).folds_csv, cfg.folds.n_folds), RunFiles.of(cfg).folds_csv)
    means = []
    for fold in (0, 1):
        loader = fold_data(TrainingRun.from_config(cfg), items, fold, runtime, World()).val_loader
        means.append(validate(model, loader, runtime, SegmentationLoss(), geometry_of(cfg),
                              0.5, metric=metric))
    found["validation"] = {name: (5 * means[0][f"val_{name}"] + 3 * means[1][f"val_{name}"]) / 8
                           for name in ("dice", metric)}

    # 2. predict.py's out-of-fold pass: its records, and oof.csv (from the level histograms)
    returned = _score_oof(PredictionRun.from_config(cfg), {0: model, 1: model}, runtime, {"checkpoints": {"0": "levels of the image"}})
    found["oof records"] = {"dice": returned["oof_dice"], metric: returned[f"oof_{metric}"]}
    oof = pd.read_csv(run / "oof.csv")
    assert oof["id"].tolist() == ids and len(oof) == 8
    found["oof.csv"] = {"dice": oof["dice"].mean(), metric: oof[metric].mean()}

    # 3. the run as the one member of an ensemble: its test predictions are its out-of-fold maps
    (run / "configs").mkdir(exist_ok=True)
    (run / "configs" / "predict.yaml").write_text(yaml.safe_dump({"predict": {"out_dir": "predictions"},
                                                                   "model": {"num_classes": 1}}))
    (run / "predictions").mkdir()
    for image_id in ids:
        (run / "predictions" / f"{image_id}.png").write_bytes((run / "oof_predictions" / f"{image_id}.png").read_bytes())
    record = {"fingerprint": {"checkpoints": {"0": "levels of the image"}}, "ids": ids, "sequence": 1}
    (run / "predictions" / ".predict.json").write_text(json.dumps(record))
    members = yaml.safe_dump([{"run": str(run), "weight": 1, "name": "run"}], default_flow_style=True).strip()
    ens_cfg = load_config(ROOT / "configs/tgs.yaml", [*settings, f"output_dir={tmp_path / 'ens'}",
                                                      f"ensemble.members={members}", "ensemble.oof=true"])
    cv = ensemble(ens_cfg)["cv"].set_index("run")
    assert cv.loc["run", "cv"] == cv.loc["ensemble", "cv"]  # one member: the ensemble is that member
    ens_oof = pd.read_csv(tmp_path / "ens" / "oof.csv")
    found["ensemble"] = {"dice": ens_oof["dice"].mean(), metric: cv.loc["ensemble", "cv"]}

    # 4. the ensemble's submission at 0.5 without a minimum area, scored by ternaus.evaluate against the masks
    submission = make_submission(ens_cfg, 0.5, 0)
    found["evaluate"] = score_submission(ens_cfg, submission, data / "masks", data / "images", (metric, "dice"))
    return found


@pytest.mark.parametrize("metric, extra", [("iou_ap", ()), ("f2_instances", ("submission.rows=instance",))])
def test_one_set_of_predictions_scores_the_same_through_all_four_drivers(tmp_path, metric, extra):
    found = scored_four_ways(tmp_path, metric, *extra)
    reference = found["validation"]
    assert 0.05 < reference["dice"] < 0.95 and 0.05 < reference[metric] < 0.95  # neither trivial nor perfect
    for driver, scores in found.items():
        assert scores["dice"] == pytest.approx(reference["dice"], abs=1e-9), driver
        assert scores[metric] == pytest.approx(reference[metric], abs=1e-9), driver
