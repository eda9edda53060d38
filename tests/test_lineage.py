"""Every output knows what it was made from (issue 24, docs/reliability.md "Lineage"): a rerun of predict.py redoes
exactly the stale PNGs, and make_submission.py, ensemble.py, report.py and ternaus.evaluate refuse an output whose
record disagrees with the checkpoints, data or members there now, naming what changed and what to run again.
Also: nothing written over what a stage did not make (export.py --out, make_submission.py), ensemble weights,
and the evaluation's refusals.

The cases that need a trained run work on clones of the session's tiny run (conftest.tiny_run: prepare, one
epoch of fold 0, predict) with a submission added, as tests/test_hostile.py does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import conftest
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import ensemble
import export
import make_submission
import predict
import report
from ternaus.config import load_config
from ternaus.errors import ConfigError, DataError
from ternaus.evaluate import main as evaluate_main
from ternaus.evaluate import score_submission
from ternaus.fixtures.carvana import generate
from ternaus.io import atomic_write
from ternaus.lineage import content_fingerprint, prediction_problems
from ternaus.merge import weighted_mean
from ternaus.predictions import keep_or_redo
from ternaus.rle import rle_encode
from ternaus.data.files import read_mask
from test_bad_input import clone_run
from test_hostile import refusal

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")
TINY = [*conftest.TINY, "submission.processes=1"]


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"data.root={root}", f"output_dir={out}", *TINY, *extra]


def pngs(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each PNG's bytes and inode: a PNG kept is the very file, one predicted again is a new one."""
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def done(tiny_run, tiny_dataset, tmp_path_factory) -> Path:
    """The session's tiny run with its submission: test and out-of-fold predictions, postprocess.json."""
    out = clone_run(tiny_run, tmp_path_factory.mktemp("lineage") / "run")
    assert make_submission.main(args(tiny_dataset, out)) == 0
    return out


@pytest.fixture(scope="module")
def full(done, tiny_dataset, tmp_path_factory) -> Path:
    """The tiny run with an out-of-fold map of every training image, as an ensemble's CV needs (the tiny run
    trains fold 0 only: fold 1's images get a copy of one of fold 0's maps; no record lists those PNGs)."""
    out = clone_run(done, tmp_path_factory.mktemp("full") / "run")
    some = next((out / "oof_predictions").glob("*.png")).read_bytes()
    for image in (tiny_dataset / "train").glob("*.jpg"):
        target = out / "oof_predictions" / f"{image.stem}.png"
        if not target.exists():
            target.write_bytes(some)
    return out


@pytest.fixture
def clone(done, tmp_path) -> Path:
    return clone_run(done, tmp_path / "run")


