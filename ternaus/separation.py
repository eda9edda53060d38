"""From the network's maps to objects (``postprocess.objects``): plain connected components, or a seeded
watershed that splits touching objects along a predicted contact channel.

``"components"``: the 8-connected components of the thresholded mask (``metrics.instances``), what Airbus's
ships need. Touching objects merge: on DSB 2018 even a perfect foreground mask split this way scores about
0.82 (docs/new-competition.md).

``"watershed"`` (model.num_classes 2: the objects' union and their contact lines, made by
``ternaus.data.instance_folders``): the seeds are the 4-connected components of mask AND NOT contact, each mask
pixel outside the seeds then goes to the seed the flood from the seeds reaches first, the contact pixels last
(``scipy.ndimage.watershed_ift`` on the contact map as the cost); a piece of the mask no seed lies in (all
contact) stays one object of its own. This is the top DSB 2018 U-Net solutions' post-processing (seeds: the
mask minus the predicted borders or contacts; the topcoders team, the minerva-ml open solution).

Either way, objects of fewer than ``min_area`` pixels are dropped (one by one: the rest of the image stays).
Everything works on label maps ((H, W) int32, 0 background, 1..N the objects), which the metric scores by one
``bincount`` (``label_ious``) instead of N masks' products.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["OBJECTS", "component_labels", "watershed_labels", "drop_small", "object_labels", "masks_of_labels",
           "labels_of_masks", "label_ious"]

OBJECTS = ("components", "watershed")
Objects = Literal["components", "watershed"]


def component_labels(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """(H, W) int32 labels of the connected components of a 2-D mask (non-zero: foreground)."""
    _, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity)
    return labels.astype(np.int32)


def watershed_labels(mask: np.ndarray, contact: np.ndarray) -> np.ndarray:
    """(H, W) int32 objects of a mask split along its contacts (both (H, W), non-zero: on): seeds are the
    4-connected components of ``mask & ~contact``, grown over the rest of the mask by a watershed whose cost is
    the contact (contact pixels are flooded last, so neighbouring seeds meet there). A component of the mask
    holding no seed becomes one object."""
    mask, contact = np.asarray(mask, bool), np.asarray(contact, bool)
    seeds = component_labels(mask & ~contact, connectivity=4)
    count = int(seeds.max())
    # Mask components without a seed (entirely contact) keep their own label: they are seeds of themselves.
    pieces = component_labels(mask)
    seeded = np.unique(pieces[seeds > 0])
    orphans = np.setdiff1d(np.unique(pieces[pieces > 0]), seeded)
    for k, piece in enumerate(orphans, start=count + 1):
        seeds[pieces == piece] = k
    # The flood enters the seeds' surroundings by increasing cost: the rest of the mask (0), the contacts (1),
    # then the background (2), so every mask pixel is reached through the mask before any path leaves it.
    cost = np.where(mask, contact.astype(np.uint16), 2).astype(np.uint16)
    grown = ndimage.watershed_ift(cost, seeds, structure=np.ones((3, 3), bool))
    return np.where(mask, grown, 0).astype(np.int32)


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` without the objects of fewer than ``min_area`` pixels, renumbered 1..N in label order."""
    if labels.max() == 0:
        return labels
    areas = np.bincount(labels.reshape(-1))
    keep = areas >= max(min_area, 1)
    keep[0] = False
    new = np.zeros(len(areas), np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[labels]


def object_labels(masks: np.ndarray, objects: Objects = "components", min_area: int = 0) -> np.ndarray:
    """(H, W) int32 objects of one image's thresholded (C, H, W) masks: ``objects`` "components" splits plane 0
    into connected components; "watershed" splits plane 0 along plane 1, the contacts (``watershed_labels``).
    Objects under ``min_area`` pixels are dropped."""
    if objects == "watershed":
        if len(masks) < 2:
            raise ValueError("the watershed needs two planes (objects, contacts): set model.num_classes to 2")
        labels = watershed_labels(masks[0], masks[1])
    elif objects == "components":
        labels = component_labels(masks[0])
    else:
        raise ValueError(f"postprocess.objects {objects!r}: one of {', '.join(OBJECTS)}")
    return drop_small(labels, min_area) if min_area > 1 else labels


def masks_of_labels(labels: np.ndarray) -> list[np.ndarray]:
    """One boolean mask per label 1..N (the order of the submission's rows)."""
    return [labels == k for k in range(1, int(labels.max()) + 1)]


def labels_of_masks(objects: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray | None:
    """The label map of non-overlapping objects (k for the k-th, 1-based), or None when two objects share a
    pixel (a label map cannot hold them)."""
    labels = np.zeros(shape, np.int32)
    total = 0
    for k, mask in enumerate(objects, start=1):
        mask = np.asarray(mask, bool)
        labels[mask] = k
        total += int(np.count_nonzero(mask))
    return labels if total == int(np.count_nonzero(labels)) else None


def label_ious(predicted: np.ndarray, truth: np.ndarray, counts: tuple[int, int] | None = None) -> np.ndarray:
    """(P, T) IoU of every predicted object with every true one, from two label maps of one shape (P, T: their
    largest labels, or ``counts``): the intersections are one bincount of the label pairs."""
    p, t = counts if counts is not None else (int(predicted.max()), int(truth.max()))
    if p == 0 or t == 0:
        return np.zeros((p, t))
    pairs = predicted.astype(np.int64).reshape(-1) * (t + 1) + truth.reshape(-1)
    inter = np.bincount(pairs, minlength=(p + 1) * (t + 1)).reshape(p + 1, t + 1).astype(np.float64)
    area_p, area_t = inter.sum(1)[1:], inter.sum(0)[1:]
    inter = inter[1:, 1:]
    return inter / np.maximum(area_p[:, None] + area_t[None] - inter, 1)
