import math

import numpy as np
import pytest
import torch

from ternaus.losses import SegmentationLoss, bce_overlap_loss, soft_dice, soft_jaccard
from ternaus.metrics import dice_per_image, dice_score, jaccard_per_image
from ternaus.training import carvana_lr_factor

# sigmoid(0) = 0.5 everywhere; targets 1, 0, 1, 1: I = 1.5, sum p = 2, sum y = 3.
LOGITS = torch.zeros(1, 1, 2, 2)
TARGETS = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])


def test_soft_overlaps_hand_computed():
    assert soft_jaccard(LOGITS, TARGETS).item() == pytest.approx(1.5 / (2 + 3 - 1.5))
    assert soft_dice(LOGITS, TARGETS).item() == pytest.approx(2 * 1.5 / (2 + 3))


def test_losses_hand_computed():
    bce = math.log(2)  # -log(0.5) for every pixel
    assert bce_overlap_loss(LOGITS, TARGETS, "bce_jaccard").item() == pytest.approx(bce - math.log(3 / 7))
    assert bce_overlap_loss(LOGITS, TARGETS, "bce_dice").item() == pytest.approx(bce - math.log(0.6))
    assert bce_overlap_loss(LOGITS, TARGETS, "bce_dice", weight=0.5).item() == pytest.approx(bce - 0.5 * math.log(0.6))
    assert SegmentationLoss("bce_jaccard", 0.0)(LOGITS, TARGETS).item() == pytest.approx(bce)


def test_loss_runs_in_float32_for_half_inputs():
    logits = torch.full((1, 1, 512, 512), 20.0, dtype=torch.float16)
    loss = bce_overlap_loss(logits, torch.ones_like(logits), "bce_dice")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_perfect_prediction_has_near_zero_loss():
    targets = TARGETS
    logits = (targets * 2 - 1) * 30
    assert bce_overlap_loss(logits, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_per_image_dice_and_jaccard_hand_computed():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]).bool()
    # image 0: |X∩Y| = 1, |X| = 2, |Y| = 1; image 1: both empty -> 1; image 2: disjoint -> 0.
    assert dice_per_image(pred, target).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert jaccard_per_image(pred, target).tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    assert dice_score(np.array([[0, 255], [255, 255]]), np.array([[0, 1], [1, 0]])) == pytest.approx(0.8)


def test_carvana_schedule_halves_every_two_epochs_in_cycles_of_five():
    factors = [carvana_lr_factor(e) for e in range(10)]
    assert factors == [1, 1, 0.5, 0.5, 0.25, 1, 1, 0.5, 0.5, 0.25]
