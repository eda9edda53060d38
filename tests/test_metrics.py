"""The competitions' metrics, the Lovasz hinge, the search under each metric, validation on the original masks,
and ``ternaus.evaluate`` on the fixtures. Every expected number is worked out by hand in the comments."""

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_analysis import histograms_of  # per-image level histograms of hand-made maps

from ternaus.run_files import RunFiles
from ternaus.data.source import DataSource
from ternaus.analysis import (
    ThresholdScores,
    object_scores_of_image,
    scores_from_histograms,
    search_postprocessing,
    search_thresholds,
    write_oof_analysis,
)
from ternaus.config import load_config
from ternaus.evaluate import main as evaluate_main
from ternaus.evaluate import score_submission
from ternaus.fixtures.competitions import COLUMN_MAJOR, TRUTH, generate_airbus, generate_tgs
from ternaus.losses import SegmentationLoss, lovasz_gradient, lovasz_hinge, lovasz_hinge_loss
from ternaus.metrics import (
    IOU_THRESHOLDS,
    dice_from_counts,
    f2_instances,
    image_score,
    iou_ap_from_counts,
    jaccard_from_counts,
    matched_pairs,
    object_ious,
)
from ternaus.rle import decode_rle, encode_rle

ROOT = Path(__file__).resolve().parents[1]


def box(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


# ---------------------------------------------------------------- the metrics


def test_dice_and_iou_from_counts_with_the_empty_cases():
    # (overlap, predicted, target): empty/empty, empty truth with 3 pixels, 5 true pixels predicted empty, 2 of 3.
    overlap, predicted, target = [0, 0, 0, 2], [0, 3, 0, 3], [0, 0, 5, 4]
    assert dice_from_counts(overlap, predicted, target).tolist() == pytest.approx([1, 0, 0, 4 / 7])
    assert jaccard_from_counts(overlap, predicted, target).tolist() == pytest.approx([1, 0, 0, 2 / 5])


def test_iou_ap_hand_computed_with_the_empty_cases_and_the_strict_threshold():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    # empty/empty 1; empty truth with one pixel 0; a truth predicted empty 0.
    assert iou_ap_from_counts([0, 0, 0], [0, 1, 0], [0, 0, 7]).tolist() == [1.0, 0.0, 0.0]
    # IoU exactly 11/20 = 0.55 is above 0.50 only (not above 0.55): 1 hit of 10. IoU 1/2 exactly: none.
    assert iou_ap_from_counts(11, 20, 11) == pytest.approx(0.1)
    assert iou_ap_from_counts(2, 4, 2) == 0.0
    # IoU 3/4 = 0.75: above 0.50, 0.55, 0.60, 0.65, 0.70 -> 0.5. IoU 19/20 = 0.95 exactly: 9 of 10.
    assert iou_ap_from_counts(3, 4, 3) == pytest.approx(0.5)
    assert iou_ap_from_counts(19, 19, 20) == pytest.approx(0.9)
    assert iou_ap_from_counts(20, 20, 20) == 1.0
    # The same through masks: one object each, IoU 3/4.
    truth, pred = box((4, 4), (0, 1), (0, 4)), box((4, 4), (0, 1), (0, 3))
    assert image_score("iou_ap", [pred], [truth], (4, 4)) == pytest.approx(0.5)


def test_f2_instances_hand_computed():
    shape = (8, 8)
    a, b = box(shape, (0, 2), (0, 2)), box(shape, (5, 8), (5, 8))  # two ships, 4 and 9 pixels
    assert f2_instances([], []) == 1.0  # no ship and none predicted: the rule this project chose
    assert f2_instances([a], []) == 0.0  # one FP: 0 / (0 + 0 + 1)
    assert f2_instances([], [a]) == 0.0  # one FN: 0 / (0 + 4 + 0)
    assert f2_instances([a, b], [a, b]) == 1.0
    # Two ships, one found: TP 1, FN 1 at every threshold -> 5 / (5 + 4).
    assert f2_instances([a], [a, b]) == pytest.approx(5 / 9)
    # One ship found and a false one: TP 1, FP 1 -> 5 / 6.
    assert f2_instances([a, box(shape, (0, 2), (5, 8))], [a]) == pytest.approx(5 / 6)
    # IoU exactly 3/4 (3 of the 4 pixels): a hit above 0.50 ... 0.70 (F2 1), at 0.75 ... 0.95 a miss
    # (TP 0, FN 1, FP 1: F2 0) -> 5/10.
    assert f2_instances([box(shape, (0, 2), (0, 2)) & ~box(shape, (1, 2), (1, 2))], [a]) == pytest.approx(0.5)


def test_one_to_one_matching():
    shape = (8, 8)
    a = box(shape, (0, 2), (0, 2))
    # The same ship predicted twice: one hit and one false positive, not two hits: 5 / (5 + 1).
    assert f2_instances([a, a.copy()], [a]) == pytest.approx(5 / 6)
    assert matched_pairs(object_ious([a, a], [a]), 0.5) == 1
    # Pairs are taken by decreasing IoU, each object once: (p0, t0) at 0.9 first, so (p1, t0) is left out.
    ious = np.array([[0.9, 0.0], [0.8, 0.6]])
    assert matched_pairs(ious, 0.5) == 2 and matched_pairs(ious, 0.7) == 1 and matched_pairs(ious, 0.9) == 0
    # IoUs of boxes: 4 pixels vs 2 of them: 2 / 4.
    assert object_ious([box(shape, (0, 1), (0, 2))], [a]).tolist() == [[0.5]]


def test_pixel_metrics_score_the_union_of_objects():
    shape = (8, 8)
    a, b = box(shape, (0, 2), (0, 2)), box(shape, (5, 8), (5, 8))
    # Dice of {a} against {a, b}: 2 * 4 / (4 + 13).
    assert image_score("dice", [a], [a, b], shape) == pytest.approx(8 / 17)
    assert image_score("dice", [], [], shape) == 1.0


# ---------------------------------------------------------------- the Lovasz hinge


# One image of 4 pixels. logits 2, -1, 0.5, -3; targets 1, 1, 0, 0; signs +1, +1, -1, -1.
# Errors 1 - logit * sign: -1, 2, 1.5, -2. Sorted down: 2 (pixel 1, y 1), 1.5 (pixel 2, y 0), -1 (pixel 0, y 1),
# -2 (pixel 3, y 0). With g = 2 true pixels: intersections 1, 1, 0, 0; unions 2, 3, 3, 4; Jaccard losses
# 1/2, 2/3, 1, 1; their differences, the Lovasz gradient: 1/2, 1/6, 1/3, 0.
LOGITS = torch.tensor([2.0, -1.0, 0.5, -3.0]).view(1, 1, 1, 4)
TARGETS = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)


