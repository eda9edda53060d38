"""The first stage: check the training data before anything long starts, then split it into folds.

Folds are fixed once trained on: while a fold of the run has a checkpoint, a split other than the one it was
trained on (its checkpoint's ``split``) is refused, so that no out-of-fold score includes an image its model trained
on; the same split is written again as before."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pandas as pd

from ternaus.checkpoint import read_checkpoint
from ternaus.data.source import DataSource
from ternaus.config import Config, FoldsConfig, save_config
from ternaus.data.files import image_size, listing
from ternaus.data.layouts import MaskSpec, check_train, list_train, load_masks, mask_spec
from ternaus.errors import DataError
from ternaus.folds import (assign_folds, folds_from_file, group_column, group_ids, mask_area, split_fingerprint,
                           split_known_groups)
from ternaus.io import atomic_write
from ternaus.resume import same_split
from ternaus.run_files import RunFiles, read_folds
from ternaus.stage import ConfigFile, Lock, StageOutputs

__all__ = ["prepare_folds"]


def _mask_areas(table: pd.DataFrame, spec: MaskSpec) -> list[int]:
    """Foreground pixels of every class: from Carvana's RLE when the CSV has it (no decoding), else decoded with
    ``spec`` (``layouts.mask_spec`` of the data source)."""
    return [mask_area(row["rle"]) if row["rle"] else int(load_masks(row, image_size(row["image"]), spec).sum())
            for row in table.to_dict("records")]


def prepare_folds(cfg: Config) -> Path:
    """Write ``{output_dir}/folds.csv`` (id, group, fold[, mask_area]); raises DataError listing every problem.

    The group column is ``car_id`` for folds.group_by=car (Carvana), ``group`` otherwise."""
    files = RunFiles.of(cfg)
    source = DataSource.of(cfg)
    outputs = StageOutputs("prepare_folds", source.places(), folders={"output_dir": files.root},
                           claims=[Lock(files.folds_csv, f"{files.folds_csv}")],
                           temporaries={files.root: {files.folds_csv.name}},
                           config=ConfigFile(files.config("prepare_folds"), partial(save_config, cfg)))
    with outputs:
        return _prepare_folds(source, cfg.folds, files, outputs)


def _prepare_folds(source: DataSource, settings: FoldsConfig, files: RunFiles, outputs: StageOutputs) -> Path:
    """Check the training data of ``source``, split it by the ``folds`` section ``settings`` and write
    ``files.folds_csv`` inside the stage's ``outputs``."""
    table = list_train(source)
    spec = mask_spec(source)
    # Every image's first and last bytes and every mask in full: a bad file found now costs seconds,
    # found by train.py it costs a stopped run.
    problems = check_train(table, processes=os.cpu_count() or 1, spec=spec,
                           max_pixels=source.settings.max_image_pixels)
    if problems:
        raise DataError(listing(f"{len(problems)} problem(s) in the training data under {source.settings.root}",
                                problems))
    group = group_column(settings.group_by)
    table[group] = group_ids(table["id"], settings.group_by, settings.group_pattern)
    folds = _split(table, settings, group, spec)
    _refuse_new_split_of_trained_folds(files, folds, settings.n_folds)
    leak = split_known_groups(folds, source.layout)
    if leak:
        print(f"warning: {leak}. Use folds.group_by=car (or a folds.from_file keyed by car) for an honest CV",
              file=sys.stderr)
    outputs.save_config()
    path = atomic_write(files.folds_csv, lambda tmp: folds.to_csv(tmp, index=False))
    sizes = folds.groupby("fold")[group].nunique().tolist()
    what = "cars" if group == "car_id" else "groups"
    empty = f", {int((folds['mask_area'] == 0).sum())} with empty masks" if "mask_area" in folds else ""
    given = f" as {settings.from_file} gives them" if settings.from_file else ""
    print(f"{len(folds)} images of {folds[group].nunique()} {what} in {settings.n_folds} folds{given} "
          f"({what} per fold: {sizes}{empty}) -> {path}")
    return path


def _split(table: pd.DataFrame, settings: FoldsConfig, group: str, spec: MaskSpec) -> pd.DataFrame:
    """The folds of the file ``folds.from_file``, or a split made here (stratified when configured; the masks'
    areas are read with ``spec``)."""
    if settings.from_file:
        return folds_from_file(table[["id", group]], Path(settings.from_file), settings.n_folds, group)
    columns = ["id", group]
    if settings.stratify != "none":
        table["mask_area"] = _mask_areas(table, spec)
        columns.append("mask_area")
    return assign_folds(table[columns], settings.n_folds, settings.stratify, settings.seed, group)


def _trained_checkpoints(files: RunFiles) -> dict[int, list[Path]]:
    """The checkpoints (last.pt, best.pt) of each fold folder of the run, by fold."""
    found: dict[int, list[Path]] = {}
    for folder in sorted(files.root.glob("fold_*")):
        number = folder.name.removeprefix("fold_")
        if folder.is_dir() and number.isdigit():
            paths = [p for p in (files.last(int(number)), files.best(int(number))) if p.is_file()]
            if paths:
                found[int(number)] = paths
    return found


def _split_before(files: RunFiles, n_folds: int, fold: int) -> dict | None:
    """Fold ``fold``'s split as the folds.csv there now gives it, for a checkpoint that records none."""
    try:
        return split_fingerprint(read_folds(files.folds_csv, n_folds), fold)
    except (OSError, DataError):
        return None


def _refuse_new_split_of_trained_folds(files: RunFiles, folds: pd.DataFrame, n_folds: int) -> None:
    """Refuse ``folds`` (id, fold) where it splits a trained fold otherwise than its checkpoints were trained on:
    their out-of-fold scores would include images they trained on, and a resume would go on on another split."""
    changed = []
    for fold, paths in _trained_checkpoints(files).items():
        now = split_fingerprint(folds, fold)
        for path in paths:
            same = same_split(read_checkpoint(path, mmap=True).get("split"), now)
            if same is None:  # written before checkpoints recorded their split: folds.csv's is the one it had
                before = _split_before(files, n_folds, fold)
                same = before is not None and same_split(before, now)
            if not same:
                changed.append(path)
    if changed:
        folders = sorted({str(p.parent) for p in changed})
        raise DataError(
            f"{files.folds_csv}: these settings split the images otherwise than {len(folders)} trained fold(s) of "
            f"this run were trained on ({', '.join(str(p) for p in changed)}). Folds are fixed once trained on: a "
            "new split would put images a model trained on among its out-of-fold ones. Keep the run's split (run "
            f"prepare_folds.py with the settings of {files.config('prepare_folds')}); to split anew, start a new run "
            f"with another output_dir, or remove {', '.join(folders)} to train those folds again")
