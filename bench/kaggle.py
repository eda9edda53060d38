"""The time per test image of each shipped config's network, as a bundle predicts it (docs/kaggle.md).

For every config of configs/ that is not an ensemble: the config's network with its options, uninitialised
(the time does not depend on the weights), in float32 on this machine's CPU, one image at the size the network
sees (data.input_size, or the competition's image size padded to the network's multiple), through the
pipeline's own ``inference.tta_probabilities`` with the config's TTA. One warm-up pass, then the median of
``--repeats`` timed passes. Reading, resizing back and PNG writing are left out: they are milliseconds.

    python -m bench.kaggle [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ternaus.config import load_config
from ternaus.data.dataset import normalise_on_device
from ternaus.inference import tta_probabilities
from ternaus.models import new_model
from ternaus.registry import MODELS
from ternaus.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
# The competitions' image sizes (H, W), for configs that predict at full resolution (data.input_size: null).
IMAGE_SIZES = {"carvana": (1280, 1918), "tgs": (101, 101), "airbus": (768, 768), "severstal": (256, 1600)}


def _image_size(config: Path) -> tuple[int, int]:
    name = config.stem
    return IMAGE_SIZES["carvana" if name.startswith("carvana") else name]


def _padded(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    return tuple(-(-side // multiple) * multiple for side in size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime = Runtime.detect(False, channels_last=False)
    print("| config | network | input (H × W) | TTA | seconds per image |\n|---|---|---|---|---|")
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(config)
        if cfg.ensemble.members:
            continue
        size = tuple(cfg.data.input_size) if cfg.data.input_size else \
            _padded(_image_size(config), MODELS[cfg.model.name].size_multiple)
        model = new_model(cfg.model).eval()
        images = normalise_on_device(torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8))
        timings = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            tta_probabilities([model], images, runtime, cfg.predict.tta, cfg.model.activation)
            timings.append(time.perf_counter() - start)
        print(f"| `{config.name}` | {cfg.model.name} | {size[0]} × {size[1]} | {cfg.predict.tta} | "
              f"{statistics.median(timings[1:]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
