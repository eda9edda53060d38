"""Images and masks in two folders, paired by file stem (``data.layout: folders``; TGS's layout):

    {train_dir}/<id>.png|jpg|jpeg|tif|tiff      training images
    {masks_dir}/<id>.png|gif                    their masks: 0/1 or 0/255, or with several classes a
                                                class-index PNG (0 background, k for class k)
    {test_dir}/<id>.<image suffix>              test images, listed in id order

An image without a mask is listed with mask '' and refused by the check; a mask without an image is refused
at once (a wrong folder or name). The helpers that list images by stem serve the RLE CSV layout too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ternaus.data.source import DataSource
from ternaus.data.files import IMAGE_SUFFIXES, MASK_SUFFIXES, read_class_mask, read_mask
from ternaus.errors import DataError

__all__ = ["list_train", "test_rows", "load_masks", "missing_mask", "list_folder", "files_by_stem", "images_in"]


def list_folder(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist; check data.root and the data.*_dir keys")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others = [p.name for p in files if p.suffix.lower() not in suffixes]
    if others:
        raise DataError(f"{folder} holds {len(others)} file(s) that are not {what} ({', '.join(suffixes)}), e.g. "
                        f"{others[:3]}; convert them or move them out")
    return files


def files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """``{stem: path}``; two files of one stem (``a.png`` and ``a.jpg``) are refused: which one is meant?"""
    found: dict[str, Path] = {}
    for path in list_folder(folder, suffixes, what):
        if path.stem in found:
            raise DataError(f"{folder} holds both {found[path.stem].name} and {path.name}; keep one file per image")
        found[path.stem] = path
    return found


def images_in(source: DataSource, folder_key: str) -> dict[str, Path]:
    """The images of the folder ``data.<folder_key>`` by stem; an empty folder is refused."""
    folder = source.path(getattr(source.settings, folder_key))
    images = files_by_stem(folder, IMAGE_SUFFIXES, "images")
    if not images:
        raise DataError(f"no images in {folder}; put them there or point data.root (or data.{folder_key}) at them")
    return images


def list_train(source: DataSource) -> pd.DataFrame:
    """``images/`` and ``masks/`` paired by stem; an image without a mask is listed with mask '' (refused later)."""
    images = images_in(source, "train_dir")
    masks = files_by_stem(source.masks_dir, MASK_SUFFIXES, "masks")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{len(orphans)} mask(s) in {source.masks_dir} have no image in "
                        f"{source.train_dir}, e.g. {orphans[:3]}; masks pair with images by file stem")
    return pd.DataFrame([{"id": stem, "image": str(path), "mask": str(masks.get(stem, "")), "rle": ""}
                         for stem, path in images.items()])


def test_rows(source: DataSource) -> list[dict[str, Any]]:
    """The test images as rows (id, image path), sorted by id; the sample submission orders the rows later."""
    return [{"id": stem, "image": str(path)} for stem, path in images_in(source, "test_dir").items()]


def load_masks(row: Any, shape: tuple[int, int], spec: Any) -> np.ndarray:
    """The (C, H, W) uint8 0/1 masks of a row: a binary mask file, or with several classes a class-index PNG."""
    if spec.num_classes > 1:
        return read_class_mask(row["mask"], spec.num_classes)
    return read_mask(row["mask"])[None]


def missing_mask(row: Any) -> str:
    """What a row without a mask lacks, for the check's message."""
    return f"{row['id']}.png nor {row['id']}.gif in data.masks_dir"
