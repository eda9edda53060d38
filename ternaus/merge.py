"""Merging runs' probability maps: the weighted mean of uint8 maps, and the rules applied after it.

Pure numpy / OpenCV functions on one image at a time; ``ternaus.ensemble`` streams a whole test set through
them. Rules are named by ``ensemble.rules`` (``ternaus.registry.RULES``) and take the merged (C, H, W) map,
every member's map by name and the ensemble settings.

``top_unreliable`` is the 1st-place Carvana team's one post-processing rule: where the reference member's map
(their LinkNet34's) is uncertain over a large region in the top of the image, the averaged maps blur roof racks
and antennas, so inside that region's box the mask becomes the convex hull of the reference's own biggest
region.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

__all__ = ["weighted_mean", "biggest_region", "convex_hull", "unreliable_top_box", "top_unreliable"]


def weighted_mean(maps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The mean of uint8 maps of one shape, weighted by ``weights`` (normalised to sum 1), rounded half to even
    as ``inference.to_uint8`` rounds, as uint8. Summed in float64: the result does not depend on the
    machine. Raises ValueError for weights that are not finite or negative, or whose sum is not positive and
    finite (they would give an all-empty map)."""
    if not all(np.isfinite(w) and w >= 0 for w in weights) or not 0 < sum(weights) < np.inf:
        raise ValueError(f"weights {list(weights)}: each must be finite and 0 or more, their sum positive and finite")
    total = np.zeros(maps[0].shape, np.float64)
    for levels, weight in zip(maps, weights):
        total += weight * levels.astype(np.float64)
    return np.rint(total / sum(weights)).astype(np.uint8)


def biggest_region(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected region of a 2-D mask as a bool mask, and its area in pixels (0 for none); of
    regions of equal area, the first OpenCV labels (top-left first)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return np.zeros(mask.shape, bool), 0
    label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == label, int(stats[label, cv2.CC_STAT_AREA])


def convex_hull(region: np.ndarray) -> np.ndarray:
    """The filled convex hull of a 2-D bool mask's pixels, as a bool mask of the same shape."""
    hull = np.zeros(region.shape, np.uint8)
    points = cv2.findNonZero(region.astype(np.uint8))
    if points is not None:
        cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    return hull.astype(bool)


def unreliable_top_box(reference: np.ndarray, rule: Any) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), the end rows/columns excluded, of the box the rule rewrites, or None.

    The band where ``reference`` (H, W uint8) lies strictly between ``rule.uncertain_low`` and
    ``rule.uncertain_high``, eroded ``rule.erode_iterations`` times with a 3 x 3 square, is cut to its top
    ``rule.top_fraction`` of the rows; when its biggest region exceeds ``rule.min_area`` pixels, that region's
    bounding box grown by ``rule.margin`` pixels on each side (within the image) is the box."""
    band = ((reference > rule.uncertain_low) & (reference < rule.uncertain_high)).astype(np.uint8)
    if rule.erode_iterations:
        band = cv2.erode(band, np.ones((3, 3), np.uint8), iterations=rule.erode_iterations)
    region, area = biggest_region(band[: int(reference.shape[0] * rule.top_fraction)])
    if area <= rule.min_area:
        return None
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    height, width = reference.shape
    margin = rule.margin
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height), max(cols[0] - margin, 0),
            min(cols[-1] + 1 + margin, width))


def top_unreliable(merged: np.ndarray, maps: dict[str, np.ndarray], ensemble: Any) -> np.ndarray:
    """The "top is unreliable" rule on class 0 of ``merged`` (C, H, W uint8), with the settings
    ``ensemble.top_unreliable`` (``ternaus.config.TopRuleConfig``) and the member it names as the reference.

    Inside ``unreliable_top_box`` the map becomes 255 on the convex hull of the reference's biggest region above
    ``level`` and 0 elsewhere, so that any threshold in (0, 1] gives the rule's mask there; the rest is kept."""
    rule = ensemble.top_unreliable
    reference = maps[rule.reference][0]
    box = unreliable_top_box(reference, rule)
    if box is None:
        return merged
    top, bottom, left, right = box
    hull = convex_hull(biggest_region(reference > rule.level)[0])
    out = merged.copy()
    out[0, top:bottom, left:right] = np.where(hull[top:bottom, left:right], 255, 0)
    return out
