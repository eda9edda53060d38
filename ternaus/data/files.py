"""Reading and checking files: images, masks, prediction PNGs, and the CSVs that list them.

Images are read with OpenCV (RGB uint8), masks with Pillow (Carvana's masks are palette GIFs, which OpenCV
cannot read). Every reader keeps the stored pixel order, whatever an EXIF or TIFF orientation tag says: the
frame competitions' masks and RLE use. 16-bit images are scaled by ``data.image_max`` or refused.

A binary mask means what a viewer shows: 0/1, 0/255 (or 0/65535 in a 16-bit file) grey levels, a palette of
greys read as the greys it shows (white is the object), a palette of colours read by index; with an alpha
channel that is not everywhere opaque, the shape is its opaque part. Anything else is refused. Class-index
masks are read by index. A prediction PNG holds uint8 probabilities, the classes stacked top to bottom.
"""

from __future__ import annotations

import io
import os
import re
import struct
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
           "prediction_image", "read_prediction", "png_shape", "listing", "duplicates", "read_id_csv", "read_text_csv",
           "CSV_ERRORS",
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


ORIENTATION_TAG = 274  # TIFF and EXIF: how the stored rows map to the displayed picture
# OpenCV turns a JPEG, PNG or WebP by its EXIF orientation unless told not to; its TIFF decoder (and Pillow's)
# turns a TIFF whatever the flags say, so a TIFF's tag is set to "as stored" before decoding (_as_stored).
IMAGE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION


def _tiff_orientation_at(data: bytes) -> tuple[int, str] | None:
    """(offset, byte order) of the orientation value in a TIFF's first directory, or None (not a TIFF, no tag)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    try:
        version = struct.unpack_from(order + "H", data, 2)[0]
        if version == 42:  # classic TIFF: 4-byte offsets, 12-byte entries
            directory, = struct.unpack_from(order + "I", data, 4)
            count, = struct.unpack_from(order + "H", data, directory)
            first, entry, value = directory + 2, 12, 8
        elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
            directory, = struct.unpack_from(order + "Q", data, 8)
            count, = struct.unpack_from(order + "Q", data, directory)
            first, entry, value = directory + 8, 20, 12
        else:
            return None
        for at in range(first, first + count * entry, entry):
            if struct.unpack_from(order + "H", data, at)[0] == ORIENTATION_TAG:
                return at + value, order
    except struct.error:  # a cut-short file: the decoder reports it
        return None
    return None


def _as_stored(data: bytes) -> bytes:
    """The file's bytes with a TIFF orientation tag set to 1 (rows top to bottom as stored); others unchanged."""
    found = _tiff_orientation_at(data)
    if found is None:
        return data
    at, order = found
    patched = bytearray(data)
    struct.pack_into(order + "H", patched, at, 1)
    return bytes(patched)


def _to_eight_bits(image: np.ndarray, path: Path, image_max: int | None) -> np.ndarray:
    """A 16-bit image scaled so that ``image_max`` becomes 255: never the silent top byte OpenCV would keep."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise DataError(f"image {path} holds {image.dtype} values; save it with 8- or 16-bit integers")
    top = int(image.max(initial=0))
    if image_max is None:
        raise DataError(f"image {path} is 16-bit (largest value {top}); set data.image_max to the largest value "
                        "the images can hold (4095 for 12-bit data, 65535 for the full range): it becomes 255")
    if top > image_max:
        raise DataError(f"image {path} holds {top}, above data.image_max={image_max}; set data.image_max to the "
                        "largest value the images can hold")
    return np.round(image * (255.0 / image_max)).astype(np.uint8)


def read_image(path: str | Path, image_max: int | None = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3) in the stored pixel order (orientation tags ignored); a 16-bit image scaled by
    ``image_max`` (``data.image_max``: the value that becomes 255), or refused without it. A truncated JPEG is
    refused as such, by the same test the early check uses."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    problem = _bytes_problem(path, io.BytesIO(data), len(data))
    if problem:
        raise DataError(problem)
    image = cv2.imdecode(np.frombuffer(_as_stored(data), np.uint8), IMAGE_FLAGS)
    if image is None:
        raise DataError(f"image {path} cannot be decoded (not an image); replace or remove it")
    return cv2.cvtColor(_to_eight_bits(image, path, image_max), cv2.COLOR_BGR2RGB)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) as stored, from the file header, without decoding the pixels (Pillow reports a turned TIFF's
    displayed size: its directory's width and length are read instead)."""
    try:
        with Image.open(path) as img:
            tags = getattr(img, "tag_v2", None)
            width, height = (tags[256], tags[257]) if tags is not None else img.size
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path} is not a readable image ({err}); replace it") from None
    return height, width


# ---------------------------------------------------------------- masks


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's 16-bit greyscale (TGS's non-empty masks)


def _distinct_values(array: np.ndarray) -> np.ndarray:
    """The sorted values present; 8-bit ones counted (a Carvana mask in 1 ms, where sorting takes 40)."""
    if array.dtype in (np.bool_, np.uint8) and array.size:
        rows = np.ascontiguousarray(array).view(np.uint8).reshape(len(array) if array.ndim > 1 else 1, -1)
        counts = cv2.calcHist([rows], [0], None, [256], [0, 256])
        return np.flatnonzero(counts.ravel())
    return np.unique(array)