def test_lovasz_gradient_hand_computed():
    assert lovasz_gradient(torch.tensor([[1.0, 0.0, 1.0, 0.0]])).tolist()[0] == pytest.approx([1 / 2, 1 / 6, 1 / 3, 0])
    # An empty mask: every Jaccard loss is 1, the gradient all on the largest error.
    assert lovasz_gradient(torch.zeros(1, 3)).tolist()[0] == [1.0, 0.0, 0.0]


def test_lovasz_hinge_hand_computed():
    # max(e, 0) of the sorted errors: 2, 1.5, 0, 0 -> 2/2 + 1.5/6 = 1.25.
    assert lovasz_hinge(LOGITS, TARGETS).item() == pytest.approx(1.25)
    # elu(e) + 1: 3, 2.5, e^-1, e^-2 -> 3/2 + 2.5/6 + e^-1/3 + 0.
    assert lovasz_hinge(LOGITS, TARGETS, elu=True).item() == pytest.approx(1.5 + 2.5 / 6 + math.exp(-1) / 3)
    # Per image: an empty mask with logits 0.5, -2, 1, -1 has errors 1.5, -1, 2, 0 and scores max = 2; the batch
    # is the mean of 1.25 and 2.
    empty = torch.tensor([0.5, -2.0, 1.0, -1.0]).view(1, 1, 1, 4)
    batch = lovasz_hinge(torch.cat([LOGITS, empty]), torch.cat([TARGETS, torch.zeros_like(TARGETS)]))
    assert batch.item() == pytest.approx((1.25 + 2.0) / 2)
    # The config's blend: w * Lovasz + (1 - w) * BCE.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(LOGITS, TARGETS).item()
    assert SegmentationLoss("lovasz_hinge", 0.25)(LOGITS, TARGETS).item() == pytest.approx(0.25 * 1.25 + 0.75 * bce)


