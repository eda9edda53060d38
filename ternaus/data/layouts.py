"""What every data layout provides, the one switch between them (``data.layout``), and the checks that run on
any of them before training.

A layout is a module (``ternaus.registry.LAYOUTS`` names them) with four functions, ``Layout`` below. Its
training rows share the keys ``id`` (the image's file stem), ``image`` (its path), ``mask`` (a mask file, or
""), ``rle`` (Carvana's masks CSV, or "") and, for the RLE CSV layout, ``runs`` (for ``instance_folders``,
``objects``: the object mask files); its masks are read as
(C, H, W) uint8 0/1 arrays, one plane per class, whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ternaus.config import DataConfig
from ternaus.data.files import declared_size_problem, image_file_problem, image_size
from ternaus.errors import DataError
from ternaus.registry import LAYOUTS
from ternaus.rle import RleFormat
from ternaus.data.source import DataSource

__all__ = ["Layout", "MaskSpec", "mask_spec", "layout_of", "list_train", "test_rows", "load_masks", "check_train_row",
           "check_train", "train_items"]


class Layout(Protocol):
    def list_train(self, source: DataSource) -> pd.DataFrame:
        """One row per training image (see the module's docstring)."""

    def test_rows(self, source: DataSource) -> list[dict[str, Any]]:
        """The test images as rows (id, image path), in the order the submission lists them when known."""

    def load_masks(self, row: Any, shape: tuple[int, int], spec: "MaskSpec") -> np.ndarray:
        """The (C, H, W) uint8 0/1 masks of a training row at its image's (H, W)."""

    def missing_mask(self, row: Any) -> str:
        """What a row without a mask lacks, named for the user (after 'neither')."""


@dataclass(frozen=True)
class MaskSpec:
    """What reading a row's masks needs besides the row: its layout, how many classes, the masks CSV's RLE."""

    num_classes: int = 1
    rle: RleFormat = field(default_factory=RleFormat)
    layout: str = "carvana"


def mask_spec(source: DataSource) -> MaskSpec:
    return MaskSpec(source.num_classes, source.rle, source.layout)


def layout_of(name: str) -> Layout:
    return LAYOUTS[name].load()


def list_train(source: DataSource) -> pd.DataFrame:
    """One row per training image of the configured layout."""
    return layout_of(source.layout).list_train(source)


def test_rows(source: DataSource) -> list[dict[str, Any]]:
    """The test images as rows (id, image path): Carvana's in sample order, other layouts' sorted by id."""
    return layout_of(source.layout).test_rows(source)


def load_masks(row: Any, shape: tuple[int, int], spec: MaskSpec = MaskSpec()) -> np.ndarray:
    """The (C, H, W) uint8 0/1 masks of a training row, from whichever source its layout gave it."""
    return layout_of(spec.layout).load_masks(row, shape, spec)


# ---------------------------------------------------------------- checks


def check_train_row(row: dict, spec: MaskSpec = MaskSpec(), max_pixels: int = DataConfig.max_image_pixels) -> list[str]:
    """Every problem with one training image and its mask; the mask is decoded to check its values."""
    problem = image_file_problem(row["image"], max_pixels)
    if problem:
        return [problem]
    if not row["mask"] and not row["rle"] and not any(isinstance(row.get(key), tuple) for key in ("runs", "objects")):
        return [f"{row['image']}: no mask (neither {layout_of(spec.layout).missing_mask(row)}); add it or remove the "
                "image"]
    problem = declared_size_problem(Path(row["mask"]), max_pixels) if row["mask"] else None
    if problem:
        return [problem]
    try:
        height, width = image_size(row["image"])
        mask = load_masks(row, (height, width), spec)[0]
    except DataError as err:
        return [str(err)]
    if mask.shape != (height, width):
        return [f"{row['mask']}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}; "
                "the mask must have its image's size"]
    return []


def check_train(table: pd.DataFrame, processes: int = 1, spec: MaskSpec = MaskSpec(),
                max_pixels: int = DataConfig.max_image_pixels) -> list[str]:
    """Every problem with the training data, one line each; an empty list means ready to train."""
    rows = table.to_dict("records")
    check = partial(check_train_row, spec=spec, max_pixels=max_pixels)
    if processes > 1 and len(rows) > 64:
        with Pool(processes) as pool:
            found = pool.map(check, rows, chunksize=16)
    else:
        found = [check(row) for row in rows]
    return [problem for problems in found for problem in problems]


def train_items(source: DataSource, folds: pd.DataFrame, folds_csv: Path) -> pd.DataFrame:
    """The training table joined with ``folds.csv``; refuses a folds file that does not match the data."""
    table = list_train(source)
    merged = table.merge(folds[["id", "fold"]], on="id", how="outer", indicator=True)
    stale = merged[merged["_merge"] != "both"]
    if len(stale):
        raise DataError(f"{folds_csv} does not match the data in {source.root} "
                        f"({len(stale)} ids differ, e.g. {stale['id'].iloc[0]}); run prepare_folds.py again")
    return merged.drop(columns="_merge").astype({"fold": int})
