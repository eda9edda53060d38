"""Images in a folder, masks as rows of an RLE CSV (``data.layout: rle_csv``; Airbus's and Severstal's layout):

    {train_dir}/<id>.<image suffix>     training images
    {masks_csv}                         one row per image, per object (unioned: Airbus) or per (image, class)
                                        (Severstal), in the convention ``data.rle`` (order, start, ...)
    {test_dir}/<id>.<image suffix>      test images, listed in id order

Columns are ``data.csv.*``. An image the CSV does not list has empty masks (Severstal lists only the
defects); a CSV row without its image is refused (a wrong folder or name). Rows carry ``runs``: a tuple of
(class index, RLE) pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ternaus.data.source import DataSource
from ternaus.data.files import duplicates, read_text_csv
from ternaus.data.folders import images_in, test_rows
from ternaus.data.ids import normalise_ids
from ternaus.errors import DataError
from ternaus.rle import decode_rle

__all__ = ["list_train", "test_rows", "load_masks", "missing_mask"]


def _read_masks_csv(source: DataSource) -> pd.DataFrame:
    csv = source.csv
    wanted = [csv.image_column, csv.rle_column] + ([csv.class_column] if csv.rows == "image_class" else [])
    return read_text_csv(source.masks_csv, wanted,
                         "set data.csv.image_column, rle_column and class_column to its header",
                         absent_hint="set data.masks_csv to the competition's masks CSV")


def _class_indices(values: pd.Series, source: DataSource) -> list[int]:
    names = list(source.classes)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{source.masks_csv}: classes {unknown[:5]} are not in data.class_names "
                        f"{names}; list the competition's classes there (and set model.num_classes)")
    return [names.index(v) for v in values]


def _runs_by_image(table: pd.DataFrame, source: DataSource, suffixes: dict[str, str]) -> dict[str, list[tuple[int, str]]]:
    """Each image's (class index, RLE) rows; ``suffixes``: each training image's file suffix, by id."""
    csv, where = source.csv, str(source.masks_csv)
    stems = pd.Series(normalise_ids(table[csv.image_column], where, suffixes, unique=False), dtype=str)
    if csv.rows == "image":
        repeated = duplicates(stems)
        if repeated:
            raise DataError(f"{where} lists {len(repeated)} image(s) more than once, e.g. "
                            f"{repeated[:3]}; for one row per object set data.csv.rows=instance")
    classes = _class_indices(table[csv.class_column], source) if csv.rows == "image_class" else [0] * len(table)
    if csv.rows == "image_class":
        repeated = duplicates(stems + " class " + pd.Series(table[csv.class_column].tolist(), dtype=str))
        if repeated:
            raise DataError(f"{where} lists {len(repeated)} (image, class) pair(s) more than once, e.g. "
                            f"{repeated[:3]}; keep one row per image and class")
    runs: dict[str, list[tuple[int, str]]] = {}
    for stem, class_index, rle in zip(stems, classes, table[csv.rle_column]):
        runs.setdefault(stem, []).append((class_index, rle))
    return runs


def list_train(source: DataSource) -> pd.DataFrame:
    """Every image of ``train_dir``, with its CSV rows as ``runs``."""
    images = images_in(source, "train_dir")
    runs = _runs_by_image(_read_masks_csv(source), source, {stem: path.suffix for stem, path in images.items()})
    strays = sorted(set(runs) - set(images))
    if strays:
        raise DataError(f"{len(strays)} image(s) of {source.masks_csv} are not in "
                        f"{source.train_dir}, e.g. {strays[:3]}; check data.train_dir and "
                        "data.csv.image_column")
    return pd.DataFrame([{"id": stem, "image": str(path), "mask": "", "rle": "", "runs": tuple(runs.get(stem, ()))}
                         for stem, path in images.items()])


def load_masks(row: Any, shape: tuple[int, int], spec: Any) -> np.ndarray:
    """The (C, H, W) uint8 0/1 masks of a row, decoded from its runs in ``spec.rle``; instances are unioned."""
    masks = np.zeros((spec.num_classes, *shape), np.uint8)
    for class_index, rle in row["runs"]:
        try:
            masks[class_index] |= decode_rle(rle, shape, spec.rle)
        except ValueError as err:
            raise DataError(f"RLE mask of {row['id']} (class {class_index + 1}) in the masks CSV does not fit its "
                            f"{shape[1]}x{shape[0]} image: {err}; check data.rle (order, start) and the "
                            "image") from None
    return masks


def missing_mask(row: Any) -> str:
    """Never called: every image has its (possibly empty) rows."""
    return f"a row of {row['id']} in data.masks_csv"
