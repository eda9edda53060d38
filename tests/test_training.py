import pandas as pd
import torch

from ternaus.config import load_config
from ternaus.prepare import prepare_folds
from ternaus.training import train


def config(root, out, *overrides):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", "folds.n_folds=2", "model.init=lecun",
                              "train.batch_size=4", "train.val_batch_size=8", "data.num_workers=0",
                              "data.input_size=null", "train.lr=1.0e-3", *overrides])


def test_resume_false_starts_over(tiny_dataset, tmp_path):
    prepare_folds(config(tiny_dataset, tmp_path))
    train(config(tiny_dataset, tmp_path, "train.epochs=2"), fold=1)
    # Resuming would find both epochs done and keep the two-row log; starting over leaves one epoch.
    train(config(tiny_dataset, tmp_path, "train.epochs=1", "train.resume=false"), fold=1)
    assert pd.read_csv(tmp_path / "fold_1" / "log.csv")["epoch"].tolist() == [1]
    assert torch.load(tmp_path / "fold_1" / "last.pt", weights_only=True)["epoch"] == 1


def test_train_compile_wraps_the_model_and_checkpoints_stay_plain(tmp_path):
    from ternaus.checkpoint import read_checkpoint, save_checkpoint, unwrap
    from ternaus.distributed import World
    from ternaus.models import UNet11
    from ternaus.runtime import Runtime
    from ternaus.training import _start_fold

    cfg = config(tmp_path / "data", tmp_path, "train.compile=true")
    state = _start_fold(cfg, 0, Runtime.detect(), World())
    # torch.compile is lazy: nothing is compiled until the first call, so this costs nothing.
    assert isinstance(state.model, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(unwrap(state.model), UNet11)
    save_checkpoint(tmp_path / "compiled.pt", model=state.model)
    assert list(read_checkpoint(tmp_path / "compiled.pt")["model"]) == list(UNet11().state_dict())
