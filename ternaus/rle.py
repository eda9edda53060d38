"""Run-length encoding of binary masks, Kaggle style.

A mask is written as space-separated ``start length`` pairs. Carvana numbers pixels row by row
(numpy C order) with 1-indexed starts; most other competitions use column-major order (``order="F"``).

Encoding reads each pixel once, eight at a time: the 0/1 bytes are read as 64-bit words, each compared with
the same bytes read one pixel earlier, and only the few words that hold a run boundary are looked at byte by
byte. The numbers are then written as ASCII digits by numpy rather than one Python ``str`` per number, which
is what dominates for masks with many runs. Decoding writes each pixel once with ``np.repeat``.
``bench/rle.py`` measures both against the textbook version.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

__all__ = ["rle_encode", "rle_decode", "run_boundaries", "parse_runs", "format_integers"]

_WORD = 8  # pixels per uint64 word
# Below this many numbers one ``str.join`` is faster than numpy's fixed cost per call.
_JOIN_BELOW = 64


def _check_order(order: str) -> None:
    if order not in ("C", "F"):
        raise ValueError(f"RLE order must be 'C' (row-major, Carvana) or 'F' (column-major), got {order!r}")


def _flat_bits(mask: np.ndarray, order: str) -> np.ndarray:
    """The mask as a contiguous flat uint8 array of 0/1 in ``order``; no copy for a C-ordered bool mask."""
    bits = mask if mask.dtype == np.bool_ else mask != 0
    if order == "F":
        bits = cv2.transpose(bits.view(np.uint8)) if bits.ndim == 2 and bits.size else bits.T
    return np.ascontiguousarray(bits).reshape(-1).view(np.uint8)


def _changes_in_words(flat: np.ndarray, body: int) -> np.ndarray:
    """Sorted positions ``i < body`` where ``flat[i] != flat[i - 1]`` (0 before the first pixel), a word at a time."""
    words = flat[:body].view(np.uint64)
    # Little-endian: the same bytes read one byte earlier hold each pixel's left-hand neighbour in the same
    # byte position, so a word differs from that view exactly where a run starts or ends inside it. The
    # first word has no earlier byte: it is shifted instead (the pixel before the mask is 0).
    shifted = flat[_WORD - 1: body - 1].view(np.uint64)  # words 1, 2, ... read one byte earlier
    first = words[:1] << np.uint64(8)
    differs = np.empty(words.size, np.bool_)
    np.not_equal(words[1:], shifted, out=differs[1:])
    np.not_equal(words[:1], first, out=differs[:1])
    hit = np.flatnonzero(differs)  # nonzero on bool is several times faster than on uint64
    before = np.where(hit > 0, shifted[np.maximum(hit - 1, 0)] if shifted.size else 0, first)
    rows, cols = np.nonzero((words[hit] ^ before).view(np.uint8).reshape(-1, _WORD))
    return hit[rows] * _WORD + cols


def _changes(flat: np.ndarray) -> np.ndarray:
    """Sorted positions ``i`` where ``flat[i] != flat[i - 1]``, reading 0 before the first and after the last pixel."""
    size = flat.size
    body = size - size % _WORD if sys.byteorder == "little" else 0
    inside = _changes_in_words(flat, body) if body else np.empty(0, np.int64)
    # The last partial word (and the pixel after the mask) pixel by pixel.
    tail = np.zeros(size - body + 2, np.uint8)
    tail[0] = flat[body - 1] if body else 0
    tail[1:-1] = flat[body:]
    edges = body + np.flatnonzero(tail[1:] != tail[:-1])
    return np.concatenate([inside, edges]) if inside.size else edges


def run_boundaries(mask: np.ndarray, order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """0-indexed starts and lengths of the runs of non-zero pixels, in ``order``."""
    _check_order(order)
    changes = _changes(_flat_bits(np.asarray(mask), order))
    starts = changes[0::2]
    return starts, changes[1::2] - starts


def format_integers(values: np.ndarray) -> str:
    """Non-negative integers as one space-separated decimal string, identical to ``" ".join(map(str, values))``.

    Every number gets a fixed-width row of bytes, digits written right to left; the leading places are
    NUL bytes, which one ``bytes.translate`` then drops. No Python object per number is made.
    """
    values = np.asarray(values, dtype=np.int64)
    if values.size < _JOIN_BELOW:
        return " ".join(map(str, values.tolist()))
    width = len(str(int(values.max())))
    chars = np.empty((values.size, width + 1), np.uint8)
    chars[:, width] = ord(" ")
    rest = values.astype(np.int32) if width < 10 else values
    for column in range(width - 1, -1, -1):
        higher = rest // 10  # division by a constant is vectorised; np.divmod is not
        digit = (rest - 10 * higher + ord("0")).astype(np.uint8)
        # A place left of the number's first digit (nothing left to write) becomes NUL; the units never do.
        chars[:, column] = digit if column == width - 1 else digit * (rest != 0)
        rest = higher
    return chars.tobytes()[:-1].translate(None, b"\0").decode("ascii")


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
    _check_order(order)
    height, width = shape
    size = height * width
    starts, lengths = parse_runs(rle if isinstance(rle, str) else "")
    starts = starts - 1
    ends = starts + lengths
    if starts.size and (starts.min() < 0 or lengths.min() < 1 or ends.max() > size):
        raise ValueError(f"RLE runs fall outside a {height}x{width} mask or have non-positive values")
    if starts.size and (starts[1:] >= ends[:-1]).all():
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
    counts[0], counts[-1] = starts[0], size - ends[-1]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[1::2] = ends - starts
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts)
