"""Run-length encoding of binary masks, Kaggle style.

A mask is written as space-separated ``start length`` pairs. Carvana numbers pixels row by row
(numpy C order) with 1-indexed starts; most other competitions use column-major order (``order="F"``).
Both directions are vectorised: the work is proportional to the number of pixels (one pass to find
run boundaries) plus the number of runs (one ``join``), never a Python loop over pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rle_encode", "rle_decode", "run_boundaries", "parse_runs"]


def _check_order(order: str) -> None:
    if order not in ("C", "F"):
        raise ValueError(f"RLE order must be 'C' (row-major, Carvana) or 'F' (column-major), got {order!r}")


def run_boundaries(mask: np.ndarray, order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """0-indexed starts and lengths of the runs of non-zero pixels, in ``order``."""
    _check_order(order)
    flat = np.asarray(mask).ravel(order=order)
    # Zero sentinels at both ends turn every run into exactly one rising and one falling edge.
    padded = np.zeros(flat.size + 2, dtype=np.int8)
    padded[1:-1] = flat != 0
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return starts, ends - starts


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
    return " ".join(map(str, pairs.tolist()))


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
    # +1 at every start and -1 at every end; the running sum is 1 inside a run. bincount keeps
    # adjacent runs (one ending where the next starts) correct, where plain assignment would not.
    delta = np.bincount(starts, minlength=size + 1) - np.bincount(ends, minlength=size + 1)
    flat = np.cumsum(delta[:size]) > 0
    return flat.astype(np.uint8).reshape((height, width), order=order)
