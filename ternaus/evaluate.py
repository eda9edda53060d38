"""Score a submission against ground-truth masks: mean per-image Dice, Carvana's metric.

The pipeline never reads test masks; this is for data that has them (the synthetic set's ``test_masks/``),
so the demo can report how good its own submission is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ternaus.data import read_mask
from ternaus.metrics import dice_score
from ternaus.rle import rle_decode

__all__ = ["score_submission", "main"]


def score_submission(submission: str | Path, masks_dir: str | Path, order: str = "C") -> float:
    table = pd.read_csv(submission, dtype=str, keep_default_na=False)
    scores = []
    for name, rle in zip(table["img"], table["rle_mask"]):
        truth = read_mask(Path(masks_dir) / f"{Path(name).stem}_mask.gif")
        scores.append(dice_score(rle_decode(rle, truth.shape, order), truth))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mean per-image Dice of a submission against mask GIFs.")
    parser.add_argument("submission", help="submission CSV (.csv or .csv.gz)")
    parser.add_argument("masks_dir", help="folder of <id>_mask.gif ground-truth masks")
    parser.add_argument("--oof", default=None, help="oof.csv written by predict.py: also print its mean Dice")
    args = parser.parse_args(argv)
    if args.oof:
        print(f"out-of-fold Dice (mean per image): {pd.read_csv(args.oof)['dice'].mean():.4f}")
    print(f"submission Dice (mean per image): {score_submission(args.submission, args.masks_dir):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
