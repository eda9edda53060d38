"""Prediction end to end: images/s of the whole predict stage (read, decode, pad, TTA forward passes of every
fold's model, average, crop, PNG encoding and writing) against the model's forward passes alone on the same
batches; the overhead is the wall time not spent in forward passes.

    python -m bench.predict [--images N] [--size WxH] [--folds F] [--workers W] [--quick]

Defaults: on a GPU, 256 images at Carvana's 1918 x 1280 and 5 folds (the real job); on a CPU, 32 images at
480 x 320 and 2 folds (a full-size image takes the CPU ~20 s per fold).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import fmt, median_seconds, parser, table, write_section
from bench.fixtures import config, rendered_views, write_checkpoints, write_test_set
from ternaus.data.dataset import normalise_on_device
from ternaus.data.geometry import geometry_of
from ternaus.inference import PredictionRun, checkpoint_paths, load_fold_models, predict, tta_probabilities
from ternaus.runtime import Runtime


def arguments():
    cli = parser(__doc__)
    gpu = torch.cuda.is_available()
    cli.add_argument("--images", type=int, default=256 if gpu else 32)
    cli.add_argument("--size", default="1918x1280" if gpu else "480x320", help="W x H of the test images")
    cli.add_argument("--folds", type=int, default=5 if gpu else 2)
    cli.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    cli.add_argument("--batch", type=int, default=4)
    return cli.parse_args()


def model_seconds(cfg, images: int, size: tuple[int, int]) -> float:
    """The forward passes alone: the same batches as the stage, already normalised on the device."""
    runtime = Runtime.of(cfg.runtime)
    run = PredictionRun.from_config(cfg)
    models = list(load_fold_models(run.model, runtime, checkpoint_paths(run.files, run.folds)).values())
    # The network's input size for these images, from the stage's own geometry (padding or resize).
    height, width = geometry_of(cfg).image_to_input(np.zeros((size[1], size[0], 3), np.uint8)).shape[:2]
    batch = runtime.to_device(torch.randint(0, 256, (cfg.predict.batch_size, 3, height, width), dtype=torch.uint8))
    batches = -(-images // cfg.predict.batch_size)
    one = median_seconds(lambda: tta_probabilities(models, normalise_on_device(batch), runtime, cfg.predict.tta), 3)
    return one * batches


def main() -> None:
    args = arguments()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.quick:
        args.images, width, height, args.folds = 8, 192, 128, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_test_set(root, args.images, rendered_views((width, height)))
        cfg = config(root, root / "run", f"folds.n_folds={max(args.folds, 2)}",
                     f"train.folds={list(range(args.folds))}", "predict.oof=false",
                     f"data.num_workers={args.workers}", f"predict.batch_size={args.batch}")
        write_checkpoints(cfg, list(range(args.folds)))
        start = time.perf_counter()
        predict(cfg)
        wall = time.perf_counter() - start
        forward = model_seconds(cfg, args.images, (width, height))
    runtime = Runtime.of(cfg.runtime).describe()
    overhead = wall - forward
    rows = [[f"{width}x{height}", args.images, args.folds, args.batch, args.workers, runtime,
             fmt(args.images / wall, 2), fmt(args.images / forward, 2), f"{fmt(overhead, 1)} s",
             f"**{100 * overhead / wall:.0f}%**"]]
    body = ("Horizontal-flip TTA (each batch and its mirror in one forward pass), every fold's model on every "
            "image. Wall time includes loading the checkpoints and the first batch's warm-up.\n\n"
            + table(["images", "count", "folds", "batch", "workers", "device", "stage images/s",
                     "forward-only images/s", "overhead", "overhead share of wall"], rows))
    write_section("predict", "Prediction end to end", body, write=not args.quick)


if __name__ == "__main__":
    main()
