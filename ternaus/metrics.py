"""The competitions' per-image metrics, each defined once, and the Dice and IoU the pipeline always reports.

A metric (``postprocess.metric``, ``ternaus.registry.METRICS``) is a per-image score, averaged over the images
(over (image, class) pairs with several classes). It takes one of two forms:

- **from pixel counts** ``(overlap, predicted, target)`` -> score, numpy arrays of any shape: Dice, IoU and the
  TGS metric (one object per image). The out-of-fold search then scores every threshold exactly from level
  histograms (``ternaus.analysis``).
- **from objects** ``(predicted, truth)``, two lists of boolean masks -> score: the Airbus and DSB 2018 metrics
  (``instance_ap``), where an image holds several objects matched one to one.

``image_score`` scores one image in either form; an empty prediction of an empty mask scores 1 under every
metric here.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ternaus.registry import METRICS
from ternaus.separation import component_labels, label_ious, labels_of_masks, object_labels

__all__ = ["dice_per_image", "jaccard_per_image", "dice_score", "overlap_counts", "per_image_class",
           "dice_from_counts", "jaccard_from_counts", "iou_ap_from_counts", "f2_instances", "instance_ap",
           "INSTANCE_FORMULAS", "object_ious",
           "matched_pairs", "instances", "image_score", "mask_score", "class_scores", "IOU_THRESHOLDS", "separated_score", "true_labels"]

# The IoU thresholds of TGS's and Airbus's metrics: 0.50, 0.55, ..., 0.95. Rounded so that each is the double
# nearest its decimal value, as the fraction 11/20 is: an IoU exactly on a threshold is then not above it.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


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


# ---------------------------------------------------------------- from pixel counts


def _as_float(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def dice_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image Dice 2|X∩Y| / (|X| + |Y|) from pixel counts; an empty prediction of an empty mask scores 1.

    Source: the Carvana Image Masking Challenge's evaluation page (the mean Dice coefficient over the test
    images, 1 when X and Y are both empty); Severstal Steel Defect Detection and SIIM-ACR Pneumothorax
    Segmentation score the same per (image, class) pair and per image."""
    overlap, predicted, target = _as_float(overlap, predicted, target)
    denominator = predicted + target
    return np.where(denominator > 0, 2 * overlap / np.maximum(denominator, 1), 1.0)


def jaccard_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image IoU |X∩Y| / |X∪Y| from pixel counts; an empty prediction of an empty mask scores 1.

    The TernausNet paper's validation metric (Jaccard index at threshold 0.5)."""
    overlap, predicted, target = _as_float(overlap, predicted, target)
    union = predicted + target - overlap
    return np.where(union > 0, overlap / np.maximum(union, 1), 1.0)


def iou_ap_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """TGS Salt Identification's metric for one object per image, from pixel counts.

    Source: the TGS Salt Identification Challenge's evaluation page. At each IoU threshold t in 0.50, 0.55, ...,
    0.95 the precision is TP(t) / (TP(t) + FP(t) + FN(t)), a hit (TP) being a predicted object whose IoU with a
    true object is above t (strictly: an IoU equal to t is a miss); the image scores the mean over the ten
    thresholds, the submission the mean over images. With the whole mask as one object:

    - truth and prediction both non-empty: 1 at the thresholds the IoU is above, else 0 (one FP and one FN);
    - an empty truth predicted empty: 1 (no object to find and none claimed; the page's convention);
    - an empty truth with any prediction: 0 (one FP); a non-empty truth predicted empty: 0 (one FN).

    So a prediction of one stray pixel on an empty patch loses a whole image's score: the minimum-area rule
    matters more under this metric than under Dice."""
    iou = jaccard_from_counts(overlap, predicted, target)
    return (iou[..., None] > np.asarray(IOU_THRESHOLDS)).mean(-1)


# ---------------------------------------------------------------- from objects


