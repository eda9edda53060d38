"""Out-of-fold analysis: level histograms, the threshold / minimum-area search, and who decides the submission's
values. Every expected number below is worked out by hand in the comments."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from ternaus.run_files import RunFiles
from ternaus.analysis import (
    DEFAULT_THRESHOLDS,
    best_min_area,
    choose_row,
    counts_at_levels,
    level_histograms,
    per_image_scores,
    resolve_postprocessing,
    search_postprocessing,
    search_table,
    threshold_level,
    write_oof_analysis,
)
from ternaus.config import load_config
from ternaus.metrics import dice_per_image, jaccard_per_image
from ternaus.submission import encode_prediction


def histograms_of(pairs) -> np.ndarray:
    return np.stack([level_histograms(torch.tensor(levels, dtype=torch.uint8), torch.tensor(target)).numpy()
                     for levels, target in pairs])


def test_counts_at_every_level_from_one_histogram():
    levels = [[0, 100, 200], [255, 128, 127]]
    target = [[0, 1, 1], [1, 1, 0]]
    predicted, overlap, target_area = counts_at_levels(histograms_of([(levels, target)]))
    assert target_area.tolist() == [4]
    # level 128 keeps 128, 200, 255 (all in the target); level 100 adds 100 (target) and 127 (not).
    assert (predicted[0, 128], overlap[0, 128]) == (3, 3)
    assert (predicted[0, 101], overlap[0, 101]) == (4, 3)  # 127 >= 101, outside the target
    assert (predicted[0, 100], overlap[0, 100]) == (5, 4)
    assert (predicted[0, 0], overlap[0, 0]) == (6, 4)
    assert (predicted[0, 255], overlap[0, 255]) == (1, 1)


def test_threshold_levels_match_the_submissions_comparison():
    values = np.arange(256)
    for threshold in (*DEFAULT_THRESHOLDS, 0.0, 1.0, 0.2, 0.5, 128 / 255):
        # make_submission keeps ``png >= threshold * 255``: the level must keep exactly the same values.
        assert np.array_equal(values >= threshold * 255, values >= threshold_level(threshold)), threshold
    # 127.5 -> 128, 51.0 -> 51 (a value on the threshold is kept), 53.55 -> 54.
    assert (threshold_level(0.5), threshold_level(0.2), threshold_level(0.21)) == (128, 51, 54)


def test_scores_from_histograms_equal_the_metrics_on_the_masks():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (7, 9)), rng.random((7, 9)) < 0.4) for _ in range(5)]
    pairs += [(np.zeros((7, 9), int), np.zeros((7, 9), bool)),  # empty on empty: 1
              (np.full((7, 9), 200), np.zeros((7, 9), bool))]  # full on empty: 0
    table = per_image_scores(histograms_of(pairs), 0.5)
    pred = torch.tensor(np.stack([lv >= 128 for lv, _ in pairs]))
    target = torch.tensor(np.stack([t for _, t in pairs]))
    assert np.allclose(table["dice"], dice_per_image(pred, target).numpy())
    assert np.allclose(table["jaccard"], jaccard_per_image(pred, target).numpy())
    assert table["dice"].iloc[-2:].tolist() == [1.0, 0.0]


def test_best_min_area_tries_every_useful_area_and_keeps_the_smallest_on_ties():
    # Emptying the area-3 image (empty mask) gains 1; emptying the area-10 one too loses 0.5.
    assert best_min_area(np.array([0.5, 0.0]), np.array([0.0, 1.0]), np.array([10, 3])) == (4, 0.75)
    # No empty masks: emptying only loses, so no minimum area.
    assert best_min_area(np.array([0.9, 0.8]), np.array([0.0, 0.0]), np.array([5, 5])) == (0, pytest.approx(0.85))
    # An image already predicted empty: A = 1 changes nothing, and 0 wins the tie.
    assert best_min_area(np.array([1.0, 0.6]), np.array([1.0, 0.0]), np.array([0, 9]))[0] == 0


def four_images():
    """4 x 4 images. A: top half car, predicted 200 there and 100 below. B: empty mask, 2 stray pixels at 180.
    C: empty mask, nothing predicted. D: 4 car pixels predicted at 150."""
    top = np.zeros((4, 4), bool)
    top[:2] = True
    a = np.where(top, 200, 100)
    b = np.zeros((4, 4), int)
    b[0, :2] = 180
    d_target = np.zeros((4, 4), bool)
    d_target[3] = True
    d = np.where(d_target, 150, 0)
    empty = np.zeros((4, 4), bool)
    return histograms_of([(a, top), (b, empty), (np.zeros((4, 4), int), empty), (d, d_target)])


def test_threshold_and_min_area_search_on_hand_made_maps():
    table = search_table(four_images(), (0.3, 0.5, 0.7), "dice").set_index("threshold")
    # 0.3 (level 77): A Dice 2*8/(16+8) = 2/3, B 0, C 1, D 1; emptying B (area 2, so min_area 3) gains 1.
    assert table.loc[0.3, "score_no_min_area"] == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)
    assert (table.loc[0.3, "min_area"], table.loc[0.3, "score"]) == (3, pytest.approx((2 / 3 + 3) / 4))
    # 0.5 (level 128): A 1, B 0, C 1, D 1; with min_area 3: all four 1.
    assert table.loc[0.5, "score_no_min_area"] == pytest.approx(0.75)
    assert (table.loc[0.5, "min_area"], table.loc[0.5, "score"]) == (3, 1.0)
    # 0.7 (level 179): D's 150 is lost (0) and B's 180 kept (0); min_area 3 saves B only.
    assert (table.loc[0.7, "score_no_min_area"], table.loc[0.7, "score"]) == (0.5, 0.75)
    iou = search_table(four_images(), (0.3,), "jaccard")
    assert iou["score_no_min_area"].iloc[0] == pytest.approx((8 / 16 + 0 + 1 + 1) / 4)


def test_search_breaks_ties_towards_the_training_threshold():
    chosen, table = search_postprocessing(four_images(), "dice", 0.5)
    # Every threshold from 0.40 (level 102 > A's 100) to 0.58 (level 148 <= D's 150) scores 1 with min_area 3.
    perfect = table[table["score"] == 1.0]["threshold"]
    assert (perfect.min(), perfect.max()) == (0.4, 0.58)
    assert (chosen.threshold, chosen.min_area, chosen.score, chosen.default_score) == (0.5, 3, 1.0, 0.75)
    assert choose_row(table, prefer=0.45)["threshold"] == 0.45
    assert choose_row(table, prefer=0.9)["threshold"] == 0.58


def test_oof_analysis_files_and_the_submission_picks_them_up(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    oof = pd.DataFrame({"id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1]})
    chosen = write_oof_analysis(RunFiles.of(cfg), cfg.postprocess, oof, four_images())
    written = pd.read_csv(tmp_path / "oof.csv")
    assert written["dice"].tolist() == pytest.approx([1, 0, 1, 1])  # at postprocess.threshold, no min_area
    assert written["dice_pp"].tolist() == [1, 1, 1, 1] and written["pred_area"].tolist() == [8, 2, 0, 4]
    assert json.loads((tmp_path / "postprocess.json").read_text())["min_area"] == chosen.min_area == 3
    assert len(pd.read_csv(tmp_path / "postprocess_search.csv")) == len(DEFAULT_THRESHOLDS)
    assert np.load(tmp_path / "oof_levels.npz")["histograms"].shape == (4, 2, 256)

    threshold, min_area, how = resolve_postprocessing(cfg.postprocess, RunFiles.of(cfg))
    assert (threshold, min_area) == (0.5, 3) and "postprocess.json" in how
    cfg = load_config(None, [f"output_dir={tmp_path}", "postprocess.threshold=0.6", "postprocess.min_area=2",
                             "postprocess.use_searched=false"])
    threshold, min_area, how = resolve_postprocessing(cfg.postprocess, RunFiles.of(cfg))
    assert (threshold, min_area) == (0.6, 2) and "threshold 0.6 from postprocess.threshold in the config" in how
    # The renamed key still works for a release: a fixed value for the submission, as it was.
    cfg = load_config(None, [f"output_dir={tmp_path}", "submission.threshold=0.6"])
    assert resolve_postprocessing(cfg.postprocess, RunFiles.of(cfg))[:2] == (0.6, 0)
    assert resolve_postprocessing(cfg.postprocess, RunFiles.of(cfg), 0.3, 0)[:2] == (0.3, 0)
    (tmp_path / "postprocess.json").unlink()
    assert resolve_postprocessing(load_config(None, []).postprocess, RunFiles(tmp_path))[:2] == (0.5, 0)


def test_submission_empties_masks_below_the_minimum_area(tmp_path):
    probs = np.zeros((3, 4), np.uint8)
    probs[1, 1:3] = 200  # two pixels of car
    cv2.imwrite(str(tmp_path / "p.png"), probs)
    assert encode_prediction(str(tmp_path / "p.png"), 0.5, 2) == "6 2"  # row-major, 1-based
    assert encode_prediction(str(tmp_path / "p.png"), 0.5, 3) == encode_prediction(str(tmp_path / "p.png"), 0.9)
    assert encode_prediction(str(tmp_path / "p.png"), 0.9) == ""
