"""Submissions as configuration, multi-class losses and metrics: hand-computed rows, orders and values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ternaus.errors import DataError
from ternaus.losses import SegmentationLoss, class_index_targets, probabilities, softmax_overlap_loss
from ternaus.metrics import dice_per_image, per_image_class
from ternaus.rle import RleFormat
from ternaus.submission import SubmissionFormat, check_rle, image_rows, masks_to_encode, order_like_sample

F = RleFormat(order="F")
SEVERSTAL = SubmissionFormat(("ImageId", "EncodedPixels", "ClassId"), ("{image}", "{rle}", "{class}"), "image_class",
                             ("1", "2", "3", "4"), rle=F)
CLOUDS = SubmissionFormat(("Image_Label", "EncodedPixels"), ("{image}_{class}", "{rle}"), "image_class",
                          ("Fish", "Flower"), encode_size=(2, 3), rle=F)
TGS = SubmissionFormat(("id", "rle_mask"), ("{stem}", "{rle}"), rle=F)
AIRBUS = SubmissionFormat(("ImageId", "EncodedPixels"), ("{image}", "{rle}"), "instance", rle=F)
SIIM = SubmissionFormat(("ImageId", "EncodedPixels"), ("{stem}", "{rle}"), rle=RleFormat("F", 0, True, "-1"))


def test_one_row_per_image_and_class_with_the_class_in_its_own_column():
    masks = np.zeros((4, 2, 3), bool)
    masks[1, 1, 0] = True  # column-major pixel 2
    assert image_rows("a.jpg", masks, SEVERSTAL) == [("a.jpg", "", "1"), ("a.jpg", "2 1", "2"), ("a.jpg", "", "3"),
                                                    ("a.jpg", "", "4")]


def test_clouds_ids_join_image_and_class_and_masks_shrink_to_the_encode_size_before_encoding():
    probs = np.zeros((2, 4, 6), np.uint8)
    probs[0, :, :4] = 255  # the left two thirds of class Fish; 6 -> 3 columns keeps the left two
    masks = masks_to_encode(probs, [0.5, 0.5], CLOUDS.encode_size)
    assert masks.shape == (2, 2, 3) and masks[0].tolist() == [[True, True, False]] * 2
    assert image_rows("0011165.jpg", masks, CLOUDS) == [("0011165.jpg_Fish", "1 4"), ("0011165.jpg_Flower", "")]


def test_per_class_thresholds_on_uint8_probabilities():
    probs = np.array([[[100, 200]], [[100, 200]]], np.uint8)
    assert masks_to_encode(probs, [0.3, 0.9]).tolist() == [[[True, True]], [[False, False]]]


def test_tgs_ids_are_stems_and_siim_writes_its_empty_token():
    mask = np.array([[[0, 1], [1, 1]]], bool)  # column-major pixels 2, 3, 4
    assert image_rows("abc.png", mask, TGS) == [("abc", "2 3")]
    assert image_rows("1.2.3.dcm.png", np.zeros((1, 2, 2), bool), SIIM) == [("1.2.3.dcm", "-1")]
    assert image_rows("x.png", mask, SIIM) == [("x", "1 3")]  # 0-indexed, relative: the gap before the run is 1


def test_instances_get_a_row_each_and_an_image_without_any_one_empty_row():
    mask = np.zeros((1, 3, 4), bool)
    mask[0, 0, 0] = True  # column-major pixel 1
    mask[0, 1:3, 3] = True  # column 3 pixels 11-12, not touching the first
    assert sorted(image_rows("s.jpg", mask, AIRBUS)) == [("s.jpg", "1 1"), ("s.jpg", "11 2")]
    assert image_rows("e.jpg", np.zeros((1, 3, 4), bool), AIRBUS) == [("e.jpg", "")]


def test_rows_follow_the_sample_submission_and_a_different_test_set_is_refused():
    ours = pd.DataFrame({"ImageId": ["a", "a", "b", "b"], "EncodedPixels": ["1 1", "", "2 2", ""],
                         "ClassId": ["1", "2", "1", "2"]})
    sample = pd.DataFrame({"ImageId": ["b", "a", "b", "a"], "EncodedPixels": "1 1", "ClassId": ["2", "1", "1", "2"]})
    ordered = order_like_sample(ours, sample, ["ImageId", "ClassId"], "sample.csv")
    assert ordered[["ImageId", "ClassId"]].values.tolist() == [["b", "2"], ["a", "1"], ["b", "1"], ["a", "2"]]
    with pytest.raises(DataError, match=r"1 row\(s\) of the sample have no prediction \(e.g. \[\('c', '1'\)\]\)"):
        order_like_sample(ours, pd.concat([sample, pd.DataFrame({"ImageId": ["c"], "ClassId": ["1"]})]),
                          ["ImageId", "ClassId"], "sample.csv")


def test_instance_rows_keep_their_order_within_an_image():
    ours = pd.DataFrame({"ImageId": ["a", "b", "b", "b"], "EncodedPixels": ["", "9 1", "1 1", "5 1"]})
    ordered = order_like_sample(ours, pd.DataFrame({"ImageId": ["b", "a"]}), ["ImageId"], "sample.csv")
    assert ordered["EncodedPixels"].tolist() == ["9 1", "1 1", "5 1", ""]


@pytest.mark.parametrize("rle, fmt, problem", [
    ("-1", RleFormat("F", 0, True, "-1"), None), ("0 2 1 1", RleFormat("F", 0, True, "-1"), None),
    ("0 2 1 8", RleFormat("F", 0, True, "-1"), "past the end"), ("0 3", RleFormat(start=0), None),
    ("-1", RleFormat(), "odd number"), ("-1 2", RleFormat(), "positive"),
])
def test_the_checker_reads_each_convention(rle, fmt, problem):
    found = check_rle(rle, 10, fmt)
    assert found == problem if problem is None else problem in found


# ---------------------------------------------------------------- several classes: losses and metrics

def test_multi_label_loss_averages_the_classes_log_dice():
    logits = torch.zeros(1, 2, 1, 2)  # every probability 0.5
    targets = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    # Class 1: I = 1, sum p = 1, sum y = 2 -> 2/3; class 2: I = 0.5, sum p = 1, sum y = 1 -> 1/2.
    expected = math.log(2) - (math.log(2 / 3) + math.log(1 / 2)) / 2
    assert SegmentationLoss("bce_dice")(logits, targets).item() == pytest.approx(expected)


def test_softmax_loss_is_cross_entropy_over_background_and_classes_minus_log_dice():
    logits = torch.zeros(1, 2, 1, 2)  # background and one class, 0.5 each
    targets = torch.tensor([[[[1.0, 0.0]]]])
    # CE = log 2 per pixel; class Dice: I = 0.5, sum p = 1, sum y = 1 -> 1/2.
    assert softmax_overlap_loss(logits, targets).item() == pytest.approx(2 * math.log(2))
    assert SegmentationLoss("bce_dice", activation="softmax")(logits, targets).item() == pytest.approx(2 * math.log(2))


def test_exclusive_targets_become_class_indices_and_softmax_drops_the_background():
    planes = torch.tensor([[[[1, 0, 0]], [[0, 1, 0]]]])  # (1, 2, 1, 3)
    assert class_index_targets(planes).tolist() == [[[1, 2, 0]]]
    logits = torch.tensor([[[[0.0]], [[math.log(2)]], [[math.log(1)]]]])  # exp: 1, 2, 1 -> 1/4, 1/2, 1/4
    assert probabilities(logits, "softmax").flatten().tolist() == pytest.approx([0.5, 0.25])


def test_dice_per_image_and_class_counts_an_empty_pair_as_one():
    pred = torch.tensor([[[[1, 1]], [[0, 0]]]]).bool()
    target = torch.tensor([[[[1, 0]], [[0, 0]]]]).bool()
    assert per_image_class(dice_per_image, pred, target)[0].tolist() == pytest.approx([2 / 3, 1.0])
