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
