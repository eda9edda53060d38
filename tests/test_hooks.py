"""The training loop's hooks (ternaus/hooks.py): the EMA of the weights and TensorBoard, their place in the
checkpoints, and resuming with them."""

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import TINY_NET
from torch import nn

from ternaus.checkpoint import read_checkpoint
from ternaus.config import load_config
from ternaus.errors import ConfigError
from ternaus.hooks import EmaHook, TensorBoardHook
from ternaus.prepare import prepare_folds
from ternaus.run_files import RunFiles
from ternaus.training import train

# Resized to 32 x 32: what the hooks do does not depend on the geometry.
SMALL = ("data.input_size=[32,32]",)


def config(root, out, *overrides):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", *TINY_NET, "folds.n_folds=2",
                              "train.folds=[0]", "train.batch_size=4", "train.val_batch_size=8", "data.num_workers=0",
                              "train.lr=1.0e-3", "train.log_every=2", "runtime.deterministic=true", *SMALL, *overrides])


def trained(root, out, *overrides) -> Path:
    cfg = config(root, out, *overrides)
    prepare_folds(cfg)
    train(cfg)
    return out


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


# ---------------------------------------------------------------- the EMA


def linear_with_batchnorm(weight: float, mean: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    set_weights(model, weight, mean)
    return model


def set_weights(model: nn.Module, weight: float, mean: float) -> None:
    with torch.no_grad():
        model[0].weight.fill_(weight)
        model[1].running_mean.fill_(mean)


def test_the_ema_copies_the_first_step_then_averages_weights_and_batchnorm_statistics():
    model = linear_with_batchnorm(1.0, 0.0)
    state = SimpleNamespace(model=model, hooks=[])
    hook = EmaHook(decay=0.5)
    hook.on_fit_start(state)
    averaged = []
    for weight, mean in ((3.0, 10.0), (5.0, 20.0), (1.0, 0.0)):
        set_weights(model, weight, mean)
        hook.on_step_end(state, torch.tensor(0.0))
        average = hook.evaluated(model)
        averaged.append((average[0].weight.item(), average[1].running_mean.item()))
    # Step 1 copies; then ema = 0.5 ema + 0.5 w: (3 + 5) / 2 = 4, (4 + 1) / 2 = 2.5; the running means alike.
    assert averaged == [(3.0, 10.0), (4.0, 15.0), (2.5, 7.5)]
    assert hook.evaluated(model) is not model and model[0].weight.item() == 1.0  # the model trains on untouched

    # Its state, loaded before the fold starts (as a resume does), continues the same average.
    saved = hook.state_dict()
    assert int(saved["n_averaged"]) == 3 and saved["module.0.weight"].item() == 2.5
    again = EmaHook(decay=0.5)
    again.load_state_dict({k: v.clone() for k, v in saved.items()})
    again.on_fit_start(SimpleNamespace(model=linear_with_batchnorm(7.0, 7.0), hooks=[]))
    for each in (hook, again):
        set_weights(model, 0.5, 1.5)
        each.on_step_end(SimpleNamespace(model=model, hooks=[]), torch.tensor(0.0))
    assert hook.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in hook.state_dict().items())
    assert hook.evaluated(model)[0].weight.item() == 1.5  # (2.5 + 0.5) / 2


