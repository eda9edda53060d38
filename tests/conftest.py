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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three training cars and one test car at 62 x 40 (padded to 64 x 64): the whole pipeline in seconds."""
    from ternaus.fixtures.carvana import generate

    return generate(tmp_path_factory.mktemp("data") / "synthetic", cars=3, test_cars=1, size=(62, 40), seed=1)


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
