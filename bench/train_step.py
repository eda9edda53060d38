"""Training step: images/s, peak memory and model FLOP utilisation (MFU) of one UNet11 optimiser step (the
pipeline's own ``train_step``: normalise, forward, BCE-Dice loss, backward, Adam), by input size, batch size,
precision (float32, bfloat16 / float16 autocast), memory format and ``torch.compile``. Each case runs in its
own process so that peak memory and compiler caches are its own. Also: how far bfloat16, float16 and the
compiled model are from float32 on the same weights and batch.

    python -m bench.train_step [--quick]
"""

from __future__ import annotations

import functools
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import median_seconds, parser, synchronize, table, write_section
from ternaus.config import load_config
from ternaus.models import UNet11
from ternaus.runtime import Runtime
from ternaus.training import new_fold_state, train_step

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense peak FLOP/s from the vendors' data sheets (SXM parts). A float32 model's convolutions run on TF32
# tensor cores (PyTorch's default, torch.backends.cudnn.allow_tf32), so its peak is the TF32 one.
GPU_PEAKS = {"H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12},
             "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12},
             "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
             "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}}


@dataclass
class Case:
    height: int
    width: int
    batch: int
    precision: str = "float32"
    channels_last: bool = False
    compile: bool = False
    steps: int = 5
    repeats: int = 3


def cases_for(device: str, quick: bool) -> list[Case]:
    if quick:
        return [Case(64, 96, 2, steps=2, repeats=1), Case(64, 96, 2, "bfloat16", steps=2, repeats=1)]
    if device == "cuda":
        grid = [Case(1280, 1920, b, p, cl, False) for b in (1, 2, 4) for p in PRECISIONS for cl in (False, True)]
        grid += [Case(1280, 1920, b, "bfloat16", True, True) for b in (2, 4)]
        grid += [Case(640, 960, b, p, True) for b in (4, 8, 16) for p in ("bfloat16", "float16")]
        return grid + [Case(320, 480, b, "bfloat16", True) for b in (16, 32, 64)]
    # A CPU does about a hundred GFLOP/s: the comparisons at a small size, one full-size step.
    # No autocast rows: the pipeline trains in float32 on CPUs, and CPU autocast ran about 8 times slower here
    # (0.16 against 1.34 images/s at 64 x 96 in a --quick run); the numerics table below still compares them.
    grid = [Case(128, 192, b, steps=3) for b in (1, 4, 8)]
    grid += [Case(128, 192, 4, channels_last=True, steps=3), Case(128, 192, 4, compile=True, steps=3),
             Case(256, 384, 2, steps=2)]
    return grid + [Case(1280, 1920, 1, steps=1, repeats=2)]


def flops_per_image(height: int, width: int) -> float:
    """Forward + backward FLOPs of UNet11 on one image, counted on the meta device (nothing is computed)."""
    with torch.device("meta"):
        model, x = UNet11(), torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


def synthetic_batch(case: Case, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (case.batch, 3, case.height, case.width)
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    mask = torch.zeros((case.batch, 1, case.height, case.width), dtype=torch.uint8)
    mask[..., case.height // 4: 3 * case.height // 4, case.width // 5: 4 * case.width // 5] = 1
    if device.type == "cuda":
        image, mask = image.pin_memory(), mask.pin_memory()
    return {"image": image, "mask": mask}


def fold_state(case: Case, runtime: Runtime):
    cfg = load_config(None, ["model.init=lecun", "train.lr=1e-4"])
    torch.manual_seed(0)
    state = new_fold_state(cfg.train, cfg.model, runtime)
    if case.compile:
        state.model = torch.compile(state.model)
    return state


def run_case(case: Case) -> dict:
    """Images/s (median over repeats of ``steps`` steps) and peak memory of one case, in this process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runtime = Runtime(device, PRECISIONS[case.precision], case.channels_last)
    state, batch = fold_state(case, runtime), synthetic_batch(case, device)
    started = time.perf_counter()
    train_step(state, batch, runtime)  # warm-up: cuDNN autotuning, the compiler
    synchronize()
    warmup_s = time.perf_counter() - started
    rates = []
    for _ in range(case.repeats):
        start = time.perf_counter()
        for _ in range(case.steps):
            loss = train_step(state, batch, runtime)
        synchronize()
        rates.append(case.steps * case.batch / (time.perf_counter() - start))
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"non-finite loss in {case}")
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": statistics.median(rates), "peak_bytes": peak, "warmup_s": warmup_s}


def run_in_subprocess(case: Case) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.train_step", "--case", json.dumps(asdict(case))],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


@functools.cache
def peak_flops(precision: str) -> tuple[float, str]:
    """The device's peak for ``precision``: the data sheet's on a known GPU, else float32 matmul as measured."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision], f"{name} data sheet, dense {precision}"
        return math.nan, f"{name}: no data-sheet peak known"
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    rate = 2 * n**3 / median_seconds(lambda: a @ b, repeats=15, warmup=2)
    return rate, f"a 2048 x 2048 float32 matmul on this CPU, {rate / 1e9:.0f} GFLOP/s (median of 15)"


def precision_error_table(quick: bool) -> str:
    """Loss and gradient of the same weights and batch, each setting against float32."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    case = Case(64, 96, 2) if quick or device.type == "cpu" else Case(256, 384, 2)
    batch, results = synthetic_batch(case, device), {}
    settings = [("float32", None, False), ("bfloat16 autocast", torch.bfloat16, False),
                ("float16 autocast", torch.float16, False), ("float32, compiled", None, True)]
    for name, dtype, compiled in settings[:3] if quick else settings:
        runtime = Runtime(device, dtype, False)
        state = fold_state(Case(case.height, case.width, case.batch, compile=compiled), runtime)
        state.optimizer.param_groups[0]["lr"] = 0.0  # keep the weights: compare one gradient
        loss = train_step(state, batch, runtime).float().item()
        grads = torch.cat([p.grad.float().flatten() for p in state.model.parameters()])
        results[name] = (loss, grads)
    ref_loss, ref_grad = results["float32"]
    rows = [[name, f"{loss:.6f}", f"{abs(loss - ref_loss):.2e}",
             f"{((grad - ref_grad).norm() / ref_grad.norm()).item():.2e}"]
            for name, (loss, grad) in results.items() if name != "float32"]
    return table(["setting", "loss", "loss error", "relative gradient error (L2)"],
                 [["float32", f"{ref_loss:.6f}", "-", "-"], *rows])


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--case", help="internal: run one case (JSON) in this process and print its result as JSON")
    args = cli.parse_args()
    if args.case:
        print(json.dumps(run_case(Case(**json.loads(args.case)))))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    flops = {}
    rows, notes = [], set()
    for case in cases_for(device, args.quick):
        result = run_in_subprocess(case)
        key = (case.height, case.width)
        flops.setdefault(key, flops_per_image(*key))
        label = [f"{case.height}x{case.width}", case.batch, case.precision, "yes" if case.channels_last else "no",
                 "yes" if case.compile else "no"]
        if "error" in result:
            rows.append(label + ["failed: " + result["error"], "", "", ""])
            continue
        peak, source = peak_flops(case.precision)
        notes.add(source)
        achieved = flops[key] * result["images_per_s"]
        rows.append(label + [f"{result['images_per_s']:.3g}", f"{result['peak_bytes'] / 2**30:.2f}",
                             f"{achieved / 1e12:.3f}", f"{100 * achieved / peak:.1f}%"])
        print(" | ".join(map(str, rows[-1])), flush=True)
    memory = "peak GPU memory allocated" if device == "cuda" else "peak RSS of the process"
    body = (f"UNet11 forward + backward = {flops[(1280, 1920)] / 1e12:.2f} TFLOP per 1280 x 1920 image "
            if (1280, 1920) in flops else "") + (
        f"(counted by torch's FlopCounterMode). GiB is the {memory}. MFU = achieved FLOP/s over the peak of: "
        + "; ".join(sorted(notes)) + ".\n\n"
        + table(["input", "batch", "precision", "channels_last", "compile", "images/s", "GiB", "TFLOP/s", "MFU"],
                rows)
        + "\n\nThe same weights and batch, one step, against float32:\n\n" + precision_error_table(args.quick))
    write_section("train_step", "Training step", body, write=not args.quick)


if __name__ == "__main__":
    main()
