"""Losses of the paper and of the Carvana model: BCE - w * log(soft Jaccard | soft Dice).

The functional core works on logits and targets of shape (B, C, H, W); the ``nn.Module`` wrapper only
holds the settings. Reductions run in float32 even under mixed precision: half-precision sums over a
1280x1920 batch overflow.

With several classes the overlap is taken per class over the batch and the logs averaged, so that a small
class weighs as much as a large one. ``activation="softmax"`` (exclusive classes) has one more channel, the
background first: cross-entropy replaces BCE and the overlaps are those of the classes' softmax probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ternaus.registry import LOSSES

__all__ = ["soft_jaccard", "soft_dice", "bce_overlap_loss", "softmax_overlap_loss", "bce_dice_loss",
           "bce_jaccard_loss", "SegmentationLoss", "EPS", "probabilities", "class_overlaps", "class_index_targets"]

EPS = 1e-15  # as in the reference code: only guards the all-empty batch


def _probs_and_targets(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(logits.float()), targets.float()


def soft_jaccard(logits: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(I + eps) / (sum p + sum y - I + eps) over the whole batch, I = sum p*y, p = sigmoid(logits)."""
    probs, targets = _probs_and_targets(logits, targets)
    intersection = (probs * targets).sum()
    return (intersection + eps) / (probs.sum() + targets.sum() - intersection + eps)


def soft_dice(logits: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(2 I + eps) / (sum p + sum y + eps) over the whole batch."""
    probs, targets = _probs_and_targets(logits, targets)
    intersection = (probs * targets).sum()
    return (2.0 * intersection + eps) / (probs.sum() + targets.sum() + eps)


OVERLAPS = {"bce_jaccard": soft_jaccard, "bce_dice": soft_dice}


def probabilities(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """(B, C, H, W) class probabilities in float32: sigmoids, or the softmax without its background channel."""
    if activation == "softmax":
        return torch.softmax(logits.float(), dim=1)[:, 1:]
    return torch.sigmoid(logits.float())


def class_overlaps(probs: torch.Tensor, targets: torch.Tensor, kind: str = "bce_dice", eps: float = EPS) -> torch.Tensor:
    """(C,) soft Dice or Jaccard of each class over the batch, from probabilities (B, C, H, W)."""
    dims = [d for d in range(probs.ndim) if d != 1]
    intersection = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    if kind == "bce_jaccard":
        return (intersection + eps) / (total - intersection + eps)
    return (2.0 * intersection + eps) / (total + eps)


def bce_overlap_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce_dice",
                     weight: float = 1.0) -> torch.Tensor:
    """BCE(logits, targets) - weight * mean over classes of log(overlap), computed in float32."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    if weight == 0:
        return bce
    if logits.shape[1] == 1:  # one class: the whole batch's overlap, exactly as the Carvana model computed it
        return bce - weight * torch.log(OVERLAPS[kind](logits, targets))
    probs, targets = _probs_and_targets(logits, targets)
    return bce - weight * torch.log(class_overlaps(probs, targets, kind)).mean()


def class_index_targets(targets: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) 0/1 planes of exclusive classes -> (B, H, W) int64: 0 background, k for class k (1..C)."""
    present = targets > 0.5
    return torch.where(present.any(1), present.float().argmax(1) + 1, 0)


def softmax_overlap_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce_dice",
                         weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over background + C classes - weight * mean log(overlap) of the C classes' probabilities;
    ``logits`` (B, C + 1, H, W), ``targets`` (B, C, H, W) 0/1."""
    ce = F.cross_entropy(logits.float(), class_index_targets(targets))
    if weight == 0:
        return ce
    return ce - weight * torch.log(class_overlaps(probabilities(logits, "softmax"), targets.float(), kind)).mean()


def _overlap_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str, weight: float,
                  activation: str) -> torch.Tensor:
    loss = softmax_overlap_loss if activation == "softmax" else bce_overlap_loss
    return loss(logits, targets, kind, weight)


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0,
                  activation: str = "sigmoid") -> torch.Tensor:
    """BCE - weight * log(soft Dice), the Carvana model's loss (cross-entropy instead of BCE with softmax)."""
    return _overlap_loss(logits, targets, "bce_dice", weight, activation)


def bce_jaccard_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0,
                     activation: str = "sigmoid") -> torch.Tensor:
    """BCE - weight * log(soft Jaccard), the paper's loss (cross-entropy instead of BCE with softmax)."""
    return _overlap_loss(logits, targets, "bce_jaccard", weight, activation)


class SegmentationLoss(nn.Module):
    """The loss ``train.loss.name`` names (``ternaus.registry.LOSSES``), with its settings."""

    def __init__(self, kind: str = "bce_dice", weight: float = 1.0, activation: str = "sigmoid"):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        self.kind, self.weight, self.activation = kind, weight, activation
        self.loss = LOSSES[kind].load()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets, self.weight, self.activation)
