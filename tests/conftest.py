import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Tests never touch the user's torch cache: each test that needs one plants its own.
os.environ.setdefault("TORCH_HOME", str(ROOT / ".pytest_cache" / "torch_home_unused"))
# No fsync: about 0.5 s of each 275 MB checkpoint here, minutes over the suite; the stage subprocesses inherit
# it. Atomic renames, which the kill tests check, are unchanged; tests/test_io.py checks the default flushes.
os.environ.setdefault("TERNAUS_FSYNC", "0")
# One thread per process: the tests' tensors are tiny, so a second thread gains little, and while a stage runs in
# a subprocess (with loader workers) two threads per process oversubscribe the cores (measured in
# docs/speed.md). Set before torch is imported; the stage subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three training cars and one test car at 62 x 40 (padded to 64 x 64): the whole pipeline in seconds."""
    from ternaus.fixtures.carvana import generate

    return generate(tmp_path_factory.mktemp("data") / "synthetic", cars=3, test_cars=1, size=(62, 40), seed=1)


# What the mechanics tests train (resume, kills, locks, DDP, shards, bad input, the stages end to end): a 5-level
# U-Net of 8 to 128 channels with BatchNorm (1.4 M parameters). Its checkpoint is 17 MB where UNet11's is 275 MB
# (both with Adam's state), and what those tests check does not depend on the network; UNet11 itself is trained
# end to end by tests/test_competitions.py and the demo.
TINY_NET = ["model.name=scratch", "model.widths=[8,16,32,64,128]", "model.center_width=128", "model.init=lecun"]
# The shared tiny run's settings. One fold is trained (train.folds=[0]): the checks that use the run happen
# before or at the first batch, so a second fold would add time and no coverage.
TINY = [*TINY_NET, "folds.n_folds=2", "train.folds=[0]", "train.epochs=1", "train.batch_size=4", "data.num_workers=0",
        "data.input_size=null", "model.init=lecun", "predict.batch_size=8"]


def tiny_net():
    """The network TINY_NET describes, with PyTorch's default initialisation."""
    from ternaus.config import load_config
    from ternaus.models import new_model

    return new_model(load_config(None, TINY_NET).model)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """prepare_folds, one epoch of fold 0, predict (the stages' main() with TINY): the output folder of a good run
    on the intact tiny dataset, made once. Shared: tests work on clones of it (tests/test_bad_input.py's
    clone_run), never on it."""
    import predict
    import prepare_folds
    import train

    out = tmp_path_factory.mktemp("trained") / "run"
    for stage in (prepare_folds, train, predict):
        args = ["--config", str(ROOT / "configs" / "synthetic.yaml"), f"data.root={tiny_dataset}", f"output_dir={out}"]
        assert stage.main([*args, *TINY]) == 0, f"{stage.__name__} failed on the intact data"
    assert len(list((out / "predictions").glob("*.png"))) == 16
    assert {"last.pt", "best.pt", "log.csv"} <= {p.name for p in (out / "fold_0").iterdir()}
    return out


@pytest.fixture(scope="session")
def family():
    """``family(name, transposed=False)``: that model, LeCun-initialised from a fixed seed, in eval mode, built
    once per session. Shared: tests must not change it (train, freeze or load into a model of their own)."""
    import torch

    from ternaus.models import lecun_uniform_
    from ternaus.registry import MODELS

    built = {}

    def get(name: str, transposed: bool = False):
        if (name, transposed) not in built:
            torch.manual_seed(len(built))
            model = MODELS[name].model_class(**({"transposed": True} if transposed else {}))
            built[name, transposed] = lecun_uniform_(model).eval()
        return built[name, transposed]

    return get


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache of the test's own; any attempt at a download fails the test."""
    import torch

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    return home
