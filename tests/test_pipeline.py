"""All four stages end to end, as a user runs them, on a tiny synthetic dataset."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_NET

from ternaus.run_files import RunFiles
from ternaus.config import load_config
from ternaus.inference import to_uint8, tta_probabilities
from ternaus.runtime import Runtime
from ternaus.submission import check_rle, check_submission
from ternaus.tta import merge_tta, tta_inputs

ROOT = Path(__file__).resolve().parents[1]


def run_stage(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), "--config", str(ROOT / "configs/synthetic.yaml"),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


BASE_OVERRIDES = [*TINY_NET, "folds.n_folds=2", "train.epochs=2", "train.batch_size=4", "predict.batch_size=8",
                  "submission.processes=2"]


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """prepare_folds.py and train.py once, at full resolution reflect-padded (62 x 40 -> 64 x 64, the Carvana
    recipe): one epoch, then the same command asking for two, which resumes from last.pt."""
    out = tmp_path_factory.mktemp("trained")
    overrides = [f"data.root={tiny_dataset}", f"output_dir={out}", *BASE_OVERRIDES, "data.input_size=null"]
    results = {"prepare_folds.py": run_stage("prepare_folds.py", *overrides),
               "train.py (1 epoch)": run_stage("train.py", *overrides, "train.epochs=1"),
               "train.py": run_stage("train.py", *overrides)}
    return out, results


# predict.py and make_submission.py at each geometry, from the same fold models (a fully convolutional network
# runs at any size): padded like the training, and resized to 64 x 96 and back. Each run has its own folder,
# the training's files linked into it, so that the two never share an output.
@pytest.fixture(scope="module", params=["null", "[64,96]"], ids=["padded", "resized"])
def pipeline_run(request, trained_run, tiny_dataset, tmp_path_factory):
    trained, results = trained_run
    out = tmp_path_factory.mktemp("run")
    shutil.copytree(trained, out, copy_function=os.link, dirs_exist_ok=True)
    # The resized run predicts at another size than the models trained at: asked for explicitly.
    overrides = [f"data.root={tiny_dataset}", f"output_dir={out}", *BASE_OVERRIDES,
                 f"data.input_size={request.param}",
                 *(["predict.allow_other_input_size=true"] if request.param != "null" else [])]
    results = {**results, **{script: run_stage(script, *overrides) for script in ("predict.py", "make_submission.py")}}
    return out, overrides, results


@pytest.mark.slow
def test_all_four_stages_run_and_write_what_the_readme_promises(pipeline_run, tiny_dataset):
    out, _, results = pipeline_run
    for script, result in results.items():
        assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert folds.groupby("car_id")["fold"].nunique().max() == 1
    for fold in (0, 1):
        assert {"best.pt", "last.pt", "log.csv"} <= {p.name for p in (out / f"fold_{fold}").iterdir()}
        log = pd.read_csv(out / f"fold_{fold}" / "log.csv")
        assert log["epoch"].tolist() == [1, 2]
        assert {"train_loss", "val_dice", "val_jaccard", "lr"} <= set(log.columns)
        ckpt = torch.load(out / f"fold_{fold}" / "last.pt", weights_only=True)
        assert {"model", "optimizer", "scaler", "scheduler", "epoch", "step", "best_score", "config", "rng",
                "log"} <= set(ckpt)
        assert not any(k.startswith("module.") for k in ckpt["model"])
    assert "fold 0: resuming from" in results["train.py"].stdout
    assert "at the end of epoch 1" in results["train.py"].stdout
    pngs = sorted((out / "predictions").glob("*.png"))
    assert len(pngs) == 16
    assert cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).shape == (40, 62)  # the image's own size
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 48 and oof["dice"].between(0, 1).all()
    assert oof[["jaccard", "dice_pp", "jaccard_pp"]].stack().between(0, 1).all()
    assert "out-of-fold Dice" in results["predict.py"].stdout
    assert len(list((out / "oof_predictions").glob("*.png"))) == 48
    assert (out / "postprocess.json").is_file() and "post-processing: threshold" in results["make_submission.py"].stdout
    with gzip.open(out / "submission.csv.gz", "rt") as f:
        submission = pd.read_csv(f, dtype=str, keep_default_na=False)
    sample = pd.read_csv(tiny_dataset / "sample_submission.csv", dtype=str)
    assert submission["img"].tolist() == sample["img"].tolist()
    for path in ("train.yaml", "predict.yaml", "make_submission.yaml", "prepare_folds.yaml"):
        assert (out / "configs" / path).is_file()


@pytest.mark.slow
def test_submission_matches_the_prediction_pngs(pipeline_run):
    out, overrides, _ = pipeline_run
    from ternaus.analysis import resolve_postprocessing
    from ternaus.rle import rle_decode

    threshold, min_area, _ = resolve_postprocessing(load_config(None, overrides).postprocess, RunFiles.of(load_config(None, overrides)))  # searched by predict.py
    submission = pd.read_csv(out / "submission.csv.gz", dtype=str, keep_default_na=False)
    for name, rle in zip(submission["img"][:4], submission["rle_mask"][:4]):
        probs = cv2.imread(str(out / "predictions" / name.replace(".jpg", ".png")), cv2.IMREAD_UNCHANGED)
        mask = probs >= threshold * 255
        assert np.array_equal(rle_decode(rle, probs.shape), (mask if mask.sum() >= min_area else 0 * mask))
    assert check_submission(out / "submission.csv.gz", load_config(None, overrides)) == []


@pytest.mark.slow
def test_the_checker_reports_broken_submissions_line_by_line(pipeline_run, tmp_path):
    out, overrides, _ = pipeline_run
    cfg = load_config(None, overrides)
    good = pd.read_csv(out / "submission.csv.gz", dtype=str, keep_default_na=False)
    broken = good.copy()
    broken.loc[0, "rle_mask"] = "5 3 2 1"
    broken.loc[1, "rle_mask"] = "1 2 3"
    broken = pd.concat([broken.iloc[:-1], broken.iloc[[2]]])  # last image missing, third twice
    path = tmp_path / "broken.csv"
    broken.to_csv(path, index=False)
    problems = check_submission(path, cfg)
    text = "\n".join(problems)
    assert "line 2" in text and "do not increase" in text
    assert "line 3" in text and "odd number" in text
    assert f"{good['img'].iloc[-1]} is missing" in text
    assert f"{good['img'].iloc[2]} appears 2 times" in text
    result = run_stage("make_submission.py", *overrides, "--check", str(path))
    assert result.returncode == 1 and "problem(s)" in result.stdout


def test_stage_errors_are_messages_not_tracebacks(tmp_path):
    result = run_stage("train.py", f"output_dir={tmp_path}", "train.epoch=3")
    assert result.returncode == 2
    assert "unknown key 'train.epoch' (did you mean 'epochs'?)" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_stage("train.py", f"output_dir={tmp_path}")
    assert result.returncode == 2 and "run prepare_folds.py" in result.stderr


@pytest.mark.parametrize("rle, problem", [
    ("", None), ("1 5 10 2", None), ("5 1 3 2", "do not increase"), ("1 5 5 2", "overlapping"),
    ("0 3", "positive"), ("99 3", "past the end"), ("1 x", "integers"), ("1 2 3", "odd"),
])
def test_rle_checker(rle, problem):
    found = check_rle(rle, 100)
    assert found == problem if problem is None else problem in found


class Ramp(torch.nn.Module):
    """Logits that grow from left to right: not flip-invariant, so TTA must change them."""

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], x.shape[-1])
        return ramp + x[:, :1]


def test_flip_tta_unflips_before_averaging():
    runtime = Runtime(torch.device("cpu"), None, False)
    images = torch.zeros(2, 3, 4, 6)
    probs = tta_probabilities([Ramp()], images, runtime, "hflip")
    # sigmoid(r) and sigmoid(-r) average to exactly 0.5 for an antisymmetric ramp.
    assert torch.allclose(probs, torch.full_like(probs, 0.5))
    images[:, 0, :, 0] = 3.0  # a feature at the left edge must stay at the left edge
    probs = tta_probabilities([Ramp()], images, runtime, "hflip")
    assert (probs[..., 0] > 0.6).all() and (probs[..., -1] < 0.6).all()
    assert tta_inputs(images, "hflip").shape[0] == 4 and merge_tta(torch.rand(4, 1, 2, 2), "hflip").shape[0] == 2


def test_fold_average_and_uint8_rounding():
    runtime = Runtime(torch.device("cpu"), None, False)
    images = torch.zeros(1, 3, 2, 2)
    probs = tta_probabilities([lambda x: torch.zeros_like(x[:, :1]), lambda x: torch.full_like(x[:, :1], 100.0)],
                              images, runtime, "none")
    assert torch.allclose(probs, torch.full_like(probs, 0.75))
    assert to_uint8(torch.tensor([0.0, 0.5, 0.4999, 1.0])).tolist() == [0, 128, 127, 255]


@pytest.mark.slow
def test_evaluate_scores_the_submission_against_the_hidden_masks(pipeline_run, tiny_dataset):
    out, overrides, _ = pipeline_run
    from ternaus.evaluate import score_submission

    cfg = load_config(ROOT / "configs/synthetic.yaml", overrides)
    score = score_submission(cfg, out / "submission.csv.gz", tiny_dataset / "test_masks")["dice"]
    assert 0.0 <= score <= 1.0
    result = subprocess.run([sys.executable, "-m", "ternaus.evaluate", "--config", str(ROOT / "configs/synthetic.yaml"),
                             str(out / "submission.csv.gz"), str(tiny_dataset / "test_masks"), *overrides,
                             "--oof", str(out / "oof.csv")], cwd=ROOT, capture_output=True, text=True)
    assert f"submission dice (mean per image; Dice): {score:.4f}" in result.stdout, result.stderr
    assert "out-of-fold dice (mean per image, at postprocess.threshold): " in result.stdout


def test_evaluate_gives_one_for_the_truth_itself(tiny_dataset, tmp_path):
    """Carvana's format: the truth as mask GIFs, or as a train_masks.csv-like CSV; one image emptied costs its
    Dice (1 of 16 images with a car: 15/16)."""
    from ternaus.data.files import read_mask
    from ternaus.evaluate import score_submission
    from ternaus.rle import rle_encode

    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"data.root={tiny_dataset}"])
    names = sorted(p.name for p in (tiny_dataset / "test").iterdir())
    rles = [rle_encode(read_mask(tiny_dataset / "test_masks" / n.replace(".jpg", "_mask.gif"))) for n in names]
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(tmp_path / "truth.csv", index=False)
    assert score_submission(cfg, tmp_path / "truth.csv", tiny_dataset / "test_masks") == {"dice": 1.0}
    rles[0] = ""
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(tmp_path / "one_empty.csv", index=False)
    assert score_submission(cfg, tmp_path / "one_empty.csv", tiny_dataset / "test_masks")["dice"] == \
        pytest.approx(15 / 16)
    assert score_submission(cfg, tmp_path / "one_empty.csv", tmp_path / "truth.csv")["dice"] == pytest.approx(15 / 16)


def test_png_writer_keeps_a_bounded_queue_and_writes_atomically(tmp_path, monkeypatch):
    from ternaus.inference import PngWriter

    writer = PngWriter(threads=2)
    most = 0
    original = writer.pool.submit

    def submit(*args):
        nonlocal most
        most = max(most, len(writer.pending) + 1)
        return original(*args)

    monkeypatch.setattr(writer.pool, "submit", submit)
    for i in range(50):
        writer.submit(tmp_path / f"{i:02d}.png", np.full((8, 8), i, np.uint8))
    writer.close()
    assert most <= 4  # memory is bounded by the queue, not by the number of images
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == [f"{i:02d}.png" for i in range(50)]  # no temporary files left
    assert cv2.imread(str(written[7]), cv2.IMREAD_UNCHANGED).tolist() == np.full((8, 8), 7).tolist()
