"""Losses of the paper and of the Carvana model, BCE - w * log(soft Jaccard | soft Dice); the edge-weighted
BCE + w * (1 - soft Dice) of the 1st-place team's 1024 x 1024 families; and the Lovasz hinge.

The functional core works on logits and targets of shape (B, C, H, W); the ``nn.Module`` wrapper only
holds the settings. Reductions run in float32 even under mixed precision: half-precision sums over a
1280x1920 batch overflow.

With several classes the overlap is taken per class over the batch and the logs averaged, so that a small
class weighs as much as a large one. ``activation="softmax"`` (exclusive classes) has one more channel, the
background first: cross-entropy replaces BCE and the overlaps are those of the classes' softmax probabilities.

The Lovasz hinge (Berman, Rannen Triki and Blaschko, "The Lovasz-Softmax loss: a tractable surrogate for the
optimization of the intersection-over-union measure in neural networks", CVPR 2018) is a convex surrogate of
each image's IoU: the loss the IoU-scored TGS Salt competition's top solutions trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ternaus.registry import LOSSES, settings_of

__all__ = ["soft_jaccard", "soft_dice", "bce_overlap_loss", "softmax_overlap_loss", "bce_dice_loss",
           "bce_jaccard_loss", "SegmentationLoss", "EPS", "probabilities", "class_overlaps", "class_index_targets",
           "lovasz_gradient", "lovasz_hinge", "lovasz_hinge_loss", "lovasz_hinge_elu_loss", "edge_weights",
           "bce_dice_edge_loss", "loss_options"]

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


# ---------------------------------------------------------------- the Lovasz hinge


def lovasz_gradient(sorted_targets: torch.Tensor) -> torch.Tensor:
    """(N, P) 0/1 targets of N images, each image's pixels sorted by decreasing error -> (N, P): the gradient of
    the Lovasz extension of the Jaccard loss with respect to the sorted errors (the paper's Algorithm 1).

    With g = the number of true pixels, after the first k sorted pixels (k = 1..P) the Jaccard loss of
    "those k are wrong" is J_k = 1 - (g - true pixels among them) / (g + false pixels among them); the gradient
    is J_1, J_2 - J_1, ..., J_P - J_(P-1). The union is never 0: for an empty mask the first pixel is false."""
    total = sorted_targets.sum(1, keepdim=True)
    intersection = total - sorted_targets.cumsum(1)
    union = total + (1 - sorted_targets).cumsum(1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor, elu: bool = False) -> torch.Tensor:
    """Mean over images (and classes) of the binary Lovasz hinge of each (image, class) plane, in float32.

    ``logits``, ``targets`` (B, C, H, W). Per plane: signs s = 2y - 1, hinge errors e = 1 - logit * s, sorted in
    decreasing order; loss = sum over the sorted pixels of f(e) * lovasz_gradient, with f(e) = max(e, 0)
    (the paper) or, with ``elu``, elu(e) + 1 (a smooth, everywhere positive variant several TGS Salt solutions
    trained with). An empty mask is scored too: its loss is f of its largest error."""
    logits = logits.float().flatten(2).flatten(0, 1)  # (B * C, H * W): one row per plane
    targets = targets.float().flatten(2).flatten(0, 1)
    errors = 1.0 - logits * (2.0 * targets - 1.0)
    sorted_errors, order = torch.sort(errors, dim=1, descending=True)
    gradient = lovasz_gradient(targets.gather(1, order))
    hinged = F.elu(sorted_errors) + 1.0 if elu else F.relu(sorted_errors)
    return (hinged * gradient).sum(1).mean()


def _lovasz_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float, activation: str,
                 elu: bool) -> torch.Tensor:
    if activation != "sigmoid":
        raise ValueError("the Lovasz hinge is binary: it needs model.activation=sigmoid")
    loss = lovasz_hinge(logits, targets, elu)
    if weight == 1:
        return loss
    return weight * loss + (1.0 - weight) * F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def lovasz_hinge_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0,
                      activation: str = "sigmoid") -> torch.Tensor:
    """weight * Lovasz hinge + (1 - weight) * BCE, weight in [0, 1]: 1 (the default) is the Lovasz hinge alone."""
    return _lovasz_loss(logits, targets, weight, activation, elu=False)


def lovasz_hinge_elu_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0,
                          activation: str = "sigmoid") -> torch.Tensor:
    """``lovasz_hinge_loss`` with elu(e) + 1 in place of max(e, 0)."""
    return _lovasz_loss(logits, targets, weight, activation, elu=True)


# ---------------------------------------------------------------- weighted near the masks' edges


def edge_weights(targets: torch.Tensor, window: int = 41, edge_weight: float = 3.0) -> torch.Tensor:
    """(B, C, H, W) pixel weights: ``edge_weight`` on the band where the mask average-pooled over ``window`` x
    ``window`` pixels (odd; stride 1, zero padding counted) lies strictly between 0.01 and 0.99, 1 elsewhere;
    then scaled so that their mean over the batch is 1, as the 1st-place team's code did (the scale reaches
    the loss only through the Dice's smoothing term). Its code compared with >= and <=, the same band for any
    window whose area is not a multiple of 100."""
    pooled = F.avg_pool2d(targets.float(), window, stride=1, padding=window // 2, count_include_pad=True)
    weights = 1.0 + (edge_weight - 1.0) * ((pooled > 0.01) & (pooled < 0.99)).float()
    return weights * (weights.numel() / weights.sum())


def bce_dice_edge_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0,
                       activation: str = "sigmoid", edge_window: int = 41, edge_weight: float = 3.0) -> torch.Tensor:
    """Weighted BCE + ``weight`` * (1 - weighted soft Dice), with ``edge_weights`` w, in float32:

    BCE = sum(w * bce) / sum(w); Dice per (image, class) = (2 sum(w^2 p y) + 1) / (sum(w^2 p) + sum(w^2 y) + 1),
    averaged. The team's code smoothed the numerator as 2 (I + 1), which scores an empty mask predicted empty
    at 2; here it is 1. Sigmoid only (``activation`` is checked by the config)."""
    logits, targets = logits.float(), targets.float()
    w = edge_weights(targets, edge_window, edge_weight)
    bce = (w * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")).sum() / w.sum()
    if weight == 0:
        return bce
    probs, w2, dims = torch.sigmoid(logits), w * w, (2, 3)
    dice = (2.0 * (w2 * probs * targets).sum(dims) + 1.0) / ((w2 * probs).sum(dims) + (w2 * targets).sum(dims) + 1.0)
    return bce + weight * (1.0 - dice.mean())


def loss_options(settings: object) -> dict[str, object]:
    """The settings of ``train.loss`` the named loss takes besides its weight (its ``ternaus.registry`` entry's)."""
    return {k: v for k, v in settings_of(settings).items() if k != "weight"}


class SegmentationLoss(nn.Module):
    """The loss ``train.loss.name`` names (``ternaus.registry.LOSSES``), with its settings; ``options``: its own
    settings besides the weight (``loss_options``). ``from_settings`` builds it from the ``train.loss`` section."""

    def __init__(self, kind: str = "bce_dice", weight: float = 1.0, activation: str = "sigmoid", **options: object):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        self.kind, self.weight, self.activation, self.options = kind, weight, activation, options
        self.loss = LOSSES[kind].load()

    @classmethod
    def from_settings(cls, settings: object, activation: str = "sigmoid") -> "SegmentationLoss":
        return cls(settings.name, settings.weight, activation, **loss_options(settings))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets, self.weight, self.activation, **self.options)