def test_lovasz_hinge_gradient_follows_the_sort_order():
    """d loss / d logit_i = -sign_i * gradient[rank of i] where its error is positive: pixel 1 (rank 0, sign +1)
    gets -1/2, pixel 2 (rank 1, sign -1) +1/6, pixels 0 and 3 (negative errors) 0. An ascending sort gives
    1/3, 1/3, 1/12, 1/4 and a loss of 0.625; targets left unsorted give 1/2, 1/2, 0, 0 and 1.75."""
    logits = LOGITS.clone().requires_grad_(True)
    lovasz_hinge(logits, TARGETS).backward()
    assert logits.grad.flatten().tolist() == pytest.approx([0.0, -0.5, 1 / 6, 0.0])


def test_lovasz_hinge_at_unit_errors_is_the_jaccard_loss():
    """The Lovasz extension equals the set function on indicator vectors: with errors 1 on the wrongly
    predicted pixels and 0 elsewhere it is 1 - IoU of the prediction."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        target = rng.random((6, 7)) < 0.4
        wrong = rng.random((6, 7)) < 0.3
        pred = target ^ wrong
        signs = np.where(target, 1.0, -1.0)
        logits = np.where(wrong, 0.0, signs)  # error 1 - logit * sign: 1 where wrong, 0 where right
        loss = lovasz_hinge(torch.tensor(logits)[None, None], torch.tensor(target, dtype=torch.float32)[None, None])
        iou = jaccard_from_counts((pred & target).sum(), pred.sum(), target.sum())
        assert loss.item() == pytest.approx(1 - iou, abs=1e-6)


def test_lovasz_loss_trains_towards_the_mask():
    target = torch.zeros(2, 1, 6, 6)
    target[0, :, 1:4, 1:4] = 1
    logits = torch.zeros(2, 1, 6, 6, requires_grad=True)
    for _ in range(30):  # plain gradient descent (torch.optim's first step imports the compiler: seconds)
        lovasz_hinge_loss(logits, target).backward()
        with torch.no_grad():
            logits -= 0.5 * logits.grad
            logits.grad = None
    assert torch.equal(logits.detach() > 0, target > 0)


def test_lovasz_configs_are_checked():
    from ternaus.errors import ConfigError

    assert load_config(None, ["train.loss.name=lovasz_hinge_elu", "train.loss.weight=0.5"])
    with pytest.raises(ConfigError, match=r"w must lie in \[0, 1\], got 2.0"):
        load_config(None, ["train.loss.name=lovasz_hinge", "train.loss.weight=2"])
    with pytest.raises(ConfigError, match="lovasz_hinge is the binary Lovasz hinge"):
        load_config(None, ["train.loss.name=lovasz_hinge", "model.activation=softmax"])


# ---------------------------------------------------------------- the search under each metric


def stray_and_poor():
    """1 x 12 images. E: empty mask, 6 stray pixels at 200. P1, P2: 6 true pixels, 5 predicted at 200 of which
    3 true: IoU 3/8 (below every threshold of iou_ap), Dice 6/11."""
    empty = np.zeros((1, 12), bool)
    stray = np.where(np.arange(12) < 6, 200, 0)[None]
    target = (np.arange(12) < 6)[None]
    poor = np.where((np.arange(12) >= 3) & (np.arange(12) < 8), 200, 0)[None]
    return histograms_of([(stray, empty), (poor, target), (poor, target)])


def test_the_search_maximises_the_configured_metric():
    """Dice: emptying the poor predictions (area 5) costs 2 * 6/11 and saves the stray one (area 6) 1: no minimum
    area (mean 4/11 vs 1/3 with min_area 7). iou_ap: the poor predictions score 0 anyway, so min_area 7 (all
    emptied) gains the stray image's 1: 1/3."""
    dice, _ = search_postprocessing(stray_and_poor(), "dice", 0.5, (0.5,))
    iou_ap, _ = search_postprocessing(stray_and_poor(), "iou_ap", 0.5, (0.5,))
    assert (dice.min_area, dice.score) == (0, pytest.approx(4 / 11))
    assert (iou_ap.min_area, iou_ap.score, iou_ap.default_score) == (7, pytest.approx(1 / 3), 0.0)


