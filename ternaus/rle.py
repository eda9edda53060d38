"""Run-length encoding of binary masks, Kaggle style.

A mask is written as space-separated ``start length`` pairs. Carvana numbers pixels row by row
(numpy C order) with 1-indexed starts; most other competitions use column-major order (``order="F"``).

Encoding reads each pixel once, to pack the mask into bits (``np.packbits``); run boundaries are then found
64 pixels at a time, in an eighth of the mask's bytes, and the numbers' characters are looked up four digits
at a time in a table rather than made by one Python ``str`` per number (which dominates for masks with many
runs). Decoding writes each pixel once with ``np.repeat``. ``bench/rle.py`` measures both against the textbook
version.

Other competitions differ in four settings (docs/rle.md lists them per competition), held by ``RleFormat``:
the pixel order, the index of the first pixel (1, or 0 for SIIM), absolute starts or starts relative to the end
of the previous run (SIIM), and the token of the empty mask (``""``, or ``-1`` for SIIM). ``encode_rle`` and
``decode_rle`` take one; ``rle_encode``/``rle_decode`` are Carvana's (1-indexed, absolute, empty ``""``).
``RleFormat`` is also the configuration's type for ``data.rle`` and ``submission.rle``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

__all__ = ["rle_encode", "rle_decode", "run_boundaries", "parse_runs", "format_integers", "RleFormat", "encode_rle",
           "decode_rle", "absolute_runs", "is_empty_rle", "CARVANA_RLE"]

_WORD_BITS = 64
# Below this many numbers one ``str.join`` is faster than numpy's fixed cost per call.
_JOIN_BELOW = 64
_LIMB = 10_000
# Above this many numbers, digits are computed in int32 (half the memory traffic) when they fit.
_INT32_ABOVE = 4096


def _check_order(order: str) -> None:
    if order not in ("C", "F"):
        raise ValueError(f"RLE order must be 'C' (row-major, Carvana) or 'F' (column-major), got {order!r}")


def _flat_in_order(mask: np.ndarray, order: str) -> np.ndarray:
    """The mask's pixels in ``order`` as a flat integer or bool array (non-zero = foreground); no copy in C order."""
    if mask.dtype.kind not in "biu":
        mask = mask != 0  # packbits takes integers and bools only
    if order == "C":
        return mask.reshape(-1)
    if mask.dtype.itemsize == 1 and mask.size:
        return cv2.transpose(mask.view(np.uint8)).reshape(-1)  # several times faster than numpy's transposing copy
    return mask.ravel(order="F")


