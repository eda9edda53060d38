"""Folds grouped by an id: for Carvana the car, so that all sixteen views of a car fall in the same fold
and validation never sees a car the model trained on (splitting by image leaks); for one image per object,
every image its own group. Optionally the groups' mean mask area, or their share of empty masks (a
competition with many empty masks), is stratified across folds.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from ternaus.data.carvana import car_id_of
from ternaus.errors import DataError
from ternaus.rle import parse_runs

__all__ = ["assign_folds", "mask_area", "group_ids", "group_column"]


def mask_area(rle: str) -> int:
    """Foreground pixels of an RLE mask: the sum of the run lengths."""
    return int(parse_runs(rle)[1].sum())


def group_column(group_by: str) -> str:
    """The folds table's name for the group: Carvana's ``car_id``, else ``group``."""
    return "car_id" if group_by == "car" else "group"


def group_ids(ids: pd.Series, group_by: str = "car", pattern: str | None = None) -> pd.Series:
    """Each image's group: its car (the id up to the last "_"), itself, or the first group of ``pattern``."""
    if group_by == "car":
        return ids.map(car_id_of)
    if group_by == "none":
        return ids.copy()
    found = ids.str.extract(re.compile(pattern), expand=False)
    found = found.iloc[:, 0] if isinstance(found, pd.DataFrame) else found
    unmatched = ids[found.isna()].tolist()
    if unmatched:
        raise DataError(f"folds.group_pattern {pattern!r} does not match {len(unmatched)} id(s), e.g. "
                        f"{unmatched[:3]}; fix the pattern or use folds.group_by=none")
    return found


def _quantile_bins(values: pd.Series, n_bins: int) -> np.ndarray:
    return pd.qcut(values.rank(method="dense"), q=n_bins, labels=False, duplicates="drop").to_numpy()


def _strata(table: pd.DataFrame, group: str, stratify: str, n_folds: int) -> np.ndarray:
    """Each image gets its group's label, so that whole groups are stratified: the quantile bin of the group's
    mean mask area, or its share of non-empty masks in quarters (0 or 1 for one image per group)."""
    if stratify == "empty":
        return (table.groupby(group)["mask_area"].transform(lambda a: (a > 0).mean()) * 4).round().to_numpy()
    n_bins = max(1, min(5, table[group].nunique() // n_folds))
    return _quantile_bins(table.groupby(group)["mask_area"].transform("mean"), n_bins)


def assign_folds(table: pd.DataFrame, n_folds: int, stratify: str = "none", seed: int = 42,
                 group: str = "car_id") -> pd.DataFrame:
    """``table`` (id, ``group``[, mask_area]) with a ``fold`` column in 0..n_folds-1."""
    n_groups = table[group].nunique()
    if n_groups < n_folds:
        what = "car(s)" if group == "car_id" else f"group(s) ({group})"
        raise DataError(f"{n_groups} {what} cannot fill folds.n_folds={n_folds} folds grouped by {group}; "
                        f"lower folds.n_folds or add data")
    folds = np.full(len(table), -1, dtype=np.int64)
    groups = table[group].to_numpy()
    if stratify in ("mask_area", "empty"):
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(table, _strata(table, group, stratify, n_folds), groups)
    else:
        splits = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(table, groups=groups)
    for fold, (_, val_index) in enumerate(splits):
        folds[val_index] = fold
    return table.assign(fold=folds)
