"""Reading and checking files: images, masks, prediction PNGs, and the CSVs that list them.

Images are read with OpenCV (RGB uint8), masks with Pillow (Carvana's masks are palette GIFs, which OpenCV
cannot read). Binary masks are 0/1; 0/255 files are accepted and normalised; anything else is refused.
A prediction PNG holds uint8 probabilities, the classes stacked top to bottom.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from ternaus.config import DataConfig
from ternaus.errors import DataError

__all__ = ["read_image", "read_mask", "read_class_mask", "image_size", "image_file_problem", "check_image_files",
           "declared_size_problem", "jpeg_scan_start", "jpeg_problem",
           "prediction_image", "read_prediction", "listing", "duplicates", "read_id_csv", "CSV_ERRORS",
           "IMAGE_SUFFIXES", "MASK_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".gif")


# ---------------------------------------------------------------- images


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TAIL = 4096  # a JPEG's end marker is within its last bytes; entropy-coded data never contains FF D9
# Markers that stand alone (no length follows): TEM, RST0-7; everything else up to the scan has a length.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def jpeg_scan_start(f: BinaryIO, size: int) -> int | str:
    """Where a JPEG's first entropy-coded scan starts: the header's segments (APPn, EXIF with its thumbnail,
    tables) walked by their declared lengths from the SOI marker to the end of the SOS segment. Else what is
    wrong: "truncated" (the segments run past the end of the file) or "broken" (they do not chain)."""
    position = 2
    while position + 4 <= size:
        f.seek(position)
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return "broken"
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(head[2:4], "big")
        if marker in (0xD8, 0xD9) or length < 2:  # a second SOI, the end before any scan, a bad length
            return "broken"
        position += 2 + length
        if marker == 0xDA:
            return position if position <= size else "truncated"
    return "truncated"


def jpeg_problem(f: BinaryIO, size: int) -> str | None:
    """What is wrong with a JPEG's structure (``f`` at any position, ``size`` bytes), for "{path} is ...": a
    header that does not chain to a scan, or no end marker (FF D9) after the scan starts within the last TAIL
    bytes; an FF D9 inside the header (an EXIF thumbnail's end) does not count."""
    scan = jpeg_scan_start(f, size)
    if scan == "broken":
        return "not a readable image (its JPEG header is broken); replace it"
    if scan != "truncated":
        start = max(scan, size - TAIL)
        f.seek(start)
        if JPEG_END in f.read(size - start):
            return None
    return "truncated (the JPEG has no end marker); copy or download it again"


def _bytes_problem(path: Path, f: BinaryIO, size: int) -> str | None:
    """Empty, or a JPEG without its end; ``f``: the open file (or its bytes in a BytesIO), at any position."""
    if size == 0:
        return f"{path} is empty (0 bytes); replace it with the original image"
    f.seek(0)
    if f.read(2) == JPEG_START:
        problem = jpeg_problem(f, size)
        return f"{path} is {problem}" if problem else None
    return None


def declared_size_problem(path: Path, max_pixels: int) -> str | None:
    """What is wrong with the size an image or mask file's header declares (JPEG, PNG, TIFF, GIF: Pillow reads
    the header alone), or None: more than ``max_pixels`` (data.max_image_pixels), or no header at all."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as err:  # beyond Pillow's own limit, far beyond any sane setting
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        declared = f"{int(pixels[1]):,} pixels" if pixels else "more pixels than Pillow opens"
        return (f"{path}: its header declares {declared}, more than data.max_image_pixels={max_pixels:,}; "
                "replace the file, or raise data.max_image_pixels if the image is really that large")
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a file that is not an image
        return f"{path} is not a readable image ({err}); replace it"
    if width * height > max_pixels:
        return (f"{path}: its header declares {width} x {height} = {width * height:,} pixels, more than "
                f"data.max_image_pixels={max_pixels:,}; replace the file, or raise data.max_image_pixels if the "
                "image is really that large")
    return None


def image_file_problem(path: str | Path, max_pixels: int = DataConfig.max_image_pixels) -> str | None:
    """What is wrong with an image file, from its first and last bytes and its header (no decoding), or None."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            problem = _bytes_problem(path, f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    return problem or declared_size_problem(path, max_pixels)


def check_image_files(paths: list[Path], max_pixels: int = DataConfig.max_image_pixels) -> None:
    """Refuse, before any long work, image files that are missing, empty, truncated, not images or too large."""
    problems = [p for p in (image_file_problem(path, max_pixels) for path in paths) if p]
    if problems:
        raise DataError(listing(f"{len(problems)} of {len(paths)} image file(s) cannot be used", problems))


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array (H, W, 3); a truncated JPEG is refused as such, by the same test the early check uses."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    problem = _bytes_problem(path, io.BytesIO(data), len(data))
    if problem:
        raise DataError(problem)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {path} cannot be decoded (not an image); replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path} is not a readable image ({err}); replace it") from None
    return height, width


# ---------------------------------------------------------------- masks


def normalise_mask_values(mask: np.ndarray, source: str) -> np.ndarray:
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all():
        return mask.astype(np.uint8, copy=False)
    if np.isin(values, (0, 255)).all():
        return (mask == 255).astype(np.uint8)
    raise DataError(f"mask {source} holds values {values[:8].tolist()}; expected 0/1 or 0/255 "
                    "(a binary mask: save it with exactly two values)")


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 0/1 array (H, W) from a GIF or PNG mask."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mask = np.array(img.convert("L") if img.mode not in ("P", "L", "1") else img)
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(f"mask {path} cannot be read ({err}); replace it") from None
    return normalise_mask_values(mask, str(path))


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


# ---------------------------------------------------------------- prediction PNGs


def prediction_image(levels: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 probabilities -> the prediction PNG's one greyscale (C * H, W) image: the classes stacked
    top to bottom, any number of them (read_prediction takes them apart); one class is the plain (H, W) map."""
    return levels.reshape(-1, levels.shape[-1])


def read_prediction(path: str | Path, num_classes: int) -> np.ndarray | None:
    """(C, H, W) uint8 probabilities from a prediction PNG, or None when it cannot be read."""
    stacked = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if stacked is None or stacked.ndim != 2 or stacked.shape[0] % num_classes:
        return None
    return stacked.reshape(num_classes, -1, stacked.shape[1])


# ---------------------------------------------------------------- CSVs and problem lists


# What pandas raises for a file that is not a readable CSV.
CSV_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError)


def listing(title: str, problems: list[str], limit: int = 50) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{title}:\n  {shown}{more}"


def duplicates(values: pd.Series) -> list[str]:
    """The values that occur more than once, each named once."""
    counts = values.value_counts()
    return sorted(counts[counts > 1].index.tolist())


def read_id_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A CSV keyed by image name, with its header and the uniqueness of its ids checked."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except CSV_ERRORS as err:
        raise DataError(f"{path} is not a readable CSV ({str(err).strip()[:200]}); replace it") from None
    if list(table.columns[: len(columns)]) != columns:
        raise DataError(f"{path}: expected the header '{','.join(columns)}', got '{','.join(table.columns)}'")
    repeated = duplicates(table[columns[0]])
    if repeated:
        raise DataError(f"{path} lists {len(repeated)} image(s) more than once, e.g. {repeated[:3]}; "
                        "keep one row per image")
    return table
