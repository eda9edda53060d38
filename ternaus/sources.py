"""Data sources besides Carvana's layout, chosen by ``data.layout``: image and mask folders paired by file
stem ("folders"), or images with masks as rows of an RLE CSV ("rle_csv": one row per image, per instance,
or per (image, class)). Every source lists the same rows: ``id`` (the image's file stem), ``image`` (its
path), ``mask`` (a mask file, or "") and ``runs`` (a tuple of (class index, RLE) pairs, possibly empty).

Masks are read as (C, H, W) uint8 0/1 arrays, one plane per class, whatever their source: ``load_masks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ternaus.config import Config, class_names, resolve
from ternaus.data import CSV_ERRORS, DataError, load_train_mask
from ternaus.rle import CARVANA_RLE, RleFormat, decode_rle

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIXES", "MaskSpec", "mask_spec", "load_masks", "list_folder", "files_by_stem",
           "list_folders_layout", "list_rle_csv_layout", "list_test_images", "image_stem", "read_class_mask"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".gif")


@dataclass(frozen=True)
class MaskSpec:
    """What ``load_masks`` needs besides the row: how many classes, and the RLE convention of the CSV."""

    num_classes: int = 1
    rle: RleFormat = CARVANA_RLE
    class_index_files: bool = False  # the folders layout: with several classes a mask file holds class indices


def mask_spec(cfg: Config) -> MaskSpec:
    rle = cfg.data.rle
    return MaskSpec(cfg.model.num_classes, RleFormat(rle.order, rle.start, rle.relative, rle.empty),
                    cfg.data.layout == "folders")


# ---------------------------------------------------------------- reading masks


def read_class_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """(C, H, W) 0/1 planes from a class-index PNG: pixel value k is class k (1..C), 0 the background."""
    try:
        with Image.open(path) as img:
            index = np.array(img.convert("L") if img.mode not in ("P", "L") else img)
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(f"mask {path} cannot be read ({err}); replace it") from None
    if index.max(initial=0) > num_classes:
        raise DataError(f"mask {path} holds class index {int(index.max())}, model.num_classes={num_classes}; "
                        "a class-index mask holds 0 (background) to num_classes")
    return (index[None] == np.arange(1, num_classes + 1)[:, None, None]).astype(np.uint8)


def _decode_runs(row: dict, shape: tuple[int, int], spec: MaskSpec) -> np.ndarray:
    masks = np.zeros((spec.num_classes, *shape), np.uint8)
    for class_index, rle in row["runs"]:
        try:
            masks[class_index] |= decode_rle(rle, shape, spec.rle)  # instances of one image are unioned
        except ValueError as err:
            raise DataError(f"RLE mask of {row['id']} (class {class_index + 1}) in the masks CSV does not fit its "
                            f"{shape[1]}x{shape[0]} image: {err}; check data.rle (order, start) and the image") from None
    return masks


def load_masks(row: dict, shape: tuple[int, int], spec: MaskSpec = MaskSpec()) -> np.ndarray:
    """The (C, H, W) uint8 0/1 masks of a training row, from whichever source the layout gave it."""
    if isinstance(row.get("runs"), tuple):
        return _decode_runs(row, shape, spec)
    if row.get("mask") and spec.class_index_files and spec.num_classes > 1:
        return read_class_mask(row["mask"], spec.num_classes)
    return load_train_mask(row, shape)[None]


# ---------------------------------------------------------------- listing files by stem


def image_stem(name: str) -> str:
    """``0002cc93b.jpg`` -> ``0002cc93b``; a name without an image suffix stays as it is (TGS's ids)."""
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else name


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


def _images(cfg: Config, folder_key: str) -> dict[str, Path]:
    folder = resolve(cfg, getattr(cfg.data, folder_key))
    images = files_by_stem(folder, IMAGE_SUFFIXES, "images")
    if not images:
        raise DataError(f"no images in {folder}; put them there or point data.root (or data.{folder_key}) at them")
    return images


def list_folders_layout(cfg: Config) -> pd.DataFrame:
    """``images/`` and ``masks/`` paired by stem; an image without a mask is listed with mask '' (refused later)."""
    images = _images(cfg, "train_dir")
    masks = files_by_stem(resolve(cfg, cfg.data.masks_dir), MASK_SUFFIXES, "masks")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{len(orphans)} mask(s) in {resolve(cfg, cfg.data.masks_dir)} have no image in "
                        f"{resolve(cfg, cfg.data.train_dir)}, e.g. {orphans[:3]}; masks pair with images by file stem")
    return pd.DataFrame([{"id": stem, "image": str(path), "mask": str(masks.get(stem, "")), "rle": ""}
                         for stem, path in images.items()])


