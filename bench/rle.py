"""RLE at Carvana's size (1918 x 1280): ours against the textbook numpy version, with one copy of the mask as
the floor of any single pass. Encode and decode of car masks (the synthetic renderer's) and of random masks
(every other pixel a run boundary on average: the worst case, where writing the numbers dominates).

    python -m bench.rle [--quick]
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from bench.common import fmt, parser, table, write_section
from ternaus.rle import rle_decode, rle_encode
from ternaus.synthetic import make_car, render_view

SIZE = (1918, 1280)  # (W, H)


def textbook_encode(mask: np.ndarray) -> str:
    """The encoder most Kaggle kernels copy: flatten, pad, np.where on the difference, join the numbers."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def textbook_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The matching kernel decoder: one slice assignment per run."""
    numbers = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (numbers[0::2], numbers[1::2]))
    starts -= 1
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for low, high in zip(starts, starts + lengths):
        flat[low:high] = 1
    return flat.reshape(shape)


def masks(kind: str, count: int) -> list[np.ndarray]:
    if kind == "car":
        return [render_view(make_car(0, i), 1 + (3 * i) % 16, SIZE)[1] for i in range(count)]
    rng = np.random.default_rng(0)
    return [(rng.random(SIZE[::-1]) < 0.5).astype(np.uint8) for _ in range(count)]


def interleaved(fns: dict[str, Callable], cases: list, encoded: list[str], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per mask of each function, the functions taking turns within every repeat so that all of
    them see the same state of the machine; one list of per-repeat times per function."""
    times = {name: [] for name in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            for mask, rle in zip(cases, encoded):
                fn(mask, rle)
            times[name].append((time.perf_counter() - start) / len(cases) * 1e3)
    return {name: values[1:] for name, values in times.items()}


def measure(kind: str, count: int, repeats: int) -> list[object]:
    cases = masks(kind, count)
    encoded = [rle_encode(m) for m in cases]
    for mask, rle in zip(cases, encoded):  # identical output, or the timing means nothing
        assert rle == textbook_encode(mask), "ours and the textbook encoder disagree"
        assert np.array_equal(rle_decode(rle, mask.shape), mask)
    t = interleaved({"copy": lambda m, r: m.copy(), "textbook": lambda m, r: textbook_encode(m),
                     "ours": lambda m, r: rle_encode(m), "ours_bool": lambda m, r: rle_encode(m.view(bool)),
                     "textbook_dec": lambda m, r: textbook_decode(r, m.shape),
                     "dec": lambda m, r: rle_decode(r, m.shape)}, cases, encoded, repeats)
    med = {name: statistics.median(values) for name, values in t.items()}
    ratio = statistics.median(a / b for a, b in zip(t["textbook"], t["ours"]))
    ratio_dec = statistics.median(a / b for a, b in zip(t["textbook_dec"], t["dec"]))
    runs = np.mean([len(r.split()) // 2 for r in encoded])
    return [kind, f"{runs:,.0f}", fmt(med["copy"], 3), fmt(med["textbook"]), fmt(med["ours"]), fmt(med["ours_bool"]),
            f"**{ratio:.1f}x**", fmt(med["textbook_dec"]), fmt(med["dec"]), f"{ratio_dec:.1f}x"]


def main() -> None:
    args = parser(__doc__).parse_args()
    count, repeats = (2, 3) if args.quick else (8, 25)
    rows = [measure("car", count, repeats), measure("random", 2, 3 if args.quick else 5)]
    headers = ["masks", "runs per mask", "copy (floor)", "textbook encode", "ours (uint8)", "ours (bool)",
               "encode speed-up", "textbook decode", "ours decode", "decode speed-up"]
    body = (f"Milliseconds per 1918 x 1280 mask, medians over {repeats} rounds in which every function takes its "
            f"turn on the same masks ({count} car masks, 2 random ones); a speed-up is the median of the rounds' "
            "ratios. Outputs checked identical to the textbook encoder's. `ours (bool)` is the input `make_submission` gives it (a thresholded map); "
            "a uint8 mask goes through the same one pass (np.packbits reads any non-zero value as 1).\n\n" + table(headers, rows))
    write_section("rle", "RLE encode and decode", body, write=not args.quick)


if __name__ == "__main__":
    main()