def instances(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a 2-D mask, one boolean mask each, in the order OpenCV labels them: the
    objects ``make_submission.py`` writes one row each with ``submission.rows=instance``."""
    count, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    return [labels == label for label in range(1, count)]


def object_ious(predicted: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """(P, T) IoU of every predicted object with every true object (boolean masks of one shape). Objects that
    do not overlap their own kind (a submission's, a layout's) are counted from two label maps in one pass; else
    from the masks' products."""
    if not predicted or not truth:
        return np.zeros((len(predicted), len(truth)))
    shape = np.shape(predicted[0])
    p_labels, t_labels = labels_of_masks(predicted, shape), labels_of_masks(truth, shape)
    if p_labels is not None and t_labels is not None:
        return label_ious(p_labels, t_labels, (len(predicted), len(truth)))
    p = np.stack([np.asarray(m, bool).reshape(-1) for m in predicted]).astype(np.float32)
    t = np.stack([np.asarray(m, bool).reshape(-1) for m in truth]).astype(np.float32)
    inter = (p @ t.T).astype(np.float64)  # exact: counts up to 2**24 in float32, far above a Kaggle image
    union = p.sum(1, dtype=np.float64)[:, None] + t.sum(1, dtype=np.float64)[None] - inter
    return inter / np.maximum(union, 1)


def matched_pairs(ious: np.ndarray, threshold: float) -> int:
    """How many (predicted, true) pairs match one to one with IoU above ``threshold``: pairs are taken by
    decreasing IoU, each object at most once. (Above 0.5, objects that do not overlap their own kind can match
    only one object anyway; the rule decides when they do overlap, e.g. a duplicated prediction: it is a
    false positive, not a second hit.)"""
    rows, cols = np.nonzero(ious > threshold)
    order = np.argsort(-ious[rows, cols], kind="stable")
    used_p, used_t, hits = set(), set(), 0
    for p, t in zip(rows[order], cols[order]):
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
            hits += 1
    return hits


INSTANCE_FORMULAS = ("dsb", "fbeta")


def instance_ap(predicted: list[np.ndarray], truth: list[np.ndarray], formula: str = "dsb",
                beta: float = 2.0) -> float:
    """One image's score in the family of the instance metrics over IoU thresholds, from its predicted and true
    objects (lists of boolean masks of one shape, or two (H, W) integer label maps: 0 background, 1..N).

    At each IoU threshold t in 0.50, 0.55, ..., 0.95 objects are matched one to one with IoU strictly above t
    (``matched_pairs``): TP matched pairs, FP unmatched predicted objects, FN unmatched true ones. The score at t:

    - ``formula="dsb"``: TP / (TP + FP + FN). Source: the 2018 Data Science Bowl's evaluation page ("the
      average precision at each IoU threshold", its precision being this ratio), the mean over the images;
      also TGS Salt Identification's page for the same ratio with one object per image.
    - ``formula="fbeta"``: (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP) with b = ``beta``; beta 2 is Airbus Ship
      Detection's F2 (5 TP / (5 TP + 4 FN + FP)).

    The image scores the mean over the ten thresholds. Edge cases (the pages leave 0/0 undefined; this is the
    rule TGS's page states): an image with no true object and no predicted one scores 1; true objects and no
    prediction score 0 (every threshold has TP = 0, FN > 0); predictions and no true object score 0."""
    if formula not in INSTANCE_FORMULAS:
        raise ValueError(f"formula {formula!r}: one of {', '.join(INSTANCE_FORMULAS)}")
    if isinstance(predicted, np.ndarray) and isinstance(truth, np.ndarray):  # two label maps
        ious = label_ious(predicted, truth)
        predicted, truth = range(ious.shape[0]), range(ious.shape[1])
    else:
        ious = object_ious(predicted, truth)
    if not len(predicted) and not len(truth):
        return 1.0
    weight = beta * beta if formula == "fbeta" else 1.0
    scores = []
    for threshold in IOU_THRESHOLDS:
        tp = matched_pairs(ious, threshold)
        fn, fp = len(truth) - tp, len(predicted) - tp
        scores.append(((1 + weight) * tp / ((1 + weight) * tp + weight * fn + fp)) if formula == "fbeta"
                      else tp / (tp + fp + fn))
    return float(np.mean(scores))


def f2_instances(predicted: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Airbus Ship Detection's metric for one image, from its predicted and true objects (boolean masks):
    ``instance_ap`` with ``formula="fbeta"``, beta 2.

    Source: the Airbus Ship Detection Challenge's evaluation page. At each IoU threshold t in 0.50, 0.55, ...,
    0.95, objects are matched one to one with IoU above t (``matched_pairs``): TP matched pairs, FN unmatched
    true objects, FP unmatched predicted ones, and F2(t) = 5 TP / (5 TP + 4 FN + FP) (F-beta with beta 2:
    a missed ship costs four times a false one). The image scores the mean of F2 over the ten thresholds; the
    submission the mean over images.

    An image with no true object and no predicted one scores 1. The page leaves 0/0 undefined and public
    kernels differ (1, 0, or the image left out); 1 is the only rule under which a perfect submission scores 1
    with every image weighing the same, it is the rule TGS's page states for the same family of metrics, and
    it makes "predict nothing on an empty image" worth what it is worth on a set where most images are empty."""
    return instance_ap(predicted, truth, "fbeta", 2.0)


# ---------------------------------------------------------------- one image, either form


def _union(objects: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    union = np.zeros(shape, bool)
    for mask in objects:
        union |= np.asarray(mask, bool)
    return union


def image_score(metric: str, predicted: list[np.ndarray], truth: list[np.ndarray], shape: tuple[int, int]) -> float:
    """One image's ``metric`` from its predicted and true objects (boolean masks of ``shape``): a pixel-count
    metric scores the union of each side's objects."""
    spec = METRICS[metric]
    if spec.form == "objects":
        return float(spec.load()(predicted, truth))
    pred, target = _union(predicted, shape), _union(truth, shape)
    counts = (np.count_nonzero(pred & target), np.count_nonzero(pred), np.count_nonzero(target))
    return float(spec.load()(*counts))


def mask_score(metric: str, pred: np.ndarray, target: np.ndarray, truth: list[np.ndarray] | None = None) -> float:
    """One image's ``metric`` from 2-D masks: the predicted objects are the prediction's connected components
    (as the submission writes them), the true ones ``truth`` when known (the masks CSV's rows), else the
    target's connected components."""
    spec = METRICS[metric]
    if spec.form == "counts":
        return image_score(metric, [pred], [target], pred.shape)
    return image_score(metric, instances(pred), instances(target) if truth is None else truth, pred.shape)


def class_scores(metric: str, pred: torch.Tensor, target: torch.Tensor,
                 truth: list[np.ndarray] | None = None, objects: str = "components") -> dict[str, np.ndarray]:
    """Dice, IoU and ``metric`` of each class of one image: (C, H, W) boolean masks (on any device) -> a dict of
    (C,) float64 arrays keyed "dice", "jaccard" and the metric's name. Counts are taken on the masks' device;
    a metric of objects is computed on the host. ``truth``: class 0's true objects when known (see
    ``mask_score``). ``objects`` "watershed" (``postprocess.objects``): plane 1 is the contact lines of
    plane 0's objects, not a class; the metric is then plane 0's alone (a (1,) array), its objects split along
    the contacts (``ternaus.separation``)."""
    inter, p, t = (c.cpu().numpy() for c in overlap_counts(pred, target))
    scores = {"dice": dice_from_counts(inter, p, t), "jaccard": jaccard_from_counts(inter, p, t)}
    spec = METRICS[metric]
    if objects == "watershed":
        return scores | {metric: np.asarray([separated_score(metric, pred.cpu().numpy(), target[0].cpu().numpy(),
                                                             truth)], np.float64)}
    if metric in scores:
        return scores
    if spec.form == "counts":
        return scores | {metric: np.asarray(spec.load()(inter, p, t), np.float64)}
    pred, target = pred.cpu().numpy(), target.cpu().numpy()
    per_class = [mask_score(metric, pred[c], target[c], truth if c == 0 else None) for c in range(len(pred))]
    return scores | {metric: np.asarray(per_class, np.float64)}


def true_labels(target: np.ndarray, truth: list[np.ndarray] | None) -> np.ndarray:
    """(H, W) int32 label map of the true objects: ``truth`` when known, else the target's components."""
    labels = labels_of_masks(truth, target.shape) if truth is not None else None
    return labels if labels is not None else component_labels(target)


def separated_score(metric: str, masks: np.ndarray, target: np.ndarray, truth: list[np.ndarray] | None = None,
                    objects: str = "watershed", min_area: int = 0) -> float:
    """One image's ``metric`` with its objects made by ``separation.object_labels`` from its (C, H, W) boolean
    masks (``objects``: "watershed" or "components", ``min_area`` per object); ``target``: the (H, W) true
    mask, ``truth``: its objects when known. A metric of counts scores plane 0 as one mask."""
    spec = METRICS[metric]
    if spec.form == "counts":
        return mask_score(metric, masks[0], target)
    labels = object_labels(masks, objects, min_area)
    return float(spec.load()(labels, true_labels(target, truth)))
