import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Tests never touch the user's torch cache: each test that needs one plants its own.
os.environ.setdefault("TORCH_HOME", str(ROOT / ".pytest_cache" / "torch_home_unused"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three training cars and one test car at 62 x 40 (padded to 64 x 64): the whole pipeline in seconds."""
    from ternaus.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "synthetic", cars=3, test_cars=1, size=(62, 40), seed=1)
