"""CPU training images/s of a network in NCHW against channels_last (NHWC), side by side in one process: the
measurement behind ``ModelSpec.cpu_channels_last`` (which networks the pipeline runs channels_last on a CPU).

    python -m bench.cpu_memory_format [--size 128] [--batch 32] [--repeats 5] [--threads 2]

One optimiser step = forward, BCE, backward, Adam on a random batch; the median of ``--repeats`` steps after one
warm-up step. Prints a markdown table; run it on a quiet machine.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import median_seconds, table
from bench.models import training_step
from ternaus.registry import MODELS

NETWORKS = (("unet11", {}), ("unet", {"encoder": "tf_efficientnet_lite0"}),
            ("unet", {"encoder": "tf_efficientnet_lite0", "decoder_widths": (128, 64, 32, 16, 8)}),
            ("linknet", {"encoder": "tf_efficientnet_lite0"}))


def training_images_per_second(name: str, options: dict, size: int, batch: int, repeats: int,
                               channels_last: bool) -> float:
    model = MODELS[name].model_class(num_classes=1, **options)
    images, masks = torch.randn(batch, 3, size, size), (torch.rand(batch, 1, size, size) > 0.5).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return batch / median_seconds(training_step(model, images, masks), repeats)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--size", type=int, default=128)
    cli.add_argument("--batch", type=int, default=32)
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--threads", type=int, default=2)
    args = cli.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, options in NETWORKS:
        nchw, nhwc = (training_images_per_second(name, options, args.size, args.batch, args.repeats, last)
                      for last in (False, True))
        label = name + "".join(f", {k} {v}" for k, v in options.items())
        rows.append([label, f"{nchw:.1f}", f"{nhwc:.1f}", f"{nhwc / nchw:.2f}",
                     "yes" if MODELS[name].cpu_channels_last else "no"])
    print(table(["network", "NCHW images/s", "channels_last images/s", "ratio", "pipeline uses channels_last"],
                rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