def test_the_ema_decay_must_lie_strictly_between_0_and_1():
    assert load_config(None).train.ema.decay == 0.999 and not load_config(None).train.ema.enabled
    for decay in ("0", "1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=rf"train.ema.decay: must lie in \(0, 1\).*got {float(decay)}"):
            load_config(None, [f"train.ema.decay={decay}"])


def test_best_pt_holds_the_ema_weights_and_predict_loads_them(tiny_dataset, tmp_path):
    from ternaus.inference import checkpoint_paths, load_fold_models
    from ternaus.runtime import Runtime

    out = trained(tiny_dataset, tmp_path, "train.epochs=1", "train.ema.enabled=true", "train.ema.decay=0.5")
    best, last = (read_checkpoint(out / "fold_0" / name) for name in ("best.pt", "last.pt"))
    ema = last["hooks"]["ema"]
    assert int(ema["n_averaged"]) == 4  # one epoch of 4 optimiser steps
    # One epoch: best.pt and last.pt were written at the same moment.
    assert best["model"].keys() == last["model"].keys()
    assert all(torch.equal(tensor, ema[f"module.{key}"]) for key, tensor in best["model"].items())
    assert not all(torch.equal(tensor, last["model"][key]) for key, tensor in best["model"].items())
    assert best["best_score"] == pd.read_csv(out / "fold_0" / "log.csv")["val_dice"].max()  # the average's score

    cfg = config(tiny_dataset, out)
    model = load_fold_models(cfg.model, Runtime.detect(), checkpoint_paths(RunFiles.of(cfg), [0]))[0]
    assert all(torch.equal(tensor, best["model"][key]) for key, tensor in model.state_dict().items())


def test_the_hooks_see_optimiser_steps_not_batches_when_accumulating(tiny_dataset, tmp_path):
    out = trained(tiny_dataset, tmp_path, "train.epochs=1", "train.ema.enabled=true", "train.accumulate=3")
    hooks = read_checkpoint(out / "fold_0" / "last.pt")["hooks"]
    # 4 batches in groups of 3: 2 optimiser steps, the epoch's last group holding the one batch left.
    assert int(hooks["ema"]["n_averaged"]) == hooks["tensorboard"]["step"] == 2


def test_with_the_ema_off_the_checkpoints_hold_the_trained_model(tiny_dataset, tmp_path):
    out = trained(tiny_dataset, tmp_path, "train.epochs=1")
    best, last = (read_checkpoint(out / "fold_0" / name) for name in ("best.pt", "last.pt"))
    assert all(torch.equal(tensor, last["model"][key]) for key, tensor in best["model"].items())
    assert "ema" not in last["hooks"]


# ---------------------------------------------------------------- TensorBoard


def test_a_run_writes_tensorboard_scalars_per_epoch_and_validation_images(tiny_dataset, tmp_path):
    out = trained(tiny_dataset, tmp_path, "train.epochs=2", "train.ema.enabled=true")
    folder = out / "tensorboard" / "fold_0"
    assert event_files(folder) and not event_files(out / "fold_0")
    run = events(folder)
    log = pd.read_csv(out / "fold_0" / "log.csv")
    steps = [4, 8]  # optimiser steps at each epoch's end: 4 an epoch
    for tag, column in (("val/dice", "val_dice"), ("val/jaccard", "val_jaccard"), ("val/loss", "val_loss"),
                        ("train/loss", "train_loss"), ("train/lr", "lr")):
        scalars = run.Scalars(tag)
        assert [s.step for s in scalars] == steps, tag
        assert [s.value for s in scalars] == pytest.approx(log[column].tolist(), rel=1e-6), tag
    assert [s.step for s in run.Scalars("train/batch_loss")] == [2, 4, 6, 8]  # train.log_every=2
    images = run.Tags()["images"]
    assert 1 <= len(images) <= TensorBoardHook.PREVIEW_IMAGES
    for tag in images:
        shots = run.Images(tag)
        assert [s.step for s in shots] == steps
        assert (shots[0].width, shots[0].height) == (3 * 32, 32)  # image, true mask, prediction side by side


def test_tensorboard_false_writes_no_event_file(tiny_dataset, tmp_path):
    out = trained(tiny_dataset, tmp_path, "train.epochs=1", "train.tensorboard=false")
    assert event_files(out) == [] and not (out / "tensorboard").exists()
    assert "tensorboard" not in read_checkpoint(out / "fold_0" / "last.pt")["hooks"]


def test_tensorboard_leaves_the_random_generators_as_it_found_them(tiny_dataset, tmp_path):
    from ternaus.distributed import World
    from ternaus.hooks import build_hooks
    from ternaus.run_files import read_folds
    from ternaus.runtime import Runtime, rng_states, seed_everything
    from ternaus.data.layouts import train_items
    from ternaus.training import TrainingRun, _start_fold, fold_data

    out = trained(tiny_dataset, tmp_path, "train.epochs=1", "train.tensorboard=false")
    cfg = config(tiny_dataset, out)
    runtime, world = Runtime.detect(), World()
    run = TrainingRun.from_config(cfg)
    items = train_items(run.source, read_folds(run.files.folds_csv, run.n_folds), run.files.folds_csv)
    data = fold_data(run, items, 0, runtime, world)
    (hook,) = build_hooks(run.hook_context(0, runtime, world, data.val_loader.dataset))
    state = _start_fold(run, 0, runtime, world, [hook])  # resumed from last.pt, at the end of epoch 1
    seed_everything(5)
    before, weights = rng_states(), {k: v.clone() for k, v in state.model.state_dict().items()}
    assert state.model.training  # the preview must not move BatchNorm's statistics all the same
    hook.on_fit_start(state)
    hook.on_step_end(state, torch.tensor(1.0))
    hook.on_validation_end(state, {})
    hook.on_epoch_end(state, state.log[-1])
    hook.on_fit_end(state)
    after = rng_states()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    assert all(torch.equal(v, weights[k]) for k, v in state.model.state_dict().items()) and state.model.training
    run = events(out / "tensorboard" / "fold_0")
    assert run.Tags()["images"] and [s.step for s in run.Scalars("val/dice")] == [1]


# ---------------------------------------------------------------- killed and resumed


@pytest.mark.slow
def test_training_with_the_ema_killed_mid_epoch_resumes_to_the_same_checkpoints_and_events(tiny_dataset, tmp_path):
    from test_faults import CONFIG, overrides, run, run_and_kill, stage

    # Both runs write into the same folder (the checkpoints record the resolved config, output_dir included), one
    # after the other: the uninterrupted run's files are moved aside first.
    out, whole = tmp_path / "run", tmp_path / "whole"
    settings = ("train.epochs=2", "train.checkpoint_every=1", "train.folds=[0]", *SMALL, "train.ema.enabled=true",
                "train.ema.decay=0.8")
    prepare_folds(load_config(CONFIG, overrides(tiny_dataset, out)))
    args = stage("train.py", tiny_dataset, out, *settings)
    run(args, tmp_path / "whole.log")
    whole.mkdir()
    for name in ("fold_0", "tensorboard"):
        (out / name).rename(whole / name)

    fold = out / "fold_0"
    run_and_kill(args, tmp_path / "kill.log", lambda: (fold / "last.pt").exists())  # SIGKILL inside epoch 1
    stopped = read_checkpoint(fold / "last.pt")
    assert stopped["epoch"] == 0 and stopped["step"] >= 1
    assert int(stopped["hooks"]["ema"]["n_averaged"]) == stopped["hooks"]["tensorboard"]["step"] == stopped["step"]
    assert "resuming from" in run(args, tmp_path / "resumed.log")

    # best.pt holds what training computed and no wall-clock time: the very same bytes.
    assert (whole / "fold_0" / "best.pt").read_bytes() == (fold / "best.pt").read_bytes()
    a, b = read_checkpoint(whole / "fold_0" / "last.pt"), read_checkpoint(fold / "last.pt")
    assert (a["epoch"], a["step"], a["best_score"]) == (b["epoch"], b["step"], b["best_score"])
    assert a["model"].keys() == b["model"].keys() and a["hooks"].keys() == b["hooks"].keys() == {"ema", "tensorboard"}
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), f"last.pt: {key}"
    for key, tensor in a["hooks"]["ema"].items():
        assert torch.equal(tensor, b["hooks"]["ema"][key]), f"last.pt: ema {key}"
    logs = [pd.read_csv(folder / "log.csv").drop(columns="time_s") for folder in (whole / "fold_0", fold)]
    pd.testing.assert_frame_equal(*logs)
    # The resumed run's events, read as TensorBoard reads them, are the uninterrupted run's.
    runs = [events(folder / "tensorboard" / "fold_0") for folder in (whole, out)]
    # The resumed run's own event file, and the killed run's if it had written an event before the kill.
    assert 1 <= len(event_files(out / "tensorboard")) <= 2
    for tag in ("val/dice", "val/loss", "train/loss"):
        assert [(s.step, s.value) for s in runs[0].Scalars(tag)] == [(s.step, s.value) for s in runs[1].Scalars(tag)]
