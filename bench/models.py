"""Each model of the family: parameters, GFLOPs of one forward pass, CPU forward time, and CPU training and
prediction images/s at a Kaggle-sized input, as a markdown table.

    python -m bench.models [--size 1024] [--step-size 128] [--repeats 5] [--threads N] [--quick] [--names unet]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: nothing is computed,
and a multiply-add counts as 2 FLOPs (convolutions and transposed convolutions; the bilinear upsampling,
ReLU, pooling and BatchNorm are not counted). The time is the median of ``--repeats`` forward passes of one
float32 image under ``torch.no_grad`` on the CPU, after one warm-up pass; run it on a quiet machine. Training
images/s: the median of ``--repeats`` optimiser steps (forward, BCE, backward, Adam) on a batch of
``STEP_BATCH`` images of ``--step-size`` squared; prediction images/s: the same batch under ``torch.no_grad``;
both in the memory format the pipeline uses for that network on a CPU (``ModelSpec.cpu_channels_last``). The
table goes to the "models" section of docs/benchmarks.md, and its numbers to the README's model table by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import median_seconds, parser, write_section
from ternaus.registry import MODELS

# (model.name, model.transposed, other options): the original code's default decoder for each model, the
# alternative, and the 1st-place Carvana families (UNet11 with num_filters 64 is their "vgg11v1"; the scratch
# U-Net and LinkNet34 at their Carvana settings, the classes' defaults).
VARIANTS = (("unet11", False, {}), ("unet11", False, {"num_filters": 64}), ("unet16", False, {}),
            ("unet16", True, {}), ("albunet34", False, {}), ("albunet34", True, {}), ("linknet34", False, {}),
            ("scratch", False, {}), ("unet", False, {"encoder": "tf_efficientnet_lite0"}),
            ("unet", False, {"encoder": "tf_efficientnet_lite0", "decoder_widths": (128, 64, 32, 16, 8)}),
            ("linknet", False, {"encoder": "tf_efficientnet_lite0"}))
STEP_BATCH = 16


def build(name: str, transposed: bool = False, device: str = "cpu", **options) -> torch.nn.Module:
    options = {**options, **({"transposed": True} if transposed else {})}
    with torch.device(device):
        return MODELS[name].model_class(**options).eval()


def parameter_count(name: str, transposed: bool = False, **options) -> int:
    return sum(p.numel() for p in build(name, transposed, "meta", **options).parameters())


def forward_flops(name: str, height: int, width: int, transposed: bool = False, **options) -> int:
    """FLOPs of one forward pass of one image, counted on the meta device; ``options``: the class's settings
    (``num_filters=64``, ``widths=[...]``)."""
    model = build(name, transposed, "meta", **options)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops()


@torch.no_grad()
def cpu_forward_seconds(name: str, size: int, repeats: int, transposed: bool = False, **options) -> float:
    model = build(name, transposed, **options)
    image = torch.randn(1, 3, size, size)
    return median_seconds(lambda: model(image), repeats)  # the warm-up: allocations, oneDNN's kernel choice


def _step_batch(name: str, size: int, **options) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build(name, **options)
    images, masks = torch.randn(STEP_BATCH, 3, size, size), (torch.rand(STEP_BATCH, 1, size, size) > 0.5).float()
    if MODELS[name].cpu_channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(
            memory_format=torch.channels_last)
    return model, images, masks


def training_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> Callable[[], None]:
    """One optimiser step on ``images``/``masks``: forward, BCE, backward, Adam (the benches' training step)."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def cpu_images_per_second(name: str, size: int, repeats: int, transposed: bool = False,
                          **options) -> tuple[float, float]:
    """(training, prediction) images/s of ``STEP_BATCH`` images of ``size`` x ``size`` on the CPU."""
    model, images, masks = _step_batch(name, size, **({"transposed": True} if transposed else {}), **options)
    model.train()
    train = STEP_BATCH / median_seconds(training_step(model, images, masks), repeats)
    model.eval()
    with torch.no_grad():
        predict = STEP_BATCH / median_seconds(lambda: model(images), repeats)
    return train, predict


def variant_label(name: str, transposed: bool, options: dict | None = None) -> str:
    settings = ", ".join(f"{key} {value}" for key, value in (options or {}).items())
    if "transposed" in MODELS[name].options:
        settings = ", ".join(filter(None, ["transposed" if transposed else "bilinear", settings]))
    return f"{name} ({settings})" if settings else name


def table(size: int, repeats: int, names: list[str] | None = None, step_size: int = 128) -> str:
    at = f"{step_size}×{step_size}"
    lines = [f"| model | encoder | parameters | GFLOPs at {size}×{size} | CPU forward at {size}×{size} (s) | "
             f"CPU training images/s at {at} | CPU prediction images/s at {at} |",
             "|---|---|---|---|---|---|---|"]
    for name, transposed, options in VARIANTS:
        if names and name not in names:
            continue
        params = parameter_count(name, transposed, **options)
        gflops = forward_flops(name, size, size, transposed, **options) / 1e9
        seconds = f"{cpu_forward_seconds(name, size, repeats, transposed, **options):.2f}" if repeats else "not timed"
        speeds = cpu_images_per_second(name, step_size, repeats, transposed, **options) if repeats else None
        train, predict = (f"{v:.1f}" for v in speeds) if speeds else ("not timed", "not timed")
        encoder = options.get("encoder", MODELS[name].encoder)
        lines.append(f"| {variant_label(name, transposed, options)} | {encoder} | {params:,} | "
                     f"{gflops:,.1f} | {seconds} | {train} | {predict} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__)
    cli.add_argument("--size", type=int, default=1024, help="image height and width (a multiple of 64)")
    cli.add_argument("--step-size", type=int, default=128, help="input height and width of the training and "
                                                                  "prediction images/s (TGS: 101 padded to 128)")
    cli.add_argument("--repeats", type=int, default=5, help="timed passes per model (0: no timing)")
    cli.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    cli.add_argument("--names", nargs="+", choices=sorted(MODELS), help="only these model.name rows (printed, "
                                                                         "docs/benchmarks.md left as it is)")
    args = cli.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 128, 1
    if args.size % 64 or args.size <= 0:
        cli.error(f"--size {args.size}: must be a positive multiple of 64, the size every model accepts")
    if args.threads:
        torch.set_num_threads(args.threads)
    body = ("Forward time: one float32 image, batch 1, `torch.no_grad`; FLOPs of one forward pass (a multiply-add "
            "counts 2; convolutions only), counted on the meta device. Training images/s: optimiser steps (forward, "
            f"BCE, backward, Adam) on batches of {STEP_BATCH}; prediction images/s: the same batch under "
            "`torch.no_grad`; each in the memory format the pipeline uses for that network on a CPU (channels_last "
            "for the timm encoders, NCHW otherwise).\n\n" + table(args.size, args.repeats, args.names, args.step_size))
    write_section("models", "The model family: parameters, FLOPs, CPU forward time", body,
                  write=not (args.quick or args.names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
