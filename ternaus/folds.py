"""Folds grouped by an id: for Carvana the car, so that all sixteen views of a car fall in the same fold
and validation never sees a car the model trained on (splitting by image leaks); for one image per object,
every image its own group. Optionally the groups' mean mask area, or their share of empty masks (a
competition with many empty masks), is stratified across folds. Or the folds come from a file that names each
group's fold (``folds.from_file``), as the 1st-place Carvana team published theirs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from ternaus.data.carvana import car_id_of
from ternaus.data.files import CSV_ERRORS, duplicates
from ternaus.errors import DataError
from ternaus.rle import parse_runs

__all__ = ["assign_folds", "mask_area", "group_ids", "group_column", "read_fold_file", "folds_from_file",
           "split_fingerprint", "groups_across_folds", "known_groups", "split_group_column",
           "split_known_groups"]


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


# ---------------------------------------------------------------- folds given by a file


def read_fold_file(path: Path, n_folds: int) -> pd.Series:
    """The fold of each group named by ``path`` (columns ``id`` and ``fold``, any others ignored), checked: every
    group once, integer folds exactly 0 .. n_folds - 1."""
    if not path.is_file():
        raise DataError(f"folds.from_file: {path} does not exist; give the path of a CSV with columns id,fold "
                        "(or set folds.from_file=null to split here)")
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except CSV_ERRORS as err:
        raise DataError(f"folds.from_file: {path} is not a readable CSV ({str(err).strip()[:200]})") from None
    if not {"id", "fold"} <= set(table.columns) or not pd.api.types.is_integer_dtype(table["fold"]):
        raise DataError(f"folds.from_file: {path} needs a column 'id' (the group, e.g. the car id) and an integer "
                        f"column 'fold'; it has {', '.join(map(str, table.columns))}")
    repeated = duplicates(table["id"])
    if repeated:
        raise DataError(f"folds.from_file: {path} names {len(repeated)} group(s) more than once, e.g. {repeated[:3]}")
    found = sorted(table["fold"].unique().tolist())
    if found != list(range(n_folds)):
        raise DataError(f"folds.from_file: {path} holds folds {found}, folds.n_folds={n_folds}: set folds.n_folds="
                        f"{len(found)} when they are 0 .. {len(found) - 1}")
    return table.set_index("id")["fold"]


def folds_from_file(table: pd.DataFrame, path: Path, n_folds: int, group: str = "car_id") -> pd.DataFrame:
    """``table`` (id, ``group``) with each group's ``fold`` from ``path`` (``read_fold_file``). A group of the data
    that the file does not name is refused, naming them; groups only the file names are ignored (a user may hold
    part of the data). Every fold must keep at least one group of the data."""
    folds = read_fold_file(path, n_folds)
    missing = sorted(set(table[group]) - set(folds.index))
    if missing:
        raise DataError(f"folds.from_file: {path} does not name {len(missing)} {group} value(s) of the data, e.g. "
                        f"{missing[:5]}; add them to the file or use another file")
    assigned = table.assign(fold=table[group].map(folds).astype(np.int64))
    empty = sorted(set(range(n_folds)) - set(assigned["fold"]))
    if empty:
        raise DataError(f"folds.from_file: fold(s) {empty} of {path} hold none of this data's {group} values, so they "
                        "could not be validated on; use more of the data or a file with fewer folds")
    return assigned


# ---------------------------------------------------------------- a fold's split, as a checkpoint records it


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def split_fingerprint(folds: pd.DataFrame, fold: int) -> dict:
    """What fold ``fold`` of ``folds`` (id, fold) trains on and holds out: each side's image count and the sha256 of
    its sorted ids. A checkpoint records it (``split``), so that a resume, the out-of-fold pass and prepare_folds.py
    can tell whether folds.csv still gives the split the weights were trained on."""
    held_out = folds["fold"] == fold
    trained, validated = folds.loc[~held_out, "id"].astype(str).tolist(), folds.loc[held_out, "id"].astype(str).tolist()
    return {"train": _ids_digest(trained), "held_out": _ids_digest(validated),
            "n_train": len(trained), "n_held_out": len(validated)}


def groups_across_folds(folds: pd.DataFrame, group: pd.Series | str) -> list[str]:
    """The groups whose images lie in more than one fold, sorted; ``group``: a column of ``folds`` or one value
    per row."""
    groups = folds[group] if isinstance(group, str) else pd.Series(list(group), index=folds.index)
    spread = folds.groupby(groups.astype(str))["fold"].nunique()
    return sorted(spread[spread > 1].index.tolist())


def known_groups(ids: pd.Series, layout: str) -> tuple[str, pd.Series] | None:
    """The group a data layout knows each image by whatever folds.group_by says, as (its name, one per id): Carvana's
    car (the id up to its last "_"); None for a layout that knows none."""
    if layout == "carvana":
        return "car", ids.astype(str).map(car_id_of)
    return None


def split_group_column(folds: pd.DataFrame) -> str | None:
    """What puts one group of the folds table's own group column (``car_id`` or ``group``) in two folds; None when
    every group keeps to one fold. prepare_folds.py never writes such a table: a hand-edited folds.csv can."""
    for column in ("car_id", "group"):
        spread = groups_across_folds(folds, column) if column in folds else []
        if spread:
            return f"{len(spread)} {column} value(s) lie in more than one fold, e.g. {spread[:3]}"
    return None


def split_known_groups(folds: pd.DataFrame, layout: str) -> str | None:
    """What puts views of one group the data layout knows (Carvana's car) in two folds, as a folds.group_by finer
    than the group does (``none``, a pattern, a folds.from_file keyed by image): validation then scores views of
    cars the model trained on. None when every known group keeps to one fold, or the layout knows none."""
    known = known_groups(folds["id"], layout)
    if known is None:
        return None
    name, groups = known
    spread = groups_across_folds(folds, groups)
    if not spread:
        return None
    return (f"{len(spread)} {name}(s) of {groups.nunique()} have views in more than one fold, e.g. {spread[:3]}: "
            f"validation and the out-of-fold scores see views of {name}s the model trained on, and overrate it")
