import pandas as pd
import pytest
import torch
from conftest import TINY_NET, tiny_net

from ternaus.config import load_config
from ternaus.prepare import prepare_folds
from ternaus.training import train


def config(root, out, *overrides):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", *TINY_NET, "folds.n_folds=2",
                              "model.init=lecun", "train.batch_size=4", "train.val_batch_size=8", "data.num_workers=0",
                              "data.input_size=null", "train.lr=1.0e-3", *overrides])


def test_resume_false_starts_over(tiny_dataset, tmp_path):
    small = "data.input_size=[32,32]"
    prepare_folds(config(tiny_dataset, tmp_path, small))
    train(config(tiny_dataset, tmp_path, "train.epochs=2", small), fold=1)
    # Resuming would find both epochs done and keep the two-row log; starting over leaves one epoch.
    train(config(tiny_dataset, tmp_path, "train.epochs=1", "train.resume=false", small), fold=1)
    assert pd.read_csv(tmp_path / "fold_1" / "log.csv")["epoch"].tolist() == [1]
    assert torch.load(tmp_path / "fold_1" / "last.pt", weights_only=True)["epoch"] == 1


def test_train_compile_wraps_the_model_and_checkpoints_stay_plain(tmp_path):
    from ternaus.checkpoint import read_checkpoint, save_checkpoint, unwrap
    from ternaus.distributed import World
    from ternaus.models.scratch import ScratchUNet
    from ternaus.runtime import Runtime
    from ternaus.training import TrainingRun, _start_fold

    cfg = config(tmp_path / "data", tmp_path, "train.compile=true")
    state = _start_fold(TrainingRun.from_config(cfg), 0, Runtime.detect(), World())
    # torch.compile is lazy: nothing is compiled until the first call, so this costs nothing.
    assert isinstance(state.model, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(unwrap(state.model), ScratchUNet)
    save_checkpoint(tmp_path / "compiled.pt", model=state.model)
    assert list(read_checkpoint(tmp_path / "compiled.pt")["model"]) == list(tiny_net().state_dict())


class Interrupted(Exception):
    """Stands for a kill: raised from inside a training step."""


def test_a_frozen_encoder_trains_only_after_its_epochs_and_a_resume_mid_freeze_changes_nothing(
        tiny_dataset, tmp_path, monkeypatch):
    from ternaus import training
    from ternaus.checkpoint import read_checkpoint, save_checkpoint
    from ternaus.losses import SegmentationLoss
    from ternaus.models import lecun_uniform_

    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "start.pt", model=lecun_uniform_(tiny_net()))  # freezing needs trained weights
    initial = read_checkpoint(start)["model"]
    settings = (f"model.init={start}", "model.freeze_encoder_epochs=1", "train.epochs=2", "runtime.deterministic=true",
                "data.input_size=[32,32]")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        prepare_folds(config(tiny_dataset, out, *settings))
    folds = pd.read_csv(whole / "folds.csv")
    fold = int(folds["fold"].value_counts().idxmax())  # the smaller training set: 4 steps an epoch

    encoders, finals = [], []  # the encoder and the last layer after each epoch's training, as validation sees them
    real_validate = training.validate

    def spy(model, *args, **kwargs):
        encoders.append({k: v.clone() for k, v in model.encoder.state_dict().items()})
        finals.append(model.final.weight.detach().clone())
        return real_validate(model, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "validate", spy)
        train(config(tiny_dataset, whole, *settings), fold=fold)
    assert len(encoders) == 2
    assert all(torch.equal(v, initial[f"encoder.{k}"]) for k, v in encoders[0].items())  # epoch 1: frozen
    assert not any(torch.equal(v, initial[f"encoder.{k}"]) for k, v in encoders[1].items() if k.endswith("weight"))
    assert not torch.equal(finals[0], initial["final.weight"])  # while the decoder trained

    # The same run killed inside the frozen epoch after its step-2 checkpoint, then run again.
    calls, real_loss = [0], SegmentationLoss.forward

    def loss_then_stop(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise Interrupted
        return real_loss(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(SegmentationLoss, "forward", loss_then_stop)
        train(config(tiny_dataset, resumed, *settings, "train.checkpoint_every=2"), fold=fold)
    killed = read_checkpoint(resumed / f"fold_{fold}" / "last.pt")
    assert (killed["epoch"], killed["step"]) == (0, 2)
    assert all(torch.equal(killed["model"][k], v) for k, v in initial.items() if k.startswith("encoder."))
    train(config(tiny_dataset, resumed, *settings), fold=fold)

    a, b = (read_checkpoint(out / f"fold_{fold}" / "last.pt") for out in (whole, resumed))
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"]), index
    logs = [pd.read_csv(out / f"fold_{fold}" / "log.csv").drop(columns="time_s") for out in (whole, resumed)]
    pd.testing.assert_frame_equal(*logs)