# ---------------------------------------------------------------- RLE CSV


def _read_masks_csv(cfg: Config) -> pd.DataFrame:
    path, csv = resolve(cfg, cfg.data.masks_csv), cfg.data.csv
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; set data.masks_csv to the competition's masks CSV") from None
    except CSV_ERRORS as err:
        raise DataError(f"{path} is not a readable CSV ({str(err).strip()[:200]}); replace it") from None
    wanted = [csv.image_column, csv.rle_column] + ([csv.class_column] if csv.rows == "image_class" else [])
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataError(f"{path} has no column(s) {missing} (it has {list(table.columns)}); set data.csv.image_column, "
                        "rle_column and class_column to its header")
    return table


def _class_indices(values: pd.Series, cfg: Config) -> list[int]:
    names = class_names(cfg)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{resolve(cfg, cfg.data.masks_csv)}: classes {unknown[:5]} are not in data.class_names "
                        f"{names}; list the competition's classes there (and set model.num_classes)")
    return [names.index(v) for v in values]


def _runs_by_image(table: pd.DataFrame, cfg: Config) -> dict[str, list[tuple[int, str]]]:
    csv = cfg.data.csv
    stems = table[csv.image_column].map(image_stem)
    if csv.rows == "image":
        from ternaus.data import duplicates

        repeated = duplicates(stems)
        if repeated:
            raise DataError(f"{resolve(cfg, cfg.data.masks_csv)} lists {len(repeated)} image(s) more than once, e.g. "
                            f"{repeated[:3]}; for one row per object set data.csv.rows=instance")
    classes = _class_indices(table[csv.class_column], cfg) if csv.rows == "image_class" else [0] * len(table)
    runs: dict[str, list[tuple[int, str]]] = {}
    for stem, class_index, rle in zip(stems, classes, table[csv.rle_column]):
        runs.setdefault(stem, []).append((class_index, rle))
    return runs


def list_rle_csv_layout(cfg: Config) -> pd.DataFrame:
    """Every image of ``train_dir``, with its CSV rows; an image the CSV does not list has empty masks
    (Severstal lists only the defects), but a CSV row without its image is refused (a wrong folder or name)."""
    images = _images(cfg, "train_dir")
    runs = _runs_by_image(_read_masks_csv(cfg), cfg)
    strays = sorted(set(runs) - set(images))
    if strays:
        raise DataError(f"{len(strays)} image(s) of {resolve(cfg, cfg.data.masks_csv)} are not in "
                        f"{resolve(cfg, cfg.data.train_dir)}, e.g. {strays[:3]}; check data.train_dir and "
                        "data.csv.image_column")
    return pd.DataFrame([{"id": stem, "image": str(path), "mask": "", "rle": "", "runs": tuple(runs.get(stem, ()))}
                         for stem, path in images.items()])


def list_test_images(cfg: Config) -> list[dict[str, Any]]:
    """The test images as rows (id, image path), sorted by id; the sample submission orders the rows later."""
    return [{"id": stem, "image": str(path)} for stem, path in _images(cfg, "test_dir").items()]
