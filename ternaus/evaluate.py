"""Score a submission against ground-truth masks: mean per-image Dice, Carvana's metric.

The pipeline never reads test masks; this is for data that has them (the synthetic set's ``test_masks/``),
so the demo can report how good its own submission is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ternaus.data.files import image_size, read_mask
from ternaus.data.layouts import list_train, load_masks, mask_spec
from ternaus.metrics import dice_score
from ternaus.rle import decode_rle, rle_decode

__all__ = ["score_submission", "score_against_truth", "main"]


def score_submission(submission: str | Path, masks_dir: str | Path, order: str = "C") -> float:
    table = pd.read_csv(submission, dtype=str, keep_default_na=False)
    scores = []
    for name, rle in zip(table["img"], table["rle_mask"]):
        truth = read_mask(Path(masks_dir) / f"{Path(name).stem}_mask.gif")
        scores.append(dice_score(rle_decode(rle, truth.shape, order), truth))
    return float(np.mean(scores))


def _union_by_key(table: pd.DataFrame, fmt, shapes: dict) -> dict:
    """Each row key's mask, the rows of one key (instances) unioned."""
    masks = {}
    rle_column = fmt.columns[fmt.rle_column]
    for _, row in table.iterrows():
        key = tuple(row[c] for c in fmt.key_columns)
        mask = decode_rle(row[rle_column], shapes[key], fmt.rle)
        masks[key] = masks[key] | mask if key in masks else mask
    return masks


def score_against_truth(cfg, submission: str | Path, truth_cfg) -> float:
    """Mean Dice over the submission's row keys (images, or (image, class) pairs; an empty pair predicted
    empty scores 1) against the true masks that ``truth_cfg`` reads as if they were training data (the
    synthetic competitions' hidden test masks: ternaus.fixtures.competitions.TRUTH)."""
    from ternaus.submission import image_rows, masks_to_encode, submission_format

    fmt = submission_format(cfg)
    truth_rows, shapes = [], {}
    for row in list_train(truth_cfg).to_dict("records"):
        name, shape = Path(row["image"]).name, image_size(row["image"])
        masks = masks_to_encode(load_masks(row, shape, mask_spec(truth_cfg)) * 255, [0.5] * cfg.model.num_classes,
                                fmt.encode_size)
        truth_rows += image_rows(name, masks, fmt)
        shapes.update({key: fmt.encode_size or shape for key in fmt.keys_of(name)})
    truth = _union_by_key(pd.DataFrame(truth_rows, columns=list(fmt.columns)), fmt, shapes)
    predicted = _union_by_key(pd.read_csv(submission, dtype=str, keep_default_na=False), fmt, shapes)
    return float(np.mean([dice_score(predicted[key], mask) for key, mask in truth.items()]))


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
