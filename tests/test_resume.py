"""Issue 24, part B: folds are fixed once trained on, a resume honours every changed setting or refuses, the NaN
advice works as printed, and prediction at another input size than training is refused unless asked for.

One epoch of fold 0 of the tiny scratch U-Net at 32 x 32 is trained once (``trained_run``); each test works on a
clone of it in its own tmp_path."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_NET
from test_bad_input import clone_run

import ternaus.training as training
from ternaus.checkpoint import read_checkpoint
from ternaus.config import load_config
from ternaus.errors import ConfigError, DataError, TrainingError
from ternaus.inference import PredictionRun, check_checkpoints, predict
from ternaus.losses import SegmentationLoss
from ternaus.prepare import prepare_folds
from ternaus.run_files import RunFiles
from ternaus.training import train


def config(root: Path, out: Path, *overrides: str):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", *TINY_NET, "folds.n_folds=2",
                              "train.folds=[0]", "train.batch_size=4", "train.val_batch_size=8", "data.num_workers=0",
                              "train.lr=1.0e-3", "train.schedule=constant", "train.epochs=1", "train.log_every=2",
                              "train.tensorboard=false", "runtime.deterministic=true", "data.input_size=[32,32]",
                              *overrides])


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    cfg = config(tiny_dataset, out)
    prepare_folds(cfg)
    train(cfg)
    return out


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    return clone_run(trained_run, tmp_path / "run")


def log(out: Path) -> pd.DataFrame:
    return pd.read_csv(RunFiles(out).log(0))


# ---------------------------------------------------------------- a resume honours every setting


def test_a_resume_with_the_same_settings_ends_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    """The settings are taken from the configuration on every resume: unchanged, they are bit for bit the
    checkpoint's, and the weights, optimiser, schedule and best.pt come out as an uninterrupted run's."""
    straight = config(tiny_dataset, tmp_path / "straight", "train.epochs=2",
                      "train.schedule={name: step, gamma: 0.5, step_epochs: 1}")
    prepare_folds(straight)
    train(straight)
    shutil.copy2(RunFiles(tmp_path / "straight").last(0), tmp_path / "straight.pt")
    straight_one = config(tiny_dataset, tmp_path / "one", "train.epochs=1",
                          "train.schedule={name: step, gamma: 0.5, step_epochs: 1}")
    prepare_folds(straight_one)
    train(straight_one)
    train(config(tiny_dataset, tmp_path / "one", "train.epochs=2",
                 "train.schedule={name: step, gamma: 0.5, step_epochs: 1}"))
    a, b = read_checkpoint(tmp_path / "straight.pt"), read_checkpoint(RunFiles(tmp_path / "one").last(0))
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"] == b["scheduler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [row["lr"] for row in b["log"]] == [1e-3, 5e-4]
    best_a, best_b = (read_checkpoint(RunFiles(tmp_path / name).best(0)) for name in ("straight", "one"))
    assert (best_a["epoch"], best_a["best_score"], best_a["log"]) == (best_b["epoch"], best_b["best_score"],
                                                                      best_b["log"])
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])


def test_a_resume_with_a_lower_learning_rate_trains_at_it_and_the_log_shows_it(tiny_dataset, run, capsys):
    assert log(run)["lr"].tolist() == [1e-3]
    train(config(tiny_dataset, run, "train.epochs=2", "train.lr=1.0e-5"))
    out = capsys.readouterr().out
    assert "fold 0: train.lr 0.001 -> 1e-05 (changed since last.pt): applies from the end of epoch 1" in out
    assert log(run)["lr"].tolist() == [1e-3, 1e-5]
    last = read_checkpoint(RunFiles(run).last(0))
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [1e-5]
    assert last["scheduler"]["base_lrs"] == [1e-5] and last["config"]["train"]["lr"] == 1e-5


def test_a_changed_schedule_applies_from_the_resumed_epoch(tiny_dataset, run, capsys):
    """step, gamma 0.1 every epoch: epoch 2 (index 1) runs at lr * 0.1, as a run with this schedule from the start."""
    train(config(tiny_dataset, run, "train.epochs=2", "train.schedule={name: step, gamma: 0.1, step_epochs: 1}"))
    assert "train.schedule.name constant -> step" in capsys.readouterr().out
    assert log(run)["lr"].tolist() == pytest.approx([1e-3, 1e-4])


def test_another_optimiser_resumes_with_a_fresh_state_of_its_own(tiny_dataset, run, capsys):
    train(config(tiny_dataset, run, "train.epochs=2", "train.optimizer={name: sgd, momentum: 0.5}"))
    assert ("train.optimizer.name adam -> sgd (changed since last.pt): applies from the end of epoch 1; sgd starts "
            "with a fresh state (adam's does not carry over)") in capsys.readouterr().out
    groups = read_checkpoint(RunFiles(run).last(0))["optimizer"]
    assert groups["param_groups"][0]["momentum"] == 0.5
    assert all(set(s) == {"momentum_buffer"} for s in groups["state"].values())
    assert len(log(run)) == 2


def test_a_resume_names_only_what_changed_for_training(tiny_dataset, run, capsys):
    """More epochs is a change (named); settings training does not read (predict.*) are none."""
    train(config(tiny_dataset, run, "train.epochs=2", "predict.tta=none", "submission.processes=1"))
    changed = [line for line in capsys.readouterr().out.splitlines() if "changed since" in line]
    assert changed == ["fold 0: train.epochs 1 -> 2 (changed since last.pt): applies from the end of epoch 1"]


@pytest.mark.parametrize(("override", "expected"), [
    ("data.input_size=[64,64]", r"data.input_size: .*last.pt was trained with \[32, 32\], the config says \[64, 64\]; "
                                r"the weights were trained at that size: resume with data.input_size=\[32, 32\]; to go "
                                r"on at the new size, train a new run \(another output_dir\) with model.init="),
    ("folds.seed=7", r"folds.seed: .* was trained with 42, the config says 7; folds.csv fixes a trained run's split"),
    ("postprocess.metric=jaccard", r"best.pt and its best score were chosen by dice: resume with "
                                   r"postprocess.metric=dice, or start the fold over with train.resume=false"),
    ("model.init=pytorch", None),  # the weights come from last.pt: a note, not a refusal
])
def test_a_change_a_resume_cannot_honour_is_refused_by_name_before_anything_is_written(tiny_dataset, run, override,
                                                                                       expected, capsys):
    files = RunFiles(run)
    before = {p: p.read_bytes() for p in (files.last(0), files.log(0), files.config("train"))}
    if expected is None:
        train(config(tiny_dataset, run, "train.epochs=1", override))
        assert ("fold 0: model.init lecun -> pytorch (changed since last.pt): the weights come from the checkpoint; "
                "model.init applies to folds that start afresh") in capsys.readouterr().out
        return
    with pytest.raises(TrainingError, match=expected):
        train(config(tiny_dataset, run, "train.epochs=2", override))
    assert {p: p.read_bytes() for p in before} == before  # configs/train.yaml too: a refused run saves nothing


def test_another_network_is_still_refused_by_the_weights_check(tiny_dataset, run):
    with pytest.raises(Exception, match="last.pt was trained as ScratchUNet with 1 class"):
        train(config(tiny_dataset, run, "train.epochs=2", "model.num_classes=2"))


# ---------------------------------------------------------------- NaN: the advice works as printed


def test_the_nan_advice_resumes_from_the_last_good_checkpoint_at_the_lower_rate(tiny_dataset, run, capsys):
    """A real divergence, not a patched loss: epoch 2 at lr 1e30 blows up; the message's advice (lower train.lr,
    the same command) resumes from the epoch-1 checkpoint at the lower rate and finishes."""
    files = RunFiles(run)
    good = files.last(0).read_bytes()
    with pytest.raises(TrainingError, match="Lower train.lr, .* then run the same command to resume"):
        train(config(tiny_dataset, run, "train.epochs=2", "train.lr=1e30"))
    assert files.last(0).read_bytes() == good
    capsys.readouterr()
    train(config(tiny_dataset, run, "train.epochs=2", "train.lr=1e-4"))
    assert "train.lr 0.001 -> 0.0001" in capsys.readouterr().out  # the rate of the checkpoint kept
    assert log(run)["lr"].tolist() == [1e-3, 1e-4]
    assert pd.notna(log(run)["train_loss"]).all() and pd.notna(log(run)["val_dice"]).all()


def test_after_a_nan_inside_an_epoch_the_lower_rate_applies_from_the_step_kept(tiny_dataset, run, monkeypatch,
                                                                                capsys):
    real, calls = SegmentationLoss.forward, [0]

    def forward(self, logits, targets):
        calls[0] += 1
        loss = real(self, logits, targets)
        return loss * float("nan") if calls[0] == 3 else loss

    monkeypatch.setattr(SegmentationLoss, "forward", forward)
    with pytest.raises(TrainingError, match="epoch 2/2, step 3: the training loss became nan"):
        train(config(tiny_dataset, run, "train.epochs=2", "train.checkpoint_every=1"))
    monkeypatch.undo()
    train(config(tiny_dataset, run, "train.epochs=2", "train.checkpoint_every=1", "train.lr=1e-4"))
    assert "train.lr 0.001 -> 0.0001 (changed since last.pt): applies from epoch 2, step 2" in capsys.readouterr().out
    last = read_checkpoint(RunFiles(run).last(0))
    assert (last["epoch"], [g["lr"] for g in last["optimizer"]["param_groups"]]) == (2, [1e-4])


def test_a_state_with_an_infinite_batchnorm_variance_is_never_written(tiny_dataset, run, monkeypatch):
    """The loss stays finite (training normalises by the batch's statistics), the running variance does not: the
    step's checkpoint is refused and the previous one kept."""
    real, calls = training.train_step, [0]

    def train_step(state, *args, **kwargs):
        loss = real(state, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:
            batchnorm = next(m for m in state.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            batchnorm.running_var.fill_(float("inf"))
        return loss

    monkeypatch.setattr(training, "train_step", train_step)
    with pytest.raises(TrainingError, match=r"fold 0 at epoch 2, step 2: .*running_var hold NaN or infinite values, "
                                            r"so last.pt is not written\. Training stopped; the last good checkpoint "
                                            r"is kept\. Lower train.lr"):
        train(config(tiny_dataset, run, "train.epochs=2", "train.checkpoint_every=1"))
    kept = read_checkpoint(RunFiles(run).last(0))
    assert (kept["epoch"], kept["step"]) == (1, 1)
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_a_checkpoint_with_non_finite_tensors_is_no_checkpoint_to_resume_from(tiny_dataset, run):
    files = RunFiles(run)
    ckpt = read_checkpoint(files.last(0))
    key = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("inf"))
    files.last(0).unlink()
    torch.save(ckpt, files.last(0))
    with pytest.raises(TrainingError, match=f"last.pt holds NaN or infinite values \\(model.{key}\\)"):
        train(config(tiny_dataset, run, "train.epochs=2"))


# ---------------------------------------------------------------- folds are fixed once trained on


def folds_csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(RunFiles(out).folds_csv, dtype={"id": str})


def test_prepare_folds_refuses_a_new_split_of_a_trained_run_and_keeps_the_same_one(tiny_dataset, run, capsys):
    before = RunFiles(run).folds_csv.read_bytes()
    for other in ("folds.n_folds=3", "folds.group_by=none"):
        with pytest.raises(DataError, match=r"folds.csv: these settings split the images otherwise than 1 trained "
                                            r"fold\(s\) of this run were trained on .*fold_0/last.pt.* start a new run "
                                            r"with another output_dir, or remove .*fold_0 to train those folds again"):
            prepare_folds(config(tiny_dataset, run, other))
        assert RunFiles(run).folds_csv.read_bytes() == before
    prepare_folds(config(tiny_dataset, run))  # the run's own settings: the same split, written again
    assert RunFiles(run).folds_csv.read_bytes() == before
    shutil.rmtree(RunFiles(run).fold_dir(0))
    prepare_folds(config(tiny_dataset, run, "folds.n_folds=3"))  # no trained fold left: a new split is fine
    assert sorted(folds_csv(run)["fold"].unique()) == [0, 1, 2]


def resplit(out: Path) -> None:
    """folds.csv edited by hand (or copied from another run): whole cars moved between the folds."""
    table = folds_csv(out)
    cars = sorted(table["car_id"].unique())
    table["fold"] = [cars.index(car) % 2 for car in table["car_id"]]
    table["fold"] = 1 - table["fold"] if (table["fold"] == folds_csv(out)["fold"]).all() else table["fold"]
    table.to_csv(RunFiles(out).folds_csv, index=False)


def test_a_resume_on_another_split_is_refused(tiny_dataset, run):
    resplit(run)
    with pytest.raises(TrainingError, match=r"last.pt was trained on another split than fold 0 of folds.csv gives "
                                            r"now .* Put back the folds.csv it was trained on"):
        train(config(tiny_dataset, run, "train.epochs=2"))


def test_out_of_fold_scores_refuse_a_checkpoint_of_another_split(tiny_dataset, run):
    resplit(run)
    with pytest.raises(TrainingError, match="best.pt was trained on another split than fold 0 of folds.csv"):
        predict(config(tiny_dataset, run))
    assert not RunFiles(run).oof_csv.exists() and not list(RunFiles(run).predictions.glob("*.png"))


def test_a_folds_csv_that_splits_a_car_is_refused_by_train(tiny_dataset, run):
    table = folds_csv(run)
    car = table["car_id"].iloc[0]
    rows = table.index[table["car_id"] == car]
    table.loc[rows[:2], "fold"] = 1 - table.loc[rows[0], "fold"]
    table.to_csv(RunFiles(run).folds_csv, index=False)
    with pytest.raises(DataError, match=r"folds.csv: 1 car_id value\(s\) lie in more than one fold"):
        train(config(tiny_dataset, run, "train.resume=false"))


@pytest.mark.parametrize("how", ["group_by=none", "from_file keyed by image"])
def test_splitting_a_cars_views_across_folds_is_warned_about(tiny_dataset, tmp_path, capsys, how):
    out = tmp_path / "run"
    if how == "group_by=none":
        cfg = config(tiny_dataset, out, "folds.group_by=none")
    else:
        ids = sorted(p.stem for p in (tiny_dataset / "train").glob("*.jpg"))
        pd.DataFrame({"id": ids, "fold": [k % 2 for k in range(len(ids))]}).to_csv(tmp_path / "f.csv", index=False)
        cfg = config(tiny_dataset, out, "folds.group_by=none", f"folds.from_file={tmp_path / 'f.csv'}")
    prepare_folds(cfg)
    err = capsys.readouterr().err
    assert "warning: 3 car(s) of 3 have views in more than one fold" in err
    assert "Use folds.group_by=car" in err


# ---------------------------------------------------------------- prediction at another input size


def test_prediction_at_another_input_size_is_refused_unless_asked_for(tiny_dataset, run):
    files = RunFiles(run)
    paths = {0: files.best(0)}
    cfg = config(tiny_dataset, run, "data.input_size=[64,64]")
    with pytest.raises(ConfigError, match=r"data.input_size: .*best.pt was trained at \[32, 32\], the config predicts "
                                          r"at \[64, 64\]; set data.input_size=\[32, 32\], or "
                                          r"predict.allow_other_input_size=true"):
        check_checkpoints(PredictionRun.from_config(cfg), paths, None)
    with pytest.raises(ConfigError, match=r"predicts at full resolution \(null\)"):
        predict(config(tiny_dataset, run, "data.input_size=null"))
    assert not list(files.predictions.glob("*.png"))
    allowed = config(tiny_dataset, run, "data.input_size=[64,64]", "predict.allow_other_input_size=true")
    check_checkpoints(PredictionRun.from_config(allowed), paths, None)
    check_checkpoints(PredictionRun.from_config(config(tiny_dataset, run)), paths, None)