def test_iou_ap_from_histograms_equals_iou_ap_on_the_masks():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 256, (5, 6)), rng.random((5, 6)) < 0.5) for _ in range(6)]
    pairs.append((np.zeros((5, 6), int), np.zeros((5, 6), bool)))
    scores = scores_from_histograms(histograms_of(pairs), (0.2, 0.5, 0.8), "iou_ap")
    for k, threshold in enumerate((0.2, 0.5, 0.8)):
        expected = [image_score("iou_ap", [levels >= threshold * 255], [target], levels.shape)
                    for levels, target in pairs]
        assert scores.kept[:, k].tolist() == pytest.approx(expected)
    assert scores.emptied.tolist() == [0.0] * 6 + [1.0]


def two_ships_and_a_bridge():
    """A 3 x 9 image, two true ships of 3 pixels (columns 0-2 and 6-8 of row 1) at level 200, joined by a bridge
    of level 100 (columns 3-5): at 0.3 one component of 9 pixels (IoU 1/3 with each ship: 2 misses, 1 FP), at
    0.5 the two ships exactly."""
    levels = np.zeros((3, 9), np.uint8)
    levels[1] = [200, 200, 200, 100, 100, 100, 200, 200, 200]
    ships = [box((3, 9), (1, 2), (0, 3)), box((3, 9), (1, 2), (6, 9))]
    return levels, ships


