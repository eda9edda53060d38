"""Losses of the paper and of the Carvana model: BCE - w * log(soft Jaccard | soft Dice).

The functional core works on logits and targets of shape (B, C, H, W); the ``nn.Module`` wrapper only
holds the settings. Reductions run in float32 even under mixed precision: half-precision sums over a
1280x1920 batch overflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["soft_jaccard", "soft_dice", "bce_overlap_loss", "SegmentationLoss", "EPS"]

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


def bce_overlap_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce_dice",
                     weight: float = 1.0) -> torch.Tensor:
    """BCE(logits, targets) - weight * log(overlap), computed in float32."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    if weight == 0:
        return bce
    return bce - weight * torch.log(OVERLAPS[kind](logits, targets))


class SegmentationLoss(nn.Module):
    def __init__(self, kind: str = "bce_dice", weight: float = 1.0):
        super().__init__()
        if kind not in OVERLAPS:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(OVERLAPS)}")
        self.kind, self.weight = kind, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return bce_overlap_loss(logits, targets, self.kind, self.weight)
