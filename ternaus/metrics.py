"""Per-image Dice and Jaccard (IoU) on binary masks, the competition's way.

An empty prediction on an empty mask scores 1: Carvana's metric is the mean of per-image Dice.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dice_per_image", "jaccard_per_image", "dice_score", "overlap_counts", "per_image_class",
           "dice_from_counts", "jaccard_from_counts"]


def overlap_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|X∩Y|, |X|, |Y| per image for boolean-like tensors of shape (B, ...), as float64 counts."""
    pred = pred.reshape(pred.shape[0], -1).bool()
    target = target.reshape(target.shape[0], -1).bool()
    inter = (pred & target).sum(1, dtype=torch.float64)
    return inter, pred.sum(1, dtype=torch.float64), target.sum(1, dtype=torch.float64)


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, p, t = overlap_counts(pred, target)
    denom = p + t
    return torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))


def jaccard_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, p, t = overlap_counts(pred, target)
    union = p + t - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of one pair of 2-D numpy masks (non-zero = foreground)."""
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a) != 0)[None]  # noqa: E731
    return float(dice_per_image(tensor(pred), tensor(target))[0])


def per_image_class(metric, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``metric`` (dice_per_image or jaccard_per_image) of each (image, class) of (B, C, H, W) masks: (B, C).

    Severstal and Clouds score the mean over (image, class) pairs, an empty pair predicted empty counting 1."""
    batch, classes = pred.shape[:2]
    return metric(pred.reshape(batch * classes, -1), target.reshape(batch * classes, -1)).view(batch, classes)


# ---------------------------------------------------------------- from pixel counts (postprocess.metric)


def dice_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image Dice 2|X∩Y| / (|X| + |Y|) from pixel counts; an empty prediction of an empty mask scores 1."""
    overlap, predicted, target = (np.asarray(a, dtype=np.float64) for a in (overlap, predicted, target))
    denominator = predicted + target
    return np.where(denominator > 0, 2 * overlap / np.maximum(denominator, 1), 1.0)


def jaccard_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image IoU |X∩Y| / |X∪Y| from pixel counts; an empty prediction of an empty mask scores 1."""
    overlap, predicted, target = (np.asarray(a, dtype=np.float64) for a in (overlap, predicted, target))
    union = predicted + target - overlap
    return np.where(union > 0, overlap / np.maximum(union, 1), 1.0)
