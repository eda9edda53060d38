"""report.py on a hand-made run folder (no training): what the page shows, and that it matches the run's files."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_rle import plain_rle  # the RLE definition, one pixel at a time

from ternaus.config import load_config
from ternaus.plots import nice_ticks, svg_line_chart
from ternaus.report import FN, FP, TP, build_report, cv_table, disagreement, montage_row, pick_examples

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["car1_01", "car1_02", "car2_01", "car2_02", "car3_01"]
TEST = ["car9_01", "car9_02"]
H, W = 20, 30


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)


def box(top: int, left: int, height: int = 8, width: int = 12) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[top: top + height, left: left + width] = 1
    return mask


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


@pytest.fixture
def fake_run(tmp_path):
    """Five training images in two folds, their OOF probability PNGs, logs of two epochs, two test images."""
    data, run = tmp_path / "data", tmp_path / "run"
    for i, image_id in enumerate(TRAIN):
        write_image(data / "train" / f"{image_id}.jpg", i)
        (data / "train_masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(box(4, 6) * 255).save(data / "train_masks" / f"{image_id}_mask.gif")
        write_png(run / "oof_predictions" / f"{image_id}.png", box(4, 6 + 3 * i).astype(np.uint8) * 230)
    for i, image_id in enumerate(TEST):
        write_image(data / "test" / f"{image_id}.jpg", 10 + i)
        write_png(run / "predictions" / f"{image_id}.png", box(5, 5).astype(np.uint8) * 200)
    pd.DataFrame({"img": [f"{i}.jpg" for i in TEST], "rle_mask": "1 1"}).to_csv(data / "sample_submission.csv",
                                                                                index=False)
    oof = pd.DataFrame({"id": TRAIN, "fold": [0, 0, 1, 1, 1], "dice": [0.9, 0.7, 0.5, 0.8, 0.6],
                        "jaccard": [0.81, 0.54, 0.33, 0.67, 0.43], "pred_area": 96, "target_area": 96,
                        "dice_pp": [0.91, 0.72, 0.5, 0.85, 0.61], "jaccard_pp": [0.83, 0.56, 0.33, 0.74, 0.44]})
    oof.to_csv(run / "oof.csv", index=False)
    (run / "postprocess.json").write_text(json.dumps({"threshold": 0.45, "min_area": 2}))
    pd.DataFrame({"threshold": [0.4, 0.45], "score_no_min_area": [0.6, 0.65], "min_area": [2, 2],
                  "score": [0.7, 0.72]}).to_csv(run / "postprocess_search.csv", index=False)
    for fold in (0, 1):
        (run / f"fold_{fold}").mkdir()
        pd.DataFrame({"epoch": [1, 2], "lr": [1e-3, 5e-4], "train_loss": [0.9, 0.5], "val_loss": [0.8, 0.6],
                      "val_dice": [0.6, 0.8], "val_jaccard": [0.45, 0.66], "time_s": [1.0, 1.0]}).to_csv(
            run / f"fold_{fold}" / "log.csv", index=False)
    overrides = [f"data.root={data}", f"output_dir={run}", "folds.n_folds=2", "report.worst=3", "report.best=2",
                 "report.tile_height=40"]
    return run, overrides, oof


def cv_rows(html: str) -> dict[str, list[str]]:
    table = re.search(r'<table class="cv">(.*?)</table>', html, re.S).group(1)
    return {m.group(1): re.findall(r"<td>([^<]*)</td>", m.group(2))
            for m in re.finditer(r"<tr><th>([^<]+)</th>(.*?)</tr>", table)}


def test_report_page_holds_every_section_and_matches_the_run(fake_run):
    run, overrides, oof = fake_run
    page = build_report(load_config(None, overrides))
    html = page.read_text()
    assert page == run / "report" / "index.html"
    for section in ("curves", "cv", "worst", "best", "test"):
        assert f'<section id="{section}">' in html
    # Three charts per fold (loss, validation scores, learning rate) and the threshold search's.
    assert html.count("<svg") == 7 and "<title>fold 1: learning rate</title>" in html
    assert "<title>CV dice by threshold (out-of-fold)</title>" in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 3 + 2 + 2
    for name in images:
        assert (page.parent / name).is_file() and cv2.imread(str(page.parent / name)).shape[0] == 40
    rows = cv_rows(html)
    columns = ["dice", "jaccard", "dice_pp", "jaccard_pp"]
    assert rows["all (CV)"] == ["5"] + [f"{oof[c].mean():.4f}" for c in columns]
    for fold in (0, 1):
        part = oof[oof["fold"] == fold]
        assert rows[f"fold {fold}"] == [str(len(part))] + [f"{part[c].mean():.4f}" for c in columns]
    # Worst by dice_pp: 0.5 (car2_01), 0.61 (car3_01), 0.72 (car1_02); best: 0.91 (car1_01), 0.85.
    worst = re.search(r'<section id="worst">(.*?)</section>', html, re.S).group(1)
    assert re.findall(r"<figcaption>(\w+)", worst) == ["car2_01", "car3_01", "car1_02"]
    best = re.search(r'<section id="best">(.*?)</section>', html, re.S).group(1)
    assert re.findall(r"<figcaption>(\w+)", best) == ["car1_01", "car2_02"]
    assert "threshold 0.45 from" in html and "min_area 2 from" in html


def test_report_montage_colours_the_disagreement(fake_run):
    run, overrides, _ = fake_run
    build_report(load_config(None, overrides))
    # car2_01's prediction is the truth shifted 6 px right: both, prediction-only and truth-only pixels show.
    montage = cv2.cvtColor(cv2.imread(str(run / "report" / "worst_01.png")), cv2.COLOR_BGR2RGB)
    last_tile = montage[:, -60:]  # 30 x 20 scaled to height 40: 60 px wide
    for colour in (TP, FP, FN):
        assert (np.abs(last_tile.astype(int) - colour).sum(-1) < 30).any(), colour


def test_report_script_runs_and_says_where_the_page_is(fake_run, capsys):
    from report import main  # in this process: a subprocess would spend seconds importing torch again

    run, overrides, _ = fake_run
    assert main(["--config", str(ROOT / "configs/synthetic.yaml"), *overrides]) == 0
    assert f"report written: {run / 'report' / 'index.html'}" in capsys.readouterr().out
    assert main(["--config", str(ROOT / "configs/synthetic.yaml"), *overrides, "report.worst=-1"]) == 2


def test_missing_inputs_say_which_stage_writes_them(fake_run):
    run, overrides, _ = fake_run
    (run / "oof.csv").unlink()
    (run / "fold_1" / "log.csv").unlink()
    html = build_report(load_config(None, overrides)).read_text()
    assert "No oof.csv: run predict.py" in html and html.count("<svg") == 3  # fold 0's; no CV, so no search chart


def test_pure_parts():
    image = np.full((2, 3, 3), 100, np.uint8)
    truth = np.array([[1, 1, 0], [0, 0, 0]], bool)
    pred = np.array([[1, 0, 1], [0, 0, 0]], bool)
    out = disagreement(image, truth, pred)
    assert out[0, 0].tolist() == list(TP) and out[0, 1].tolist() == list(FN) and out[0, 2].tolist() == list(FP)
    assert out[1, 0].tolist() == [45, 45, 45]  # dimmed, uncoloured
    row = montage_row([np.zeros((10, 20), np.uint8), np.zeros((5, 5, 3), np.uint8)], 10)
    assert row.shape == (10, 20 + 4 + 10, 3) and (row[:, 20:24] == 255).all()
    oof = pd.DataFrame({"id": ["b", "a", "c"], "fold": [0, 1, 1], "dice": [0.5, 0.5, 0.9]})
    assert pick_examples(oof, "dice", 2, worst=True)["id"].tolist() == ["a", "b"]
    assert cv_table(oof).loc["all (CV)", "dice"] == pytest.approx(19 / 30)
    assert cv_table(oof).loc["fold 1", "images"] == 2
    tgs = oof.assign(iou_ap=[0.0, 1.0, 0.4], iou_ap_pp=[1.0, 1.0, 0.4], other=1.0)
    assert list(cv_table(tgs, "iou_ap").columns) == ["images", "dice", "iou_ap", "iou_ap_pp"]
    assert cv_table(tgs, "iou_ap").loc["all (CV)", "iou_ap_pp"] == pytest.approx(2.4 / 3)
    assert nice_ticks(0.0, 0.93) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(1, 10) == [0, 2.5, 5, 7.5, 10] and nice_ticks(0.3, 0.3) == [0.28, 0.29, 0.3, 0.31, 0.32]
    svg = svg_line_chart({"a": ([1, 2], [0.5, float("nan")])}, "t", "x", "y")
    assert svg.startswith("<svg") and svg.count("<circle") == 1 and "nan" not in svg


def test_montage_truth_comes_from_the_layouts_masks_csv_in_its_rle_order(tmp_path):
    """An Airbus-style run (rle_csv layout, one row per ship, column-major): the montage's truth tile is the
    CSV's mask, not Carvana's (which this layout does not have)."""
    data, run = tmp_path / "data", tmp_path / "run"
    truth = box(2, 3, 5, 7) | box(12, 20, 4, 6)  # two ships
    ships = [plain_rle(ship, "F") for ship in (box(2, 3, 5, 7), box(12, 20, 4, 6))]  # one row per ship
    write_image(data / "train_v2" / "ship1.jpg", 1)
    write_image(data / "test_v2" / "sea1.jpg", 2)
    pd.DataFrame({"ImageId": ["ship1.jpg"] * 2, "EncodedPixels": ships}).to_csv(
        data / "train_ship_segmentations_v2.csv", index=False)
    pd.DataFrame({"ImageId": ["sea1.jpg"], "EncodedPixels": [""]}).to_csv(data / "sample_submission_v2.csv",
                                                                           index=False)
    write_png(run / "oof_predictions" / "ship1.png", truth * 255)  # a perfect prediction
    write_png(run / "predictions" / "sea1.png", np.zeros((H, W), np.uint8))
    pd.DataFrame({"id": ["ship1"], "fold": [0], "dice": [1.0], "jaccard": [1.0]}).to_csv(run / "oof.csv", index=False)
    cfg = load_config(ROOT / "configs/airbus.yaml", [f"data.root={data}", f"output_dir={run}", "folds.n_folds=2",
                                                     "report.worst=1", "report.best=1", "report.tile_height=20",
                                                     "postprocess.threshold=0.5", "postprocess.use_searched=false"])
    build_report(cfg)
    montage = cv2.cvtColor(cv2.imread(str(run / "report" / "worst_01.png")), cv2.COLOR_BGR2RGB)
    gap = (montage.shape[1] - 4 * W) // 3  # four tiles of 30 x 20 at height 20
    truth_tile = montage[:, W + gap: 2 * W + gap, 0]
    assert np.array_equal(truth_tile > 127, truth.astype(bool))
    last = montage[:, -W:].astype(int)
    agree = (np.abs(last - TP).sum(-1) < 30)
    assert np.array_equal(agree, truth.astype(bool))  # prediction and truth agree everywhere: no red, no blue
