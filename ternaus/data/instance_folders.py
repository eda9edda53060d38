"""One folder per image, one mask file per object (``data.layout: instance_folders``; the 2018 Data Science
Bowl's layout as shipped, and Sartorius's once its CSV is written out the same way):

    {train_dir}/<id>/images/<id>.png    the training image (RGBA is read as RGB: the alpha is dropped)
    {train_dir}/<id>/masks/<any>.png    one 0/255 (or 0/1) mask per object, the image's size; objects do not
                                        overlap (a pixel claimed twice is kept by the first file in name order)
    {test_dir}/<id>/images/<id>.png     test images, listed in id order

Image ids are the folder names. The objects are read one by one (``load_objects``), so touching objects stay
apart: as the true objects of an instance metric, and as the training targets. With ``model.num_classes: 2``
the masks are two planes: the objects' union and their **contact lines** (``contact_map``), the pixels that
lie within ``CONTACT_RADIUS`` pixels of two different objects; the post-processing's seeded watershed
(``ternaus.separation``) splits the predicted union along the predicted contacts. Why contacts rather than each
object's whole border: see docs/new-competition.md (the DSB 2018 walk-through).

Rows carry ``objects``: the tuple of the image's mask files (empty: an image without objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from ternaus.data.files import IMAGE_SUFFIXES, MASK_SUFFIXES, read_mask
from ternaus.data.source import DataSource
from ternaus.errors import DataError

__all__ = ["list_train", "test_rows", "load_masks", "missing_mask", "load_objects", "label_map", "contact_map",
           "image_folders", "CONTACT_RADIUS"]

# How far (pixels) two objects' pixels may lie apart and still count as touching: the contact band is the
# overlap of the objects' dilations by this radius. 2 px (a 5x5 square) marks a line 2-4 px wide between nuclei
# that touch or nearly touch, thick enough to survive the network's stride-2 decoder, thin enough to leave
# every nucleus a seed.
CONTACT_RADIUS = 2


def _only_file(folder: Path, suffixes: tuple[str, ...], image_id: str) -> Path | None:
    named = [folder / f"{image_id}{suffix}" for suffix in suffixes if (folder / f"{image_id}{suffix}").is_file()]
    return named[0] if named else None


def image_folders(root: Path, what: str) -> dict[str, Path]:
    """``{id: image path}`` of ``root/<id>/images/<id>.<image suffix>``; a folder without its image, or a file
    where a folder belongs, is refused."""
    if not root.is_dir():
        raise DataError(f"folder {root} does not exist; check data.root and data.{what}")
    found: dict[str, Path] = {}
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    strays = [p.name for p in entries if not p.is_dir()]
    if strays:
        raise DataError(f"{root} holds {len(strays)} file(s) where data.layout=instance_folders expects one folder "
                        f"per image (<id>/images/<id>.png), e.g. {strays[:3]}; move them out or choose another "
                        "data.layout")
    for folder in entries:
        image = _only_file(folder / "images", IMAGE_SUFFIXES, folder.name)
        if image is None:
            raise DataError(f"{folder}/images/ has no {folder.name}.png (or another image suffix): each folder of "
                            f"{root} holds its image as <id>/images/<id>.png; add it or remove the folder")
        found[folder.name] = image
    if not found:
        raise DataError(f"no image folders in {root}; point data.root (or data.{what}) at them")
    return found


def _mask_files(image_path: Path) -> tuple[str, ...]:
    masks = image_path.parent.parent / "masks"
    if not masks.is_dir():
        return ()
    return tuple(str(p) for p in sorted(masks.iterdir()) if p.suffix.lower() in MASK_SUFFIXES
                 and not p.name.startswith("."))


def list_train(source: DataSource) -> pd.DataFrame:
    """One row per folder of ``data.train_dir``: ``objects``, its mask files (an image without a ``masks/``
    folder has none: an image with no object)."""
    images = image_folders(source.train_dir, "train_dir")
    return pd.DataFrame([{"id": image_id, "image": str(path), "mask": "", "rle": "", "objects": _mask_files(path)}
                         for image_id, path in images.items()])


def test_rows(source: DataSource) -> list[dict[str, Any]]:
    """The test images as rows (id, image path), sorted by id."""
    return [{"id": image_id, "image": str(path)}
            for image_id, path in image_folders(source.test_dir, "test_dir").items()]


def load_objects(row: Any, shape: tuple[int, int]) -> list[np.ndarray]:
    """The row's objects as (H, W) boolean masks, one per mask file, in file-name order; an empty file is
    dropped. A mask of another size than ``shape`` (its image's) is refused."""
    objects = []
    for path in row["objects"]:
        mask = read_mask(path)
        if mask.shape != tuple(shape):
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {shape[1]}x{shape[0]}; "
                            "each object's mask must have its image's size")
        if mask.any():
            objects.append(mask.astype(bool))
    return objects


def label_map(objects: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32: 0 background, k for the k-th object (1-based); a pixel two objects claim keeps the first."""
    labels = np.zeros(shape, np.int32)
    for k, mask in enumerate(objects, start=1):
        labels[mask & (labels == 0)] = k
    return labels


def contact_map(labels: np.ndarray, radius: int = CONTACT_RADIUS) -> np.ndarray:
    """(H, W) uint8 0/1: the pixels within ``radius`` (a (2r+1)-square) of two different objects of the label
    map ``labels`` (0 background). Each object is dilated inside its own bounding box, grown by ``radius``, so
    the cost is the objects' area, not their number times the image's."""
    height, width = labels.shape
    reached = np.zeros(labels.shape, np.uint8)  # how many objects reach each pixel (capped at 2)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        top, bottom = max(box[0].start - radius, 0), min(box[0].stop + radius, height)
        left, right = max(box[1].start - radius, 0), min(box[1].stop + radius, width)
        grown = cv2.dilate((labels[top:bottom, left:right] == k).astype(np.uint8), kernel)
        window = reached[top:bottom, left:right]
        np.minimum(window + grown, 2, out=window)
    return (reached >= 2).astype(np.uint8)


def load_masks(row: Any, shape: tuple[int, int], spec: Any) -> np.ndarray:
    """The (C, H, W) uint8 0/1 masks of a row: C = 1, the union of its objects; C = 2 (``model.num_classes: 2``)
    adds their contact lines (``contact_map``)."""
    if spec.num_classes not in (1, 2):
        raise DataError(f"data.layout=instance_folders makes 1 plane (the objects) or 2 (objects, contacts), "
                        f"not model.num_classes={spec.num_classes}; set model.num_classes to 1 or 2")
    labels = label_map(load_objects(row, shape), shape)
    union = (labels > 0).astype(np.uint8)
    return union[None] if spec.num_classes == 1 else np.stack([union, contact_map(labels)])


def missing_mask(row: Any) -> str:
    """Never called: every row has its (possibly empty) objects."""
    return f"masks/*.png of {row['id']}"