def normalise_mask_values(mask: np.ndarray, source: str) -> np.ndarray:
    """0/1 uint8 from a binary mask's values: 0/1, 0/255, or 0/65535 in a 16-bit file; others refused."""
    values = set(_distinct_values(mask).tolist())
    if values <= {0, 1}:
        return mask.astype(np.uint8, copy=False)
    for full in (255, 65535):
        if values <= {0, full}:
            return (mask == full).astype(np.uint8)
    raise DataError(f"mask {source} holds values {sorted(values)[:8]}; expected 0/1 or 0/255 (or 0/65535 in a 16-bit "
                    "file) for a binary mask: save it with exactly two values")


def _open_mask(path: Path) -> Image.Image:
    """The decoded mask image (its pixels loaded, so a damaged file is refused here)."""
    try:
        img = Image.open(path)
        try:
            img.load()
        except BaseException:
            img.close()
            raise
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(f"mask {path} cannot be read ({err}); replace it") from None
    return img


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "transparency" in img.info


def _alpha_shape(img: Image.Image, path: Path) -> np.ndarray | None:
    """The shape held by a mask's alpha: opaque pixels are the object. None when every pixel is opaque (the
    colours hold the shape); refused when the opaque pixels show more than one colour (which is meant?)."""
    rgba = np.array(img.convert("RGBA"))
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return None
    opaque = rgba[..., :3][alpha > 0]
    if len(opaque) and (opaque != opaque[0]).any():
        raise DataError(f"mask {path} draws shapes in its colours and in its alpha channel; save the mask with "
                        "the shape in one of them (opaque = object, or white on black without transparency)")
    return normalise_mask_values(alpha, f"{path} (its alpha channel)")


def _palette_shown(img: Image.Image) -> np.ndarray:
    """A palette mask's pixels: the grey levels its palette shows when every colour used is a grey (white is the
    object, whatever its index); the indices themselves when colours are used (class-index palettes)."""
    index = np.array(img)
    palette = np.zeros((256, 3), np.uint8)
    colours = np.array(img.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
    palette[: len(colours)] = colours
    used = palette[_distinct_values(index)]
    if (used == used[:, :1]).all():
        return cv2.LUT(index, palette[:, 0])
    return index


def _mask_pixels(img: Image.Image, path: Path) -> np.ndarray:
    if _has_alpha(img):
        shape = _alpha_shape(img, path)
        if shape is not None:
            return shape
        if img.mode in ("RGBA", "LA", "PA"):
            img = img.convert("RGBA").convert("L")
    if img.mode == "P":
        return _palette_shown(img)
    if img.mode in ("L", "1", *SIXTEEN_BIT_MODES):
        return np.array(img)
    return np.array(img.convert("L"))


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 0/1 array (H, W) from a GIF or PNG mask, as a viewer shows it (see the module's docstring), in the
    stored pixel order."""
    path = Path(path)
    with _open_mask(path) as img:
        pixels = _mask_pixels(img, path)
    return normalise_mask_values(pixels, str(path))


def read_class_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """(C, H, W) 0/1 planes from a class-index PNG: pixel value k is class k (1..C), 0 the background; a palette
    PNG is read by index whatever colours it shows. A transparent part is refused (an index cannot be in it)."""
    path = Path(path)
    with _open_mask(path) as img:
        if "A" in img.getbands() and np.array(img.getchannel("A")).min(initial=255) < 255:
            raise DataError(f"class-index mask {path} has transparent pixels; save the class indices without an "
                            "alpha channel (0 background, k for class k)")
        index = np.array(img if img.mode in ("P", "L", *SIXTEEN_BIT_MODES) else img.convert("L"))
    if index.max(initial=0) > num_classes:
        raise DataError(f"mask {path} holds class index {int(index.max())}, model.num_classes={num_classes}; "
                        "a class-index mask holds 0 (background) to num_classes")
    return (index[None] == np.arange(1, num_classes + 1)[:, None, None]).astype(np.uint8)


# ---------------------------------------------------------------- prediction PNGs


def prediction_image(levels: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 probabilities -> the prediction PNG's one greyscale (C * H, W) image: the classes stacked
    top to bottom, any number of them (read_prediction takes them apart); one class is the plain (H, W) map."""
    return levels.reshape(-1, levels.shape[-1])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_shape(path: str | Path) -> tuple[int, int] | None:
    """(height, width) of a PNG from its header (its first 24 bytes), or None when it is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


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


def read_text_csv(path: Path, columns: list[str], columns_hint: str, *, what: str = "",
                  absent_hint: str = "") -> pd.DataFrame:
    """A CSV read as strings (empty cells stay ""), with the named columns required.

    Raises DataError naming the file when it is absent, not a readable CSV, or lacks one of `columns`;
    `columns_hint` says what to set when a column is missing, `absent_hint` what to do when the file is."""
    label = f"{what} {path}" if what else str(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{label} does not exist{'; ' + absent_hint if absent_hint else ''}") from None
    except CSV_ERRORS as err:
        raise DataError(f"{label} is not a readable CSV ({str(err).strip()[:200]}); replace it") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{label} has no column(s) {missing} (it has {list(table.columns)}); {columns_hint}")
    return table


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
