"""Submission: masks/s from probability PNGs to a checked ``submission.csv.gz`` (the whole make_submission
stage: read, threshold, RLE, gzip CSV, re-read and check), with one process and with one per core; and
where one mask's time goes.

    python -m bench.submission [--images N] [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import cv2

from bench.common import fmt, median_seconds, parser, table, write_section
from bench.fixtures import config, rendered_views, write_predictions, write_test_set
from ternaus.rle import rle_encode
from ternaus.submission import make_submission

SIZE = (1918, 1280)


def stage_rate(root: Path, images: int, processes: int) -> float:
    cfg = config(root, root / "run", f"submission.processes={processes}")
    start = time.perf_counter()
    make_submission(cfg)
    return images / (time.perf_counter() - start)


def one_mask_breakdown(png: Path, repeats: int) -> list[list[object]]:
    probs = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    binary = probs >= 128
    parts = [("read + decode the PNG", lambda: cv2.imread(str(png), cv2.IMREAD_UNCHANGED)),
             ("threshold", lambda: probs >= 128),
             ("RLE encode", lambda: rle_encode(binary))]
    return [[name, fmt(median_seconds(fn, repeats) * 1e3, 3)] for name, fn in parts]


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--images", type=int, default=400, help="test masks to encode (default 400)")
    args = cli.parse_args()
    images = 32 if args.quick else args.images
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        views = rendered_views(SIZE)
        ids = write_test_set(root, images, views)
        write_predictions(root / "run" / "predictions", ids, views)
        rates = {p: stage_rate(root, images, p) for p in sorted({1, cores})}
        breakdown = one_mask_breakdown(root / "run" / "predictions" / f"{ids[0]}.png", 5 if args.quick else 21)
    rows = [[p, fmt(rate, 1), f"{rate / rates[1]:.2f}x", f"{100_064 / rate / 60:.1f} min"] for p, rate in rates.items()]
    body = (f"{images} probability PNGs of 1918 x 1280 made from {len(views)} rendered car masks (edges blurred). "
            "Whole stage, wall time, one run per row:\n\n"
            + table(["processes", "masks/s", "vs 1 process", "100,064 Carvana test masks at this rate"], rows)
            + "\n\nOne mask, in one process (ms, medians):\n\n" + table(["step", "ms"], breakdown))
    write_section("submission", "Submission: probability PNGs to submission.csv.gz", body, write=not args.quick)


if __name__ == "__main__":
    main()
