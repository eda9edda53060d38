"""Folds grouped by car: all sixteen views of a car fall in the same fold, so validation never sees a
car the model trained on (splitting by image leaks). Optionally the cars' mean mask areas are
stratified across folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from ternaus.data import DataError
from ternaus.rle import parse_runs

__all__ = ["assign_folds", "mask_area"]


def mask_area(rle: str) -> int:
    """Foreground pixels of an RLE mask: the sum of the run lengths."""
    return int(parse_runs(rle)[1].sum())


def _area_bins(table: pd.DataFrame, n_folds: int) -> np.ndarray:
    """Each image gets its car's mean-area quantile bin, so whole cars are stratified."""
    car_area = table.groupby("car_id")["mask_area"].transform("mean")
    n_cars = table["car_id"].nunique()
    n_bins = max(1, min(5, n_cars // n_folds))
    return pd.qcut(car_area.rank(method="dense"), q=n_bins, labels=False, duplicates="drop").to_numpy()


def assign_folds(table: pd.DataFrame, n_folds: int, stratify: str = "none", seed: int = 42) -> pd.DataFrame:
    """``table`` (id, car_id[, mask_area]) with a ``fold`` column in 0..n_folds-1."""
    n_cars = table["car_id"].nunique()
    if n_cars < n_folds:
        raise DataError(f"{n_cars} car(s) cannot fill folds.n_folds={n_folds} folds grouped by car; "
                        f"lower folds.n_folds or add data")
    folds = np.full(len(table), -1, dtype=np.int64)
    groups = table["car_id"].to_numpy()
    if stratify == "mask_area":
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(table, _area_bins(table, n_folds), groups)
    else:
        splits = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(table, groups=groups)
    for fold, (_, val_index) in enumerate(splits):
        folds[val_index] = fold
    return table.assign(fold=folds)
