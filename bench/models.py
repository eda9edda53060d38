"""Each model of the family: parameters, GFLOPs of one forward pass and CPU forward time, as a markdown table.

    python bench/bench_models.py [--size 1024] [--repeats 5] [--threads N] [--out FILE]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: nothing is computed,
and a multiply-add counts as 2 FLOPs (convolutions and transposed convolutions; the bilinear upsampling,
ReLU, pooling and BatchNorm are not counted). The time is the median of ``--repeats`` forward passes of one
float32 image under ``torch.no_grad`` on the CPU, after one warm-up pass; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ternaus.io import atomic_write_text  # noqa: E402
from ternaus.models import MODELS  # noqa: E402

# (model.name, model.transposed): the original code's default decoder for each model, and the alternative.
VARIANTS = (("unet11", False), ("unet16", False), ("unet16", True), ("albunet34", False), ("albunet34", True))


def build(name: str, transposed: bool = False, device: str = "cpu") -> torch.nn.Module:
    options = {"transposed": True} if transposed else {}
    with torch.device(device):
        return MODELS[name].model_class(**options).eval()


def parameter_count(name: str, transposed: bool = False) -> int:
    return sum(p.numel() for p in build(name, transposed, "meta").parameters())


def forward_flops(name: str, height: int, width: int, transposed: bool = False) -> int:
    """FLOPs of one forward pass of one image, counted on the meta device."""
    model = build(name, transposed, "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops()


@torch.no_grad()
def cpu_forward_seconds(name: str, size: int, repeats: int, transposed: bool = False) -> float:
    model = build(name, transposed)
    image = torch.randn(1, 3, size, size)
    model(image)  # warm-up: allocations and oneDNN's kernel choice
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def variant_label(name: str, transposed: bool) -> str:
    if "transposed" not in MODELS[name].options:
        return name
    return f"{name} ({'transposed' if transposed else 'bilinear'})"


def table(size: int, repeats: int) -> str:
    lines = [f"| model | encoder | parameters | GFLOPs at {size}×{size} | CPU forward at {size}×{size} (s) |",
             "|---|---|---|---|---|"]
    for name, transposed in VARIANTS:
        params = parameter_count(name, transposed)
        gflops = forward_flops(name, size, size, transposed) / 1e9
        seconds = f"{cpu_forward_seconds(name, size, repeats, transposed):.2f}" if repeats else "not timed"
        lines.append(f"| {variant_label(name, transposed)} | {MODELS[name].encoder} | {params:,} | {gflops:,.1f} | "
                     f"{seconds} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image height and width (a multiple of 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (0: no timing)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.size % 64 or args.size <= 0:
        parser.error(f"--size {args.size}: must be a positive multiple of 64, the size every model accepts")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)", file=sys.stderr)
    text = table(args.size, args.repeats)
    print(text, end="")
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