def _changes(flat: np.ndarray) -> np.ndarray:
    """Sorted positions ``i`` where pixel ``i`` is set and ``i - 1`` is not, or the other way round; the pixels
    before the first and after the last count as unset.

    The one pass over the pixels is ``np.packbits`` (any non-zero value is a 1 bit). Everything after it
    works on 64 pixels per word, an eighth of the mask's bytes: a word XOR itself shifted by one pixel (the
    previous word's last pixel carried in) has a bit set exactly where a run starts or ends.
    """
    size = flat.size
    packed = np.packbits(flat, bitorder="little")
    if packed.size % 8:  # whole words; the padding bits are unset, so a run on the last pixel still ends
        packed = np.concatenate([packed, np.zeros(8 - packed.size % 8, np.uint8)])
    words = packed.view("<u8")
    changed = words << np.uint64(1)
    changed[1:] |= words[:-1] >> np.uint64(_WORD_BITS - 1)
    changed ^= words
    hit = np.flatnonzero(changed != 0)  # nonzero is fast on bools only
    bits = np.unpackbits(changed[hit].view(np.uint8), bitorder="little").view(np.bool_)
    index = np.flatnonzero(bits)
    changes = hit[index // _WORD_BITS] * _WORD_BITS + index % _WORD_BITS
    if size % _WORD_BITS == 0 and size and flat[-1]:  # a run that ends on the last bit of a full last word
        changes = np.append(changes, size)
    return changes


def run_boundaries(mask: np.ndarray, order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """0-indexed starts and lengths of the runs of non-zero pixels, in ``order``."""
    _check_order(order)
    changes = _changes(_flat_in_order(np.asarray(mask), order))
    starts = changes[0::2]
    return starts, changes[1::2] - starts


def format_integers(values: np.ndarray) -> str:
    """Non-negative integers as one space-separated decimal string, identical to ``" ".join(map(str, values))``.

    A number is split into 4-digit limbs below a top part of at most 3 digits, and each part's characters are
    looked up whole in a table (``_digit_tables``): a few numpy calls for any count of numbers, and no Python
    object per number. The places left of a number's first digit are NUL bytes, which one ``bytes.translate``
    drops.
    """
    values = np.asarray(values, dtype=np.int64)
    if values.size < _JOIN_BELOW:
        return " ".join(map(str, values.tolist()))
    top_table, last_table, inner_table = _digit_tables()
    biggest = int(values.max())
    limbs = max(1, len(str(biggest)) // 4)  # enough that the top part is below 1000
    records = np.empty((values.size, limbs + 1), np.uint32)  # 4 characters per part: " ddd" then "dddd"...
    whole = values.astype(np.int32) if values.size > _INT32_ABOVE and biggest < 2 ** 31 else values
    rest = whole
    for slot in range(limbs, 0, -1):
        higher = rest // _LIMB
        limb = rest - higher * _LIMB
        # The limb that holds a number's first digit is written unpadded (the tables' second half).
        limb += (whole < _LIMB ** (limbs - slot + 1)) * _LIMB
        records[:, slot] = (last_table if slot == limbs else inner_table)[limb]
        rest = higher
    records[:, 0] = top_table[rest]
    return records.tobytes().translate(None, b"\0")[1:].decode("ascii")


@functools.cache
def _digit_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Characters as uint32 records of 4 bytes: the top part (0-999) as a space and 3 digits, NUL-padded; a limb
    (0-9999) zero-padded in the first half, NUL-padded in the second. Zero alone is "0" in the last limb, and
    nothing in the top part or an inner limb (a number's leading zeros)."""
    def table(texts: list[str]) -> np.ndarray:
        return np.frombuffer("".join(texts).encode("ascii"), np.uint8).view(np.uint32).copy()

    unpadded = [f"{i:4d}".replace(" ", "\0") for i in range(_LIMB)]
    padded = table([f"{i:04d}" for i in range(_LIMB)])
    top = table([" " + (f"{i:3d}".replace(" ", "\0") if i else "\0" * 3) for i in range(1000)])
    last = np.concatenate([padded, table(unpadded)])
    inner = np.concatenate([padded, table(["\0" * 4] + unpadded[1:])])
    return top, last, inner


def rle_encode(mask: np.ndarray, order: str = "C") -> str:
    """Encode a 2-D mask (any non-zero value is foreground) as ``"start length ..."``, starts 1-indexed.

    The empty mask encodes to the empty string.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    starts, lengths = run_boundaries(mask, order)
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return format_integers(pairs)


def parse_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """``"start length ..."`` -> (starts, lengths) as int64 arrays, starts as written (1-indexed).

    Raises ValueError, worded to follow "the RLE ...", for a string that is not integer pairs.
    """
    try:
        numbers = np.array(rle.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"holds something other than integers: {rle[:60]!r}") from None
    except OverflowError:  # numpy's word for an integer beyond int64
        raise ValueError(f"holds a number too large to be a pixel index: {rle[:60]!r}") from None
    if numbers.size % 2:
        raise ValueError(f"has an odd number of values ({numbers.size}); expected 'start length' pairs")
    return numbers[0::2], numbers[1::2]


def rle_decode(rle: str, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Decode ``"start length ..."`` (1-indexed starts) into a uint8 0/1 mask of ``shape`` (H, W)."""
    starts, lengths = parse_runs(rle if isinstance(rle, str) else "")
    return decode_runs(starts - 1, lengths, shape, order)


def decode_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """uint8 0/1 mask of ``shape`` from 0-indexed absolute ``starts`` and ``lengths`` of runs in ``order``."""
    _check_order(order)
    height, width = shape
    size = height * width
    ends = starts + lengths
    if starts.size and (starts.min() < 0 or lengths.min() < 1 or ends.max() > size):
        raise ValueError(f"RLE runs fall outside a {height}x{width} mask or have non-positive values")
    if (starts[1:] >= ends[:-1]).all():  # the empty mask too
        flat = _paint_in_order(starts, ends, size)
    else:
        # Runs out of order or overlapping (not what an encoder writes): +1 at every start and -1 at every
        # end; the running sum is positive inside a run.
        delta = np.bincount(starts, minlength=size + 1) - np.bincount(ends, minlength=size + 1)
        flat = (np.cumsum(delta[:size]) > 0).astype(np.uint8)
    return flat.reshape((height, width), order=order)


def _paint_in_order(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Flat uint8 0/1 from increasing, non-overlapping runs: alternate gaps of 0 and runs of 1, each pixel
    written once."""
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0::2] = np.append(starts, size) - np.insert(ends, 0, 0)  # the gaps before, between and after the runs
    counts[1::2] = ends - starts
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts)


# ---------------------------------------------------------------- conventions as settings


@dataclass(frozen=True)
class RleFormat:
    """One competition's RLE convention (docs/rle.md); the defaults are Carvana's."""

    order: Literal["C", "F"] = "C"  # "C": row-major (Carvana); "F": column-major (TGS, Airbus, Severstal, Clouds, SIIM)
    start: Literal[0, 1] = 1  # the number of the first pixel: 1, or 0 (SIIM)
    relative: bool = False  # SIIM: each start counts from the end of the previous run (the first from pixel 0)
    empty: str = ""  # what an empty mask is written as: "" or "-1" (SIIM)

    def __post_init__(self):
        _check_order(self.order)
        if self.start not in (0, 1):
            raise ValueError(f"RLE start index must be 0 or 1, got {self.start!r}")


CARVANA_RLE = RleFormat()


def encode_rle(mask: np.ndarray, fmt: RleFormat = CARVANA_RLE) -> str:
    """A 2-D mask (non-zero = foreground) as ``fmt`` writes it; the empty mask is ``fmt.empty``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    starts, lengths = run_boundaries(mask, fmt.order)
    if not starts.size:
        return fmt.empty
    if fmt.relative:  # the gap before each run: its start minus the previous run's end (0 before the first)
        starts = starts - np.concatenate([[0], starts[:-1] + lengths[:-1]])
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + fmt.start
    pairs[1::2] = lengths
    return format_integers(pairs)


def is_empty_rle(rle: object, fmt: RleFormat = CARVANA_RLE) -> bool:
    """Whether ``rle`` is an empty mask as ``fmt`` writes it; pandas' NaN (an empty CSV cell) is empty too."""
    if not isinstance(rle, str):
        return True
    text = rle.strip()
    return text == "" or text == fmt.empty.strip()


def absolute_runs(rle: object, fmt: RleFormat = CARVANA_RLE) -> tuple[np.ndarray, np.ndarray]:
    """0-indexed absolute starts and lengths of the runs ``rle`` writes in ``fmt``; ValueError if not pairs."""
    if is_empty_rle(rle, fmt):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts, lengths = parse_runs(rle)
    starts = starts - fmt.start
    if fmt.relative:
        starts = np.cumsum(starts + np.concatenate([[0], lengths[:-1]]))
    return starts, lengths


def decode_rle(rle: object, shape: tuple[int, int], fmt: RleFormat = CARVANA_RLE) -> np.ndarray:
    """uint8 0/1 mask of ``shape`` (H, W) from ``rle`` written in ``fmt``; ValueError for runs outside it."""
    starts, lengths = absolute_runs(rle, fmt)
    return decode_runs(starts, lengths, shape, fmt.order)
