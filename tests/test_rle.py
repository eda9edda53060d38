import numpy as np
import pytest

from ternaus.rle import rle_decode, rle_encode

# The first row of Carvana's train_masks.csv (00087a6bd4dc_01.jpg), its first four runs.
CARVANA_FIRST_ROW = "879386 40 881253 141 883140 205 885009 17"


def test_empty_mask_encodes_to_empty_string():
    assert rle_encode(np.zeros((3, 4), np.uint8)) == ""
    assert rle_decode("", (3, 4)).sum() == 0


def test_full_mask_is_one_run():
    assert rle_encode(np.ones((3, 4), np.uint8)) == "1 12"


def test_first_and_last_pixel_are_one_indexed():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = mask[2, 3] = 1
    assert rle_encode(mask) == "1 1 12 1"


def test_row_major_and_column_major_hand_computed():
    mask = np.array([[0, 1, 1, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 1]], np.uint8)
    # Row-major: pixels 2,3 | 5,6 | 12 (1-indexed).
    assert rle_encode(mask) == "2 2 5 2 12 1"
    # Column-major: column 0 is pixels 1..3 (2 set), column 1 is 4..6 (4, 5 set), column 2 is 7..9 (7 set),
    # column 3 is 10..12 (12 set).
    assert rle_encode(mask, order="F") == "2 1 4 2 7 1 12 1"
    assert np.array_equal(rle_decode("2 1 4 2 7 1 12 1", (3, 4), order="F"), mask)


def test_values_other_than_one_count_as_foreground():
    assert rle_encode(np.array([[0, 255, 7]])) == "2 2"


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 0.95, 1.0])
def test_round_trip_random_masks(order, density):
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) < density).astype(np.uint8)
    decoded = rle_decode(rle_encode(mask, order), mask.shape, order)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, mask)


def test_adjacent_runs_decode_as_one():
    assert np.array_equal(rle_decode("1 2 3 2", (1, 5))[0], [1, 1, 1, 1, 0])


def test_carvana_evidence_decodes_to_a_roof_near_the_centre():
    mask = rle_decode(CARVANA_FIRST_ROW, (1280, 1918))
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 40 + 141 + 205 + 17
    first_three = [(458, 941, 980), (459, 890, 1030), (460, 859, 1063)]
    for row, start, end in first_three:
        assert np.flatnonzero(mask[row]).tolist() == list(range(start, end + 1))
    roof = mask[458:461]
    centre = np.average(np.arange(1918), weights=roof.sum(0))
    assert abs(centre - 960) < 5
    # Read column-major, the same numbers make no roof: a vertical sliver at the left edge.
    wrong = rle_decode(CARVANA_FIRST_ROW, (1280, 1918), order="F")
    assert np.nonzero(wrong)[1].max() < 700


@pytest.mark.parametrize("bad", ["1", "1 2 3", "a b", "0 3", "5 0", "10 5"])
def test_invalid_rle_is_refused(bad):
    with pytest.raises(ValueError):
        rle_decode(bad, (2, 5))


def test_bad_order_is_refused():
    with pytest.raises(ValueError, match="order"):
        rle_encode(np.ones((2, 2)), order="X")


# ---------------------------------------------------------------- the word-at-a-time encoder against a plain one

def plain_rle(mask: np.ndarray, order: str = "C") -> str:
    """The definition, one pixel at a time: 1-indexed start and length of every run of non-zero pixels."""
    numbers, start = [], None
    flat = [bool(v) for v in np.asarray(mask).ravel(order=order)] + [False]
    for position, on in enumerate(flat):
        if on and start is None:
            start = position
        elif not on and start is not None:
            numbers += [start + 1, position - start]
            start = None
    return " ".join(map(str, numbers))


# Widths around the 8-pixel word: runs that start, end or sit on a word boundary, and masks shorter than a word.
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (1, 8), (1, 9), (2, 8), (3, 5), (5, 13), (16, 16), (7, 31)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_encoder_matches_the_definition_across_word_boundaries(shape, order):
    rng = np.random.default_rng(sum(shape))
    for density in (0.1, 0.5, 0.9):
        mask = (rng.random(shape) < density).astype(np.uint8)
        assert rle_encode(mask, order) == plain_rle(mask, order)
    for flat_index in range(min(shape[0] * shape[1], 20)):  # every single-pixel mask near the start
        mask = np.zeros(shape, np.uint8)
        mask.flat[flat_index] = 1
        assert rle_encode(mask, order) == plain_rle(mask, order)


def test_runs_that_end_on_the_last_pixel_of_a_word_and_of_the_mask():
    mask = np.zeros((2, 8), np.uint8)
    mask[0, 5:8] = 1  # ends exactly where the first word does
    mask[1, 7] = 1  # the very last pixel
    assert rle_encode(mask) == "6 3 16 1"
    mask[1, 0] = 1  # now the first run goes on into the second word
    assert rle_encode(mask) == "6 4 16 1"
    # A mask of whole 64-pixel words: the run on the last pixel has no padding bit after it to end on.
    assert rle_encode(np.ones((8, 8), np.uint8)) == "1 64"
    last = np.zeros((2, 64), bool)
    last[1, 60:] = True
    assert rle_encode(last) == "125 4"


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.float32])
def test_every_dtype_and_non_contiguous_views_encode_alike(dtype):
    rng = np.random.default_rng(1)
    big = (rng.random((40, 66)) < 0.3) * rng.integers(1, 200, (40, 66))
    mask = big.astype(dtype)[3:37:2, 5:61]  # a strided view, not 8-byte aligned
    assert rle_encode(mask) == plain_rle(mask)
    assert rle_encode(mask, "F") == plain_rle(mask, "F")


def test_a_car_sized_mask_with_many_runs_matches_the_definition():
    # Thousands of numbers: the digits are written by numpy rather than str.join.
    rng = np.random.default_rng(2)
    mask = (rng.random((64, 1918)) < 0.5).astype(np.uint8)
    assert rle_encode(mask) == plain_rle(mask)


# Every power of ten and its neighbours (each digit count, each limb boundary of the table lookup), zeros in
# every limb, and counts on both sides of the int32 switch (4096).
@pytest.mark.parametrize("values", [[0], [7], [0, 9, 10, 99, 100, 1_000_000, 2_455_040], list(range(3000)),
                                    [10 ** 12, 5] * 1500, [10 ** k + d for k in range(19) for d in (-1, 0, 1)] * 2,
                                    [0, 9_999, 10_000, 10_001, 100_000_000, 2 ** 31 - 1] * 1000,
                                    [0, 10_000, 2 ** 31, 10 ** 15] * 1200])
def test_format_integers_writes_what_str_join_writes(values):
    from ternaus.rle import format_integers
    assert format_integers(np.array(values)) == " ".join(map(str, values))
    assert format_integers(np.array([], np.int64)) == ""


def test_decoder_accepts_runs_out_of_order_and_adjacent_runs():
    assert np.array_equal(rle_decode("4 2 1 2", (1, 6))[0], [1, 1, 0, 1, 1, 0])
    assert np.array_equal(rle_decode("1 2 3 2", (1, 6))[0], [1, 1, 1, 1, 0, 0])
