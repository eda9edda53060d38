"""Carvana's layout (``data.layout: carvana``), as the competition shipped it:

    train/<car>_<view>.jpg          training images
    train_masks/<car>_<view>_mask.gif    their masks (palette GIFs, 0/1), or
    train_masks.csv                 img,rle_mask: the same masks as row-major RLE (used where a GIF is missing)
    test/<car>_<view>.jpg           test images
    sample_submission.csv           img,rle_mask: the test images, in the order a submission lists them

An image's id is its file name without ``.jpg``; its car is the id up to the last ``_`` (``car_id_of``).
One class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ternaus.data.source import DataSource
from ternaus.data.files import read_id_csv, read_mask
from ternaus.data.ids import normalise_ids
from ternaus.errors import DataError
from ternaus.rle import rle_decode

__all__ = ["car_id_of", "list_train", "list_test", "test_rows", "load_masks", "missing_mask"]


def car_id_of(image_id: str) -> str:
    """``00087a6bd4dc_01`` -> ``00087a6bd4dc``: the views of one car share everything but the angle."""
    return image_id.rsplit("_", 1)[0]


def _ids_in(folder: Path, suffix: str) -> list[str]:
    """The ids of ``*{suffix}`` files; any other file is refused rather than silently skipped."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist; check data.root and the data.*_dir keys")
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    others = sorted(n for n in names if not n.endswith(suffix))
    spellings = (suffix, ".jpeg") if suffix == ".jpg" else (suffix,)  # the same files under another name
    renamable = [n for n in others if n.lower().endswith(spellings)]
    if renamable:
        raise DataError(f"{folder} holds {len(renamable)} file(s) whose names do not end in {suffix} exactly, e.g. "
                        f"{renamable[:3]}; renaming them to end in {suffix} (lower case) is enough, the files "
                        "need no conversion")
    if others:
        raise DataError(f"{folder} holds {len(others)} file(s) that are not *{suffix} and would be skipped, "
                        f"e.g. {others[:3]}; convert them to {suffix} or move them out")
    return sorted(n[: -len(suffix)] for n in names)


def _read_rle_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    table = read_id_csv(path, ["img", "rle_mask"])
    return dict(zip(normalise_ids(table["img"], str(path), (".jpg",)), table["rle_mask"]))


def list_train(source: DataSource) -> pd.DataFrame:
    """One row per training image: id, car_id, image path, mask path ('' if none), RLE ('' if none)."""
    image_dir, mask_dir = source.train_dir, source.masks_dir
    ids = _ids_in(image_dir, ".jpg")
    if not ids:
        raise DataError(f"no training images (*.jpg) in {image_dir}; put the training images there, "
                        "or point data.root (or data.train_dir) at the folder that holds them")
    rles = _read_rle_csv(source.masks_csv)
    rows = []
    for image_id in ids:
        mask_path = mask_dir / f"{image_id}_mask.gif"
        rows.append({
            "id": image_id,
            "car_id": car_id_of(image_id),
            "image": str(image_dir / f"{image_id}.jpg"),
            "mask": str(mask_path) if mask_path.is_file() else "",
            "rle": rles.get(image_id, ""),
        })
    return pd.DataFrame(rows)


def list_test(source: DataSource) -> list[str]:
    """Test ids in ``sample_submission.csv`` order, checked against the images in ``test/``."""
    test_dir = source.test_dir
    on_disk = set(_ids_in(test_dir, ".jpg"))
    sample = source.sample_submission
    if not sample.is_file():
        raise DataError(f"{sample} does not exist; it fixes the submission's rows (set data.sample_submission)")
    ids = normalise_ids(read_id_csv(sample, ["img"])["img"], str(sample), (".jpg",))
    if not ids:
        raise DataError(f"{sample} lists no test images; use the competition's sample_submission.csv")
    missing = [i for i in ids if i not in on_disk]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {sample} are not in {test_dir}, e.g. {missing[:3]}; "
                        "copy them there, or use the sample submission that belongs to this test set")
    unlisted = sorted(on_disk - set(ids))
    if unlisted:
        raise DataError(f"{len(unlisted)} image(s) in {test_dir} are not in {sample}, e.g. {unlisted[:3]}; "
                        "the submission's rows come from the sample: use the one that belongs to this test set")
    return ids


def test_rows(source: DataSource) -> list[dict[str, str]]:
    """The test images as rows (id, image path), in sample order."""
    return [{"id": i, "image": str(source.test_dir / f"{i}.jpg")} for i in list_test(source)]


def load_masks(row: Any, shape: tuple[int, int], spec: Any = None) -> np.ndarray:
    """The (1, H, W) uint8 0/1 mask of a training row: its GIF, else its row of the masks CSV."""
    if row["mask"]:
        return read_mask(row["mask"])[None]
    try:
        return rle_decode(row["rle"], shape)[None]
    except ValueError as err:
        raise DataError(f"RLE mask of {row['id']} in the masks CSV is invalid: {err}") from None


def missing_mask(row: Any) -> str:
    """What a row without a mask lacks, for the check's message."""
    return f"{row['id']}_mask.gif nor a row in the masks CSV"
