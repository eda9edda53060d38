"""RLE at Carvana's size (1918 x 1280): ours against the textbook numpy version, with one copy of the mask as
the floor of any single pass. Encode and decode of car masks (the synthetic renderer's) and of random masks
(every other pixel a run boundary on average: the worst case, where writing the numbers dominates).

Car masks are encoded in two states of the machine, the encoders taking turns on the same masks:
- in cache: eight consecutive calls on one mask, the median of the last four (timeit's steady state;
  make_submission encodes a mask it has just thresholded);
- from memory: the eight masks (20 MB) are encoded one after another after the other encoder has run, so each
  is read from RAM.

    python -m bench.rle [--quick]
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from bench.common import fmt, parser, table, write_section
from ternaus.fixtures.carvana import make_car, render_view
from ternaus.rle import rle_decode, rle_encode

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
    """Masks from memory: milliseconds per mask of each function over all the masks in turn, the functions
    taking turns within every repeat so that all of them see the same state of the machine; one list of
    per-repeat times per function."""
    times = {name: [] for name in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            for mask, rle in zip(cases, encoded):
                fn(mask, rle)
            times[name].append((time.perf_counter() - start) / len(cases) * 1e3)
    return {name: values[1:] for name, values in times.items()}


def in_cache(fns: dict[str, Callable], cases: list, encoded: list[str], repeats: int) -> dict[str, list[float]]:
    """Masks in cache, timeit's steady state: a function is called eight times in a row on one mask, and the
    median of the last four calls is its time on that mask (the first four bring the mask and the function's
    own memory into cache and let the caches settle from whatever ran before). Each round, every function
    takes its turn on all the masks, in an order that rotates from round to round; one time per round per
    function (the mean over the masks), so that ratios can be taken round by round."""
    times = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for k in range(len(names)):
            name = names[(k + round_) % len(names)]
            per_mask = []
            for mask, rle in zip(cases, encoded):
                calls = []
                for _ in range(8):
                    start = time.perf_counter()
                    fns[name](mask, rle)
                    calls.append((time.perf_counter() - start) * 1e3)
                per_mask.append(statistics.median(calls[4:]))
            times[name].append(statistics.mean(per_mask))
    return times


def speedup(slow: list[float], fast: list[float]) -> str:
    return f"{statistics.median(a / b for a, b in zip(slow, fast)):.1f}x"


def check(cases: list[np.ndarray]) -> list[str]:
    encoded = [rle_encode(m) for m in cases]
    for mask, rle in zip(cases, encoded):  # identical output, or the timing means nothing
        assert rle == textbook_encode(mask), "ours and the textbook encoder disagree"
        assert np.array_equal(rle_decode(rle, mask.shape), mask)
    return encoded


ENCODERS = {"copy": lambda m, r: m.copy(), "textbook": lambda m, r: textbook_encode(m),
            "ours": lambda m, r: rle_encode(m)}
DECODERS = {"textbook_dec": lambda m, r: textbook_decode(r, m.shape), "dec": lambda m, r: rle_decode(r, m.shape)}


def measure(kind: str, count: int, repeats: int) -> list[list[object]]:
    """Table rows: car masks in cache and from memory, or random masks (from memory; the numbers dominate)."""
    cases = masks(kind, count)
    encoded = check(cases)
    runs = f"{np.mean([len(r.split()) // 2 for r in encoded]):,.0f}"
    states = {"in cache": in_cache, "from memory": interleaved} if kind == "car" else {"from memory": interleaved}
    decode = interleaved(DECODERS, cases, encoded, repeats)
    rows = []
    for state, timer in states.items():
        t = timer(ENCODERS, cases, encoded, repeats)
        med = {name: statistics.median(values) for name, values in t.items()}
        rows.append([f"{kind}, {state}", runs, fmt(med["copy"], 3), fmt(med["textbook"]), fmt(med["ours"], 3),
                     f"**{speedup(t['textbook'], t['ours'])}**"])
    decode_cells = [fmt(statistics.median(decode["textbook_dec"])), fmt(statistics.median(decode["dec"])),
                    speedup(decode["textbook_dec"], decode["dec"])]
    return [row + decode_cells for row in rows]


def main() -> None:
    args = parser(__doc__).parse_args()
    count, repeats = (2, 3) if args.quick else (8, 25)
    rows = measure("car", count, repeats) + measure("random", 2, 3 if args.quick else 5)
    headers = ["masks", "runs per mask", "copy (floor)", "textbook encode", "ours encode", "encode speed-up",
               "textbook decode", "ours decode", "decode speed-up"]
    body = (f"Milliseconds per 1918 x 1280 uint8 mask, medians over {repeats} rounds in which every function takes "
            f"its turn on the same masks ({count} car masks, 2 random ones); a speed-up is the median of the "
            "rounds' ratios. Outputs checked identical to the textbook encoder's.\n\n"
            "- In cache: eight consecutive calls on one mask, the median of the last four (timeit's steady state; "
            "make_submission encodes a mask it has just thresholded).\n"
            "- From memory: the masks (20 MB) are taken in turn after the other encoder has run, so each is read "
            "from RAM.\n"
            "- Decoding writes a new mask; it is timed from memory only.\n\n" + table(headers, rows))
    write_section("rle", "RLE encode and decode", body, write=not args.quick)


if __name__ == "__main__":
    main()