@pytest.fixture
def data(tiny_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


@pytest.fixture(scope="module")
def resized(tmp_path_factory) -> Path:
    """The tiny dataset's ids (same seed) at another size: 94 x 60 instead of 62 x 40."""
    return generate(tmp_path_factory.mktemp("resized") / "synthetic", cars=3, test_cars=1, size=(94, 60), seed=1)


def retrain(checkpoint: Path) -> None:
    """A fold trained again: a new best.pt (other weights), written as train.py writes it (a new file)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = state["model"] if "model" in state else state
    first = next(k for k, v in model.items() if v.is_floating_point())
    model[first] = model[first] + 0.5
    atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))


def change_image(path: Path) -> None:
    """Another picture under the same name and size (the same JPEG, flipped)."""
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), image[::-1].copy())


# ================================================================ the record and predict.py's redo


def test_the_content_fingerprint_is_the_size_and_both_ends(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"abc")
    big.write_bytes(bytes(200_000))
    before = content_fingerprint(big)
    assert content_fingerprint(small).startswith("3:") and before.startswith("200000:")
    middle = bytearray(200_000)
    middle[100_000] = 1  # the middle is not hashed: the size and both ends are what is cheap on 100k images
    big.write_bytes(bytes(middle))
    assert content_fingerprint(big) == before
    big.write_bytes(bytes(199_999) + b"\x01")  # the end
    assert content_fingerprint(big) != before
    assert content_fingerprint(tmp_path / "none") is None


def test_keep_or_redo_redoes_exactly_the_ids_whose_input_changed(tmp_path):
    inputs = {"a": "1:x", "b": "1:y", "c": "1:z"}
    assert keep_or_redo(tmp_path, ["a", "b", "c"], {"m": 1}, True, ".predict.json", inputs,
                        {"stage": "predict"}) == set()
    for name in ("a", "b", "c"):  # written by the writer that recorded them
        (tmp_path / f"{name}.png").write_bytes(b"png" + bytes(8) + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    kept = keep_or_redo(tmp_path, ["a", "b", "c"], {"m": 1}, True, ".predict.json", {**inputs, "b": "2:y"})
    assert kept == {"a", "c"} and not (tmp_path / "b.png").exists()
    assert prediction_problems(tmp_path, ["a", "c"], {"a": "1:x", "c": "1:z"}) == []
    problems = prediction_problems(tmp_path, ["a", "c"], {"a": "1:x", "c": "9:z"})
    assert len(problems) == 1 and "1 of the 2 test image(s)" in problems[0] and "c" in problems[0]


@pytest.mark.slow
def test_a_changed_test_image_is_refused_by_make_submission_and_predicted_again_alone(data, done, tmp_path, capsys):
    run = clone_run(done, tmp_path / "run")
    assert predict.main(args(data, run, "predict.oof=false")) == 0  # the record of this data
    capsys.readouterr()
    before, submission = pngs(run / "predictions"), (run / "submission.csv.gz").read_bytes()
    changed = sorted((data / "test").glob("*.jpg"))[3]
    change_image(changed)
    refusal(capsys, make_submission.main(args(data, run)), "are stale, so make_submission.py does not use them",
            "1 of the 16 test image(s)", changed.stem, "Run predict.py again")
    assert (run / "submission.csv.gz").read_bytes() == submission

    assert predict.main(args(data, run, "predict.oof=false")) == 0
    out = capsys.readouterr().out
    assert "removing 1 earlier predictions" in out and "15 of 16 predictions were already written" in out
    after = pngs(run / "predictions")
    redone = [name for name in before if after[name][1] != before[name][1]]
    assert redone == [f"{changed.stem}.png"] and after[redone[0]][0] != before[redone[0]][0]
    assert make_submission.main(args(data, run)) == 0


@pytest.mark.slow
def test_another_data_root_with_the_same_ids_at_another_size(resized, clone, tiny_dataset, capsys):
    # The attack: "16 of 16 predictions were already written ...", and RLEs of the wrong size submitted.
    refusal(capsys, make_submission.main(args(resized, clone)), "16 of the 16 test image(s)",
            "changed, or data.root points at other files")
    assert predict.main(args(resized, clone, "predict.oof=false")) == 0
    out = capsys.readouterr().out
    assert "removing 16 earlier predictions" in out and "already written" not in out
    assert {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in (clone / "predictions").glob("*.png")} == {(60, 94)}
    # Back on the first data: every PNG is stale again, and the submission made for the other size is kept.
    submission = (clone / "submission.csv.gz").read_bytes()
    refusal(capsys, make_submission.main(args(tiny_dataset, clone, "--threshold", "0.5", "--min-area", "0")),
            "16 of the 16 test image(s)")
    assert (clone / "submission.csv.gz").read_bytes() == submission


@pytest.mark.slow
def test_a_single_retrained_fold_is_caught_by_every_reader(done, tiny_dataset, tmp_path, capsys):
    run = clone_run(done, tmp_path / "run")
    retrain(run / "fold_0" / "best.pt")
    refusal(capsys, make_submission.main(args(tiny_dataset, run)), "fold 0's checkpoint",
            "changed since (a fold trained again?)", "Run predict.py again")
    refusal(capsys, report.main(args(tiny_dataset, run)), "out-of-fold files", "fold 0's checkpoint",
            "since the out-of-fold pass", "Run predict.py again")
    code = evaluate_main(["--config", CONFIG, str(run / "submission.csv.gz"), str(tiny_dataset / "test_masks"),
                          f"data.root={tiny_dataset}", "--oof", str(run / "oof.csv")])
    refusal(capsys, code, "ternaus.evaluate --oof does not use them", "fold 0's checkpoint")
    # predict.py redoes every PNG (the models changed) and the out-of-fold files: then everything reads again.
    assert predict.main(args(tiny_dataset, run)) == 0
    assert "removing 16 earlier predictions" in capsys.readouterr().out
    assert make_submission.main(args(tiny_dataset, run)) == 0
    assert report.main(args(tiny_dataset, run)) == 0


def test_a_deleted_checkpoint_and_a_stopped_out_of_fold_phase_are_refused(clone, tiny_dataset, capsys):
    (clone / "oof_lineage.json").write_text(json.dumps({"complete": False}))
    refusal(capsys, report.main(args(tiny_dataset, clone)), "did not finish (stopped part-way)")
    refusal(capsys, make_submission.main(args(tiny_dataset, clone)), "did not finish")
    (clone / "fold_0" / "best.pt").unlink()
    refusal(capsys, make_submission.main(args(tiny_dataset, clone, "--threshold", "0.5", "--min-area", "0")),
            "fold 0's checkpoint", "no longer exists")


@pytest.mark.slow
def test_changed_training_data_is_caught_by_the_out_of_fold_readers(data, done, tmp_path, capsys):
    run = clone_run(done, tmp_path / "run")
    assert predict.main(args(data, run)) == 0  # this copy of the data's record
    capsys.readouterr()
    image = sorted((data / "train").glob("*.jpg"))[5]
    change_image(image)
    refusal(capsys, report.main(args(data, run)), "1 training image(s) or mask(s) changed", image.stem)
    refusal(capsys, make_submission.main(args(data, run)), "1 training image(s) or mask(s) changed")
    # With its own threshold the submission does not read the out-of-fold files: the test PNGs are current.
    assert make_submission.main(args(data, run, "--threshold", "0.5", "--min-area", "0")) == 0


# ================================================================ ensembles


def ensemble_args(root: Path, out: Path, members: list[dict], *extra: str) -> list[str]:
    listed = yaml.safe_dump(members, default_flow_style=True).strip()
    return ["--config", CONFIG, f"data.root={root}", f"output_dir={out}", f"ensemble.members={listed}",
            "predict.writer_threads=2", "submission.processes=1", *extra]


@pytest.mark.slow
def test_a_re_predicted_member_makes_the_merge_stale(full, tiny_dataset, tmp_path, capsys):
    a, b = clone_run(full, tmp_path / "a"), clone_run(full, tmp_path / "b")
    members = [{"run": str(a), "weight": 1}, {"run": str(b), "weight": 1}]
    ens = tmp_path / "ens"
    assert ensemble.main(ensemble_args(tiny_dataset, ens, members)) == 0
    assert make_submission.main(ensemble_args(tiny_dataset, ens, members)) == 0
    submission = (ens / "submission.csv.gz").read_bytes()
    assert predict.main(args(tiny_dataset, b, "predict.tta=none", "predict.oof=false")) == 0
    capsys.readouterr()
    refusal(capsys, make_submission.main(ensemble_args(tiny_dataset, ens, members, "--threshold", "0.5")),
            "member b: its predictions in", "were made again", "Run ensemble.py again")
    assert (ens / "submission.csv.gz").read_bytes() == submission
    # The merge redone without its CV: postprocess.json belongs to the old merge, so it is refused until the
    # threshold and minimum area are given.
    assert ensemble.main(ensemble_args(tiny_dataset, ens, members, "ensemble.oof=false")) == 0
    assert "removing 16 earlier predictions" in capsys.readouterr().out
    refusal(capsys, make_submission.main(ensemble_args(tiny_dataset, ens, members)), "postprocess.json was searched")
    assert make_submission.main(ensemble_args(tiny_dataset, ens, members, "--threshold", "0.5", "--min-area", "0")) == 0


@pytest.mark.slow
def test_a_member_whose_test_image_changed_is_refused_by_ensemble_and_by_the_merge(data, done, tmp_path, capsys):
    a, b = clone_run(done, tmp_path / "a"), clone_run(done, tmp_path / "b")
    for run in (a, b):
        assert predict.main(args(data, run, "predict.oof=false")) == 0
    members = [{"run": str(a)}, {"run": str(b)}]
    ens = tmp_path / "ens"
    assert ensemble.main(ensemble_args(data, ens, members, "ensemble.oof=false")) == 0
    changed = sorted((data / "test").glob("*.jpg"))[0]
    change_image(changed)
    capsys.readouterr()
    refusal(capsys, ensemble.main(ensemble_args(data, ens, members, "ensemble.oof=false")), "a: 1 of the 16",
            "b: 1 of the 16", changed.stem)
    refusal(capsys, make_submission.main(ensemble_args(data, ens, members, "--threshold", "0.5")), changed.stem,
            "member a: 1 of the 16")


def test_a_run_listed_twice_or_through_a_symlink_is_refused_as_listed_twice(done, tiny_dataset, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(done)
    for second in (str(done), str(link), f"{done}/../{done.name}"):
        members = [{"run": str(done), "name": "a"}, {"run": second, "name": "b"}]
        refusal(capsys, ensemble.main(ensemble_args(tiny_dataset, tmp_path / "ens", members)),
                "ensemble.members[1]", "already lists", "list each run once")
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("weights, words", [((1e308, 1e308), "add up to more than the largest float"),
                                            ((1e308, 1e308, 1), "add up to more than the largest float"),
                                            ((0, 0), "add up to 0")])
def test_ensemble_weights_that_overflow_or_vanish_are_refused_with_the_key(done, tiny_dataset, tmp_path, capsys,
                                                                          weights, words):
    members = [{"run": str(clone_run(done, tmp_path / f"m{k}")), "weight": w} for k, w in enumerate(weights)]
    refusal(capsys, ensemble.main(ensemble_args(tiny_dataset, tmp_path / "ens", members)), "ensemble.members", words)


@pytest.mark.parametrize("weight", [".nan", ".inf", "-1"])
def test_non_finite_and_negative_weights_are_refused_by_the_config(weight):
    with pytest.raises(ConfigError, match=r"ensemble.members\[0\].weight"):
        load_config(None, [f"ensemble.members=[{{run: a, weight: {weight}}}]"])


def test_the_weighted_mean_refuses_weights_that_would_empty_the_map():
    maps = [np.full((2, 2), 200, np.uint8)] * 2
    for weights in ([float("nan"), 1], [float("inf"), 1], [1e308, 1e308], [-1, 2], [0, 0]):
        with pytest.raises(ValueError, match="finite"):
            weighted_mean(maps, weights)
    assert weighted_mean(maps, [1e300, 1e300]).tolist() == [[200, 200], [200, 200]]


@pytest.mark.slow
def test_an_ensemble_over_a_member_of_other_size_out_of_fold_maps_is_a_message(full, tiny_dataset, resized,
                                                                              tmp_path, capsys):
    a, b = clone_run(full, tmp_path / "a"), clone_run(full, tmp_path / "b")
    members = [{"run": str(a)}, {"run": str(b)}]
    # A member's out-of-fold map of another size (written by hand: no record says so).
    first = sorted((b / "oof_predictions").glob("*.png"))[0]
    cv2.imwrite(str(first), np.zeros((60, 94), np.uint8))
    refusal(capsys, ensemble.main(ensemble_args(tiny_dataset, tmp_path / "ens", members)),
            "1 out-of-fold prediction(s) are not at their training image's size", "b: ", first.name)
    # A member predicted on the same ids at another size (its record says so).
    shutil.rmtree(b)
    b = clone_run(full, tmp_path / "b")
    assert predict.main(args(resized, b)) == 0
    capsys.readouterr()
    refusal(capsys, ensemble.main(ensemble_args(tiny_dataset, tmp_path / "ens", members)),
            "the members' PNGs are (height, width) {'a': (40, 62), 'b': (60, 94)}")
    # Its out-of-fold files too, through their record, with the test set left out of it (b alone, on its test set).
    only_b = ensemble_args(tiny_dataset, tmp_path / "ens", [{"run": str(b)}], f"data.test_dir={resized}/test",
                           f"data.sample_submission={resized}/sample_submission.csv")
    refusal(capsys, ensemble.main(only_b), "ensemble.py (member b)", "training image(s) or mask(s) changed")


# ================================================================ nothing written over what a stage did not make


@pytest.mark.slow
def test_export_out_refuses_a_folder_the_runs_own_files_and_what_it_did_not_write(clone, tiny_dataset, tmp_path,
                                                                                   capsys):
    export_args = [*args(tiny_dataset, clone), "--checkpoint", str(clone / "fold_0" / "best.pt"), "--format", "onnx"]
    before = {p: p.read_bytes() for p in clone.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    folder = tmp_path / "exports"
    folder.mkdir()
    refusal(capsys, export.main([*export_args, "--out", str(folder)]), "is a folder; name the file to write")
    for own in ("folds.csv", "configs/predict.yaml", "fold_0/last.pt", "fold_0/log.csv", "oof.csv",
                "postprocess.json", "predictions/x.onnx", "fold_1/best.pt"):
        refusal(capsys, export.main([*export_args, "--out", str(clone / own)]), f"--out {clone / own}",
                "export.py replaces only its own exports")
    stranger = tmp_path / "notes.txt"
    stranger.write_text("mine")
    refusal(capsys, export.main([*export_args, "--out", str(stranger)]), "exists and is not an export")
    after = {p: p.read_bytes() for p in clone.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == before and stranger.read_text() == "mine"
    # An earlier export is replaced: export.py wrote it.
    target = clone / "fold_0" / "model.onnx"
    target.write_bytes(b"an earlier export")
    assert export.main([*export_args, "--out", str(target)]) == 0
    assert target.read_bytes() != b"an earlier export"


def test_make_submission_refuses_wrong_size_pngs_before_replacing_the_good_submission(clone, tiny_dataset, capsys):
    submission = (clone / "submission.csv.gz").read_bytes()
    first = sorted((clone / "predictions").glob("*.png"))[0]
    cv2.imwrite(str(first), np.zeros((48, 64), np.uint8))  # as a prediction at another size would be
    refusal(capsys, make_submission.main(args(tiny_dataset, clone)), "1 of 16 predictions are not at their test "
            "image's size", first.name, "(48, 64)", "(40, 62)")
    assert (clone / "submission.csv.gz").read_bytes() == submission


def test_a_submission_failing_its_check_leaves_the_previous_one(clone, tiny_dataset, capsys, monkeypatch):
    import ternaus.submission as submission_module

    submission = (clone / "submission.csv.gz").read_bytes()
    monkeypatch.setattr(submission_module, "submission_problems", lambda path, fmt, source: [f"{path}: broken"])
    refusal(capsys, make_submission.main(args(tiny_dataset, clone)), "so it was not written (the previous one is "
            "kept)", f"{clone / 'submission.csv.gz'}: broken")
    assert (clone / "submission.csv.gz").read_bytes() == submission
    assert not [p for p in clone.iterdir() if ".tmp" in p.name]


# ================================================================ the evaluation refuses what it cannot score right


def truth_submission(root: Path, path: Path, ids: list[str] | None = None) -> list[str]:
    """The hidden test masks as a submission (of ``ids``, default all): scores 1."""
    names = sorted(p.name for p in (root / "test").iterdir())
    names = [n for n in names if ids is None or Path(n).stem in ids]
    rles = [rle_encode(read_mask(root / "test_masks" / n.replace(".jpg", "_mask.gif"))) for n in names]
    pd.DataFrame({"img": names, "rle_mask": rles}).to_csv(path, index=False)
    return names


def synthetic(root: Path):
    return load_config(CONFIG, [f"data.root={root}"])


def test_evaluate_refuses_a_truth_mask_of_another_size(data, tmp_path):
    truth_submission(data, tmp_path / "perfect.csv")
    mask = sorted((data / "test_masks").glob("*.gif"))[2]
    from PIL import Image

    Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"1 true mask\(s\) in .* are not the size of their image") as err:
        score_submission(synthetic(data), tmp_path / "perfect.csv", data / "test_masks")
    assert mask.name in str(err.value) and "(48, 64)" in str(err.value)


def test_evaluate_refuses_repeated_rows_in_the_submission_and_the_truth(tiny_dataset, tmp_path):
    names = truth_submission(tiny_dataset, tmp_path / "perfect.csv")
    table = pd.read_csv(tmp_path / "perfect.csv", dtype=str, keep_default_na=False)
    pd.concat([table, table.iloc[[3]]]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(DataError, match=rf"the submission .*twice.csv lists 1 key\(s\) more than once.*{names[3]}"):
        score_submission(synthetic(tiny_dataset), tmp_path / "twice.csv", tiny_dataset / "test_masks")
    with pytest.raises(DataError, match=r"the truth .*twice.csv lists 1 key\(s\) more than once"):
        score_submission(synthetic(tiny_dataset), tmp_path / "perfect.csv", tmp_path / "twice.csv")


def test_evaluate_refuses_ids_missing_from_the_truth_unless_asked_for_a_subset(tiny_dataset, tmp_path, capsys):
    names = truth_submission(tiny_dataset, tmp_path / "perfect.csv")
    half = truth_submission(tiny_dataset, tmp_path / "half.csv", [Path(n).stem for n in names[:8]])
    cfg = synthetic(tiny_dataset)
    with pytest.raises(DataError, match=r"has no row for 8 of 16 image\(s\).*--subset"):
        score_submission(cfg, tmp_path / "perfect.csv", tmp_path / "half.csv")
    with pytest.raises(DataError, match=r"the submission has no row for 8 of 16 key\(s\).*--subset"):
        score_submission(cfg, tmp_path / "half.csv", tmp_path / "perfect.csv")
    assert score_submission(cfg, tmp_path / "perfect.csv", tmp_path / "half.csv", subset=True) == {"dice": 1.0}
    assert "--subset: scoring 8 of the 16 key(s)" in capsys.readouterr().out
    code = evaluate_main(["--config", CONFIG, str(tmp_path / "half.csv"), str(tiny_dataset / "test_masks"),
                          f"data.root={tiny_dataset}", "--subset"])
    out = capsys.readouterr().out
    assert code == 0 and "scoring 8 of the 16" in out and "submission dice (mean per image; Dice): 1.0000" in out
    assert len(half) == 8


@pytest.mark.slow
def test_evaluate_oof_reads_an_ensembles_cv_table(full, tiny_dataset, tmp_path, capsys):
    members = [{"run": str(full), "name": "only"}]
    ens = tmp_path / "ens"
    assert ensemble.main(ensemble_args(tiny_dataset, ens, members)) == 0
    truth_submission(tiny_dataset, tmp_path / "perfect.csv")
    capsys.readouterr()
    code = evaluate_main(["--config", CONFIG, str(tmp_path / "perfect.csv"), str(tiny_dataset / "test_masks"),
                          f"data.root={tiny_dataset}", "--oof", str(ens / "ensemble_cv.csv")])
    out = capsys.readouterr().out
    assert code == 0, out
    cv = pd.read_csv(ens / "ensemble_cv.csv")
    assert f"  only: {cv['cv'].iloc[0]:.4f}" in out and f"  ensemble: {cv['cv'].iloc[-1]:.4f}" in out
    # Member retrained since: the ensemble's out-of-fold files are refused through the member's record.
    retrain_run = clone_run(full, tmp_path / "retrained")
    members = [{"run": str(retrain_run), "name": "only"}]
    assert ensemble.main(ensemble_args(tiny_dataset, tmp_path / "ens2", members)) == 0
    retrain(retrain_run / "fold_0" / "best.pt")
    capsys.readouterr()
    code = evaluate_main(["--config", CONFIG, str(tmp_path / "perfect.csv"), str(tiny_dataset / "test_masks"),
                          f"data.root={tiny_dataset}", "--oof", str(tmp_path / "ens2" / "ensemble_cv.csv")])
    refusal(capsys, code, "member only: fold 0's checkpoint", "Run ensemble.py again")


# ================================================================ report.py on other data


def test_report_with_a_data_root_of_other_ids_is_a_message(clone, tmp_path, capsys):
    other = generate(tmp_path / "other", cars=3, test_cars=1, size=(62, 40), seed=2)
    refusal(capsys, report.main(args(other, clone)), "out-of-fold files", "not in the training set now")
    (clone / "oof_lineage.json").unlink()  # a run made before the record: checked by id
    refusal(capsys, report.main(args(other, clone)), "oof.csv scores", "not in the training set of data.root")


def test_report_over_other_size_out_of_fold_pngs_is_a_message(clone, tiny_dataset, resized, capsys):
    for png in (clone / "oof_predictions").glob("*.png"):
        cv2.imwrite(str(png), np.zeros((60, 94), np.uint8))
    refusal(capsys, report.main(args(tiny_dataset, clone)), "is (height, width) (60, 94)", "(40, 62)",
            "made on other data")