def test_object_metrics_score_each_threshold_on_its_components():
    levels, ships = two_ships_and_a_bridge()
    kept, areas, emptied = object_scores_of_image(levels, ships, (0.3, 0.5, 0.9), "f2_instances")
    assert kept.tolist() == [0.0, 1.0, 0.0] and areas.tolist() == [9, 6, 0] and emptied == 0.0
    assert search_thresholds("f2_instances", 0.45) == (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert len(search_thresholds("iou_ap", 0.5)) == 99


def test_oof_analysis_with_an_object_metric(tmp_path):
    """Two images: the bridged ships, and an empty image with 2 stray pixels at 150 (F2 0 kept, 1 emptied)."""
    cfg = load_config(None, [f"output_dir={tmp_path}", "postprocess.metric=f2_instances"])
    levels, ships = two_ships_and_a_bridge()
    stray = np.zeros((3, 9), np.uint8)
    stray[0, :2] = 150
    grid = search_thresholds("f2_instances", 0.5)
    rows = [object_scores_of_image(levels, ships, grid, "f2_instances"),
            object_scores_of_image(stray, [], grid, "f2_instances")]
    objects = ThresholdScores(grid, *map(np.stack, list(zip(*rows))[:2]), np.asarray([r[2] for r in rows]))
    histograms = histograms_of([(levels, np.any(ships, axis=0)), (stray, np.zeros((3, 9), bool))])
    oof = pd.DataFrame({"id": ["ships", "stray"], "fold": [0, 1]})
    chosen = write_oof_analysis(RunFiles.of(cfg), cfg.postprocess, oof, histograms, objects)
    # At 0.5: ships 1, stray 0 (0.5 keeps 150 >= 127.5); min_area 3 empties the stray image only: 1 and 1.
    # 0.6 (level 153) already drops the stray pixels: 1 and 1 without a minimum area, but 0.5 is nearer the
    # training threshold and wins the tie.
    assert (chosen.threshold, chosen.min_area, chosen.score, chosen.default_score) == (0.5, 3, 1.0, 0.5)
    written = pd.read_csv(tmp_path / "oof.csv")
    assert written["f2_instances"].tolist() == [1.0, 0.0] and written["f2_instances_pp"].tolist() == [1.0, 1.0]
    assert list(written.columns[:5]) == ["id", "fold", "dice", "jaccard", "f2_instances"]


# ---------------------------------------------------------------- validation scores the original masks


class Constant(torch.nn.Module):
    def forward(self, images):
        return torch.full_like(images[:, :1], 10.0)


def test_resized_validation_scores_the_original_masks(tmp_path):
    """A 40 x 40 image with stripes on every third column (14 columns, 560 pixels) resized to 32 x 32: the
    stripes resized down and back up are not the mask. Predicting everything, the Dice must be that of the
    original mask, 2 * 560 / (1600 + 560); the loss that of the network-sized mask, as in training."""
    from ternaus.data.geometry import geometry_of
    from ternaus.data.layouts import list_train
    from ternaus.distributed import World
    from ternaus.runtime import Runtime
    from ternaus.training import TrainingRun, fold_data, validate

    mask = np.zeros((40, 40), np.uint8)
    mask[:, ::3] = 255
    for split, image in (("images", np.full((40, 40), 90, np.uint8)), ("masks", mask)):
        (tmp_path / split).mkdir()
        for name in ("a", "b"):
            cv2.imwrite(str(tmp_path / split / f"{name}.png"), image)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.layout=folders", "data.train_dir=images",
                             "data.masks_dir=masks", "data.input_size=[32,32]", "data.num_workers=0",
                             "postprocess.metric=iou_ap"])
    items = list_train(DataSource.of(cfg)).assign(fold=[0, 1])
    runtime = Runtime(torch.device("cpu"), None, False)
    geometry = geometry_of(cfg)
    data = fold_data(TrainingRun.from_config(cfg), items, 0, runtime, World())
    loss = SegmentationLoss()
    scores = validate(Constant(), data.val_loader, runtime, loss, geometry, 0.5, metric="iou_ap")
    assert scores["val_dice"] == pytest.approx(2 * 560 / (1600 + 560))
    assert scores["val_jaccard"] == pytest.approx(560 / 1600)
    assert scores["val_iou_ap"] == 0.0  # IoU 0.35
    resized = torch.from_numpy(geometry.mask_to_input(mask // 255)).float()[None, None]
    assert resized.sum() != 560  # the case this test is about
    assert scores["val_loss"] == pytest.approx(loss(torch.full_like(resized, 10.0), resized).item())


# ---------------------------------------------------------------- evaluate on the fixtures


def test_evaluate_a_tgs_submission_with_iou_ap(tmp_path):
    root = generate_tgs(tmp_path, images=1, test_images=5, size=29, seed=0)
    cfg = load_config(ROOT / "configs/tgs.yaml", [f"data.root={root}"])
    truth = {p.stem: (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0) for p in sorted((root / "test_masks").iterdir())}
    empty = [i for i, m in truth.items() if not m.any()]
    salt = [i for i, m in truth.items() if m.any()]
    assert empty and salt
    pred = {i: m.copy() for i, m in truth.items()}
    pred[empty[0]][0, 0] = True  # one false pixel on an empty patch: 0
    area = int(truth[salt[0]].sum())
    removed = area // 5 + 1
    pred[salt[0]][np.nonzero(truth[salt[0]])[0][:removed], np.nonzero(truth[salt[0]])[1][:removed]] = False
    iou = (area - removed) / area  # the prediction inside the truth
    table = pd.DataFrame({"id": list(pred), "rle_mask": [encode_rle(m, COLUMN_MAJOR) for m in pred.values()]})
    table.to_csv(tmp_path / "submission.csv", index=False)
    scores = score_submission(cfg, tmp_path / "submission.csv", root / TRUTH["tgs"], None, ("iou_ap", "dice"))
    hits = sum(iou > t for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) / 10
    assert scores["iou_ap"] == pytest.approx((3 + 0 + hits) / 5)
    assert scores["dice"] == pytest.approx((3 + 0 + 2 * (area - removed) / (2 * area - removed)) / 5)
    table.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    assert evaluate_main(["--config", str(ROOT / "configs/tgs.yaml"), str(tmp_path / "short.csv"),
                          str(root / TRUTH["tgs"]), f"data.root={root}"]) == 2  # a missing row is refused


def test_evaluate_an_airbus_submission_with_f2_instances(tmp_path, capsys):
    root = generate_airbus(tmp_path, images=1, test_images=6, size=64, seed=0)
    truth = pd.read_csv(root / TRUTH["airbus"], dtype=str, keep_default_na=False)
    ships = truth.groupby("ImageId").size()
    two = ships[ships == 2].index[0]  # ed2762881.jpg: two ships
    empty = truth[truth["EncodedPixels"] == ""]["ImageId"].iloc[0]
    submission = truth.drop(index=truth[truth["ImageId"] == two].index[1])  # one of its two ships found
    false_ship = encode_rle(box((64, 64), (0, 3), (0, 3)), COLUMN_MAJOR)
    submission.loc[submission["ImageId"] == empty, "EncodedPixels"] = false_ship  # a ship where there is none
    submission.to_csv(tmp_path / "submission.csv", index=False)
    # 6 images: 4 right (1 each), the two-ship one 5/9 (TP 1, FN 1), the empty one 0 (FP 1).
    code = evaluate_main(["--config", str(ROOT / "configs/airbus.yaml"), str(tmp_path / "submission.csv"),
                          str(root / TRUTH["airbus"]), f"data.root={root}"])
    assert code == 0
    assert f"submission f2_instances (mean per image; F2 over IoU 0.50-0.95, per object): {(4 + 5 / 9) / 6:.4f}" \
        in capsys.readouterr().out
    # The truth as its own submission: 1. The ships of each image merged into one row: the same pixels (Dice 1),
    # but the 3 images with several ships lose hits and count false positives.
    assert score_submission(load_config(ROOT / "configs/airbus.yaml", [f"data.root={root}"]), root / TRUTH["airbus"],
                            root / TRUTH["airbus"]) == {"f2_instances": 1.0}
    merged = [{"ImageId": name, "EncodedPixels": encode_rle(np.any([decode_rle(r, (64, 64), COLUMN_MAJOR)
                                                                    for r in rows], axis=0), COLUMN_MAJOR)}
              for name, rows in truth.groupby("ImageId")["EncodedPixels"]]
    pd.DataFrame(merged).to_csv(tmp_path / "merged.csv", index=False)
    scores = score_submission(load_config(ROOT / "configs/airbus.yaml", [f"data.root={root}"]),
                              tmp_path / "merged.csv", root / TRUTH["airbus"], None, ("f2_instances", "dice"))
    assert scores["dice"] == 1.0 and 3 / 6 <= scores["f2_instances"] < 4 / 6


def test_evaluate_a_carvana_submission_with_dice(tiny_dataset, tmp_path, capsys):
    from ternaus.data.files import read_mask
    from ternaus.rle import rle_encode

    names = sorted(p.name for p in (tiny_dataset / "test").iterdir())
    rles = [rle_encode(read_mask(tiny_dataset / "test_masks" / n.replace(".jpg", "_mask.gif"))) for n in names]
    rles[1] = ""
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(tmp_path / "submission.csv", index=False)
    code = evaluate_main(["--config", str(ROOT / "configs/synthetic.yaml"), str(tmp_path / "submission.csv"),
                          str(tiny_dataset / "test_masks"), f"data.root={tiny_dataset}"])
    assert code == 0
    assert f"submission dice (mean per image; Dice): {15 / 16:.4f}" in capsys.readouterr().out


REAL_TGS = ROOT.parent / "shared" / "data" / "tgs-real"


@pytest.mark.skipif(not (REAL_TGS / "train.csv").is_file(), reason=f"the real TGS data is not at {REAL_TGS}")
def test_an_empty_submission_of_the_real_tgs_training_set_scores_its_share_of_empty_masks(tmp_path):
    """The competition's anchor, on the training set whose masks are known: an all-empty submission scores 1 on
    each empty patch and 0 elsewhere, so exactly the share of empty masks (1,172 of 2,989 = 0.3921)."""
    truth = pd.read_csv(REAL_TGS / "train.csv", dtype=str, keep_default_na=False)
    truth.assign(rle_mask="").to_csv(tmp_path / "empty.csv", index=False)
    cfg = load_config(ROOT / "configs/tgs.yaml", [f"data.root={REAL_TGS}"])
    scores = score_submission(cfg, tmp_path / "empty.csv", REAL_TGS / "train.csv", REAL_TGS / "train" / "images")
    assert len(truth) == 2989 and (truth["rle_mask"] == "").sum() == 1172
    assert scores["iou_ap"] == pytest.approx(1172 / 2989)
