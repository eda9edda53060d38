"""Every row of the table of RLE conventions in docs/rle.md, encoded by hand on one small mask, and round trips."""

import numpy as np
import pytest

from ternaus.rle import CARVANA_RLE, RleFormat, decode_rle, encode_rle, rle_encode

# Pixels, numbered row-major from 1:    1  2  3  4 /  5  6  7  8 /  9 10 11 12
# and column-major from 1:              1  4  7 10 /  2  5  8 11 /  3  6  9 12
MASK = np.array([[0, 1, 1, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 1]], np.uint8)

COLUMN_MAJOR = RleFormat(order="F")
SIIM = RleFormat(order="F", start=0, relative=True, empty="-1")

# (competition, format, MASK as that competition writes it, the empty mask as it writes it)
TABLE = [
    # Row-major, 1-indexed: pixels 2-3, 5-6, 12.
    ("Carvana", CARVANA_RLE, "2 2 5 2 12 1", ""),
    # Column-major, 1-indexed: column 0 holds pixel 2, column 1 pixels 4-5, column 2 pixel 7, column 3 pixel 12.
    ("TGS Salt", COLUMN_MAJOR, "2 1 4 2 7 1 12 1", ""),
    ("Airbus (one ship's row)", COLUMN_MAJOR, "2 1 4 2 7 1 12 1", ""),
    ("Severstal (one class's row)", COLUMN_MAJOR, "2 1 4 2 7 1 12 1", ""),
    ("Understanding Clouds (after resizing)", COLUMN_MAJOR, "2 1 4 2 7 1 12 1", ""),
    # Column-major, 0-indexed: runs at 1 (1 px), 3 (2 px), 6 (1 px), 11 (1 px); each start counted from the
    # previous run's end: 1 - 0, 3 - 2, 6 - 5, 11 - 7.
    ("SIIM-ACR", SIIM, "1 1 1 2 1 1 4 1", "-1"),
]


@pytest.mark.parametrize("name, fmt, written, empty", TABLE, ids=[row[0] for row in TABLE])
def test_each_convention_encodes_and_decodes_the_hand_computed_string(name, fmt, written, empty):
    assert encode_rle(MASK, fmt) == written
    assert np.array_equal(decode_rle(written, MASK.shape, fmt), MASK)
    assert encode_rle(np.zeros((3, 4), np.uint8), fmt) == empty
    assert decode_rle(empty, (3, 4), fmt).sum() == 0


def test_carvana_format_is_the_carvana_encoder():
    rng = np.random.default_rng(3)
    mask = rng.random((17, 23)) < 0.4
    assert encode_rle(mask, CARVANA_RLE) == rle_encode(mask)


def test_relative_starts_of_runs_that_touch_the_first_and_last_pixel():
    mask = np.array([[1, 0, 0, 1, 1]], np.uint8)  # 1 x 5: order does not matter
    assert encode_rle(mask, SIIM) == "0 1 2 2"
    assert encode_rle(mask, RleFormat(start=1, relative=True)) == "1 1 3 2"  # the start index adds to every start
    assert np.array_equal(decode_rle("1 1 3 2", (1, 5), RleFormat(start=1, relative=True)), mask)


def test_siim_writes_its_empty_token_with_spaces_and_nan_counts_as_empty():
    assert decode_rle(" -1", (2, 2), SIIM).sum() == 0  # SIIM's train CSV has " -1"
    assert decode_rle(float("nan"), (2, 2), COLUMN_MAJOR).sum() == 0  # pandas reads an empty cell as NaN


@pytest.mark.parametrize("fmt", [CARVANA_RLE, COLUMN_MAJOR, SIIM, RleFormat(order="C", start=0, empty="-1")])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_round_trip_in_every_convention(fmt, density):
    rng = np.random.default_rng(int(density * 10))
    mask = (rng.random((19, 31)) < density).astype(np.uint8)
    assert np.array_equal(decode_rle(encode_rle(mask, fmt), mask.shape, fmt), mask)


def test_the_wrong_order_decodes_to_a_different_mask():
    # What docs/new-competition.md asks to check before training: a column-major row read row-major moves pixels.
    assert not np.array_equal(decode_rle("2 1 4 2 7 1 12 1", (3, 4), CARVANA_RLE), MASK)


@pytest.mark.parametrize("kwargs, word", [({"order": "X"}, "order"), ({"start": 2}, "start index")])
def test_impossible_formats_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RleFormat(**kwargs)


def test_runs_past_the_mask_are_refused_in_relative_form_too():
    with pytest.raises(ValueError):
        decode_rle("3 2 1 1", (1, 5), SIIM)  # 3..4, then 6: past a 5-pixel mask
