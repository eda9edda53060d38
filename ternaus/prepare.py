"""The first stage: check the training data before anything long starts, then split it into folds."""

from __future__ import annotations

import os
from pathlib import Path

from ternaus.config import Config, save_config
from ternaus.data import DataError, check_train, image_size, list_train, listing, load_train_mask
from ternaus.folds import assign_folds, mask_area
from ternaus.io import atomic_write

__all__ = ["prepare_folds"]


def _mask_areas(table) -> list[int]:
    """From the RLE when the CSV has it (no decoding), else from the mask file."""
    return [mask_area(row["rle"]) if row["rle"] else int(load_train_mask(row, image_size(row["image"])).sum())
            for row in table.to_dict("records")]


def prepare_folds(cfg: Config) -> Path:
    """Write ``{output_dir}/folds.csv`` (id, car_id, fold[, mask_area]); raises DataError listing every problem."""
    table = list_train(cfg)
    # Every image's first and last bytes and every mask in full: a bad file found now costs seconds,
    # found by train.py it costs a stopped run.
    problems = check_train(table, processes=os.cpu_count() or 1)
    if problems:
        raise DataError(listing(f"{len(problems)} problem(s) in the training data under {cfg.data.root}", problems))
    columns = ["id", "car_id"]
    if cfg.folds.stratify == "mask_area":
        table["mask_area"] = _mask_areas(table)
        columns.append("mask_area")
    folds = assign_folds(table[columns], cfg.folds.n_folds, cfg.folds.stratify, cfg.folds.seed)
    out = Path(cfg.output_dir)
    save_config(cfg, out / "configs" / "prepare_folds.yaml")
    path = atomic_write(out / "folds.csv", lambda tmp: folds.to_csv(tmp, index=False))
    sizes = folds.groupby("fold")["car_id"].nunique().tolist()
    print(f"{len(folds)} images of {folds['car_id'].nunique()} cars in {cfg.folds.n_folds} folds "
          f"(cars per fold: {sizes}) -> {path}")
    return path
