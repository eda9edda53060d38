"""The first stage: check the training data before anything long starts, then split it into folds."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pandas as pd

from ternaus.data.source import DataSource
from ternaus.config import Config, FoldsConfig, save_config
from ternaus.data.files import image_size, listing
from ternaus.data.layouts import MaskSpec, check_train, list_train, load_masks, mask_spec
from ternaus.errors import DataError
from ternaus.folds import assign_folds, folds_from_file, group_column, group_ids, mask_area
from ternaus.io import atomic_write
from ternaus.run_files import RunFiles
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
