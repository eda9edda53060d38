"""One evaluator for every place that scores predictions against true masks: validation, the out-of-fold pass of
``predict.py``, the ensemble's out-of-fold CV and ``ternaus.evaluate``.

An ``Evaluator`` is built from explicit settings (the metric, the class names, the threshold of each class and,
for the post-processing search, the thresholds it tries), takes one image at a time and keeps what every
summary needs:

- each image's row: Dice, IoU and the metric (means over the classes), each class's Dice with several classes
  (``ternaus.metrics.class_scores``; the metrics' formulas and sources are in ``ternaus.metrics``);
- running float64 sums of those rows (``sums``), which validation adds up over DDP ranks before ``means``;
- with ``search`` thresholds: class 0's (2, 256) level histograms (``ternaus.analysis.level_histograms``), from
  which a metric of counts is scored exactly at every threshold, and for a metric of objects the image's row
  of ``ThresholdScores`` on ``search`` (``ternaus.analysis.object_scores_of_image``).

The summaries: ``means`` (what validation returns), ``table`` (the per-image rows ``oof.csv`` starts from),
``histograms`` and ``threshold_scores`` (what the search and ``oof.csv``'s post-processed columns use),
``search`` (the chosen threshold and minimum area).

A prediction comes in one of four forms, told apart by its dtype in ``add``/``score``: float probabilities
(thresholded at ``threshold``), uint8 levels (``inference.to_uint8``: level >= threshold * 255, the comparison
``make_submission.py`` makes), a boolean mask (already thresholded), or, through ``add_objects``, the lists of
predicted and true objects a submission's rows decode to. ``score`` is pure (thread-safe: the ensemble scores
images on a pool) and ``add`` keeps its result in the order of the calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ternaus.analysis import (
    PostProcessing,
    SeparationGrid,
    separation_scores_of_image,
    ThresholdScores,
    choose_postprocessing,
    level_histograms,
    object_scores_of_image,
    scores_from_histograms,
)
from ternaus.metrics import class_scores, dice_from_counts, instances, jaccard_from_counts
from ternaus.registry import METRICS

__all__ = ["Evaluator", "ImageScores"]


@dataclass(frozen=True)
class ImageScores:
    """One image's scores as an ``Evaluator`` keeps them.

    ``record``: its row of ``Evaluator.table`` (id, fold when given, dice, jaccard, the metric when it is
    neither, ``dice_<class>`` with several classes); ``sums``: (4 + C,) float64, [1, Dice, IoU, metric, each
    class's Dice], the first three means over the C classes; ``histograms``: (2, 256) int64 of class 0, or None;
    ``objects``: (kept (T,), areas (T,), emptied) on the search's T thresholds for a metric of objects, or None."""

    record: dict
    sums: np.ndarray
    histograms: np.ndarray | None = None
    objects: tuple[np.ndarray, np.ndarray, float] | None = None
    separated: np.ndarray | None = None  # (G,) the metric at each setting of the watershed's search


def _tensor(array) -> torch.Tensor:
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))


def _form(pred: torch.Tensor) -> str:
    if pred.dtype == torch.bool:
        return "mask"
    if pred.dtype == torch.uint8:
        return "levels"
    if pred.is_floating_point():
        return "probabilities"
    raise TypeError(f"a prediction is float probabilities, uint8 levels or a bool mask, got {pred.dtype}")


class Evaluator:
    """Per-image scores of one metric at one threshold per class, accumulated image by image.

    ``metric``: a name of ``ternaus.registry.METRICS`` (``postprocess.metric``); ``classes``: the class names
    (their count C is the masks' first dimension); ``threshold``: one number, or one per class;
    ``search``: the thresholds the post-processing search tries (``analysis.search_thresholds``), or None when
    no search follows. The search covers one class: with several, ``search`` is refused."""

    def __init__(self, metric: str = "dice", classes: Sequence[str] = ("1",), threshold: float | Sequence[float] = 0.5,
                 search: Sequence[float] | None = None, objects: str = "components",
                 separation: SeparationGrid | None = None):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
        self.metric, self.classes = metric, list(classes)
        cuts = list(threshold) if isinstance(threshold, (list, tuple)) else [threshold] * len(self.classes)
        if len(cuts) != len(self.classes):
            raise ValueError(f"{len(cuts)} thresholds for {len(self.classes)} classes")
        self.thresholds = [float(t) for t in cuts]
        if search is not None and len(self.classes) != 1:
            raise ValueError("the post-processing search covers one class")
        self.search_grid = tuple(search) if search is not None else None
        # postprocess.objects: "watershed" makes class 0's objects from classes 0 and 1 (objects, contacts);
        # ``separation``: the settings of its search, scored on each image.
        self.objects, self.separation = objects, separation
        self._separated: list[np.ndarray] = []
        # Objects need a connected-components pass at each searched threshold; counts come from the histograms.
        self.by_objects = self.search_grid is not None and METRICS[metric].form == "objects"
        self._sums = np.zeros(4 + len(self.classes), np.float64)
        self._records: list[dict] = []
        self._histograms: list[np.ndarray] = []
        self._objects: list[tuple[np.ndarray, np.ndarray, float]] = []
        self._cuts: dict[tuple[str, float], torch.Tensor] = {}

    # ---------------------------------------------------------------- one image

    def _cut(self, device: torch.device, scale: float) -> torch.Tensor:
        """(C, 1, 1) float32 thresholds on ``device``, times ``scale`` (255 for uint8 levels): the float32
        comparison validation and the out-of-fold pass have always made (for every threshold of 0.01 steps it
        keeps the levels ``analysis.threshold_level`` does). Made once per device and scale."""
        key = (str(device), scale)
        if key not in self._cuts:
            self._cuts[key] = torch.tensor(self.thresholds, device=device).view(-1, 1, 1) * scale
        return self._cuts[key]

    def score(self, image_id: str, pred, target, truth: list[np.ndarray] | None = None,
              fold: int | None = None) -> ImageScores:
        """One image's ``ImageScores``. ``pred``: (C, H, W) float probabilities, uint8 levels or a bool mask;
        ``target``: (C, H, W) bool true masks; torch tensors on any device, or numpy arrays. ``truth``: class 0's
        true objects where the masks CSV lists them (else each true mask's connected components)."""
        pred, target = _tensor(pred), _tensor(target).to(torch.bool)
        form = _form(pred)
        mask = pred if form == "mask" else pred >= self._cut(pred.device, 255.0 if form == "levels" else 1.0)
        scores = class_scores(self.metric, mask, target, truth, self.objects)
        histograms = objects = separated = None
        if self.separation is not None:
            if form != "levels":
                raise ValueError("the watershed's search needs uint8 levels, as the prediction PNGs hold them")
            separated = separation_scores_of_image(pred.cpu().numpy(), target[0].cpu().numpy(), truth,
                                                   self.separation, self.metric)
        if self.search_grid is not None:
            if form != "levels":
                raise ValueError("the post-processing search needs uint8 levels, as the prediction PNGs hold them")
            histograms = level_histograms(pred[:1], target[:1]).cpu().numpy()
            if self.by_objects:
                true = truth if truth is not None else instances(target[0].cpu().numpy())
                objects = object_scores_of_image(pred[0].cpu().numpy(), true, self.search_grid, self.metric)
        return ImageScores(self._record(image_id, fold, scores), self._row(scores), histograms, objects, separated)

    def score_objects(self, image_id: str, predicted: list[np.ndarray], truth: list[np.ndarray],
                      shape: tuple[int, int], fold: int | None = None) -> ImageScores:
        """One image (or one (image, class) pair) given as objects, as a submission's rows decode: lists of
        (H, W) boolean masks of ``shape``. Dice and IoU score the union of each side's objects
        (``metrics.image_score``); a metric of objects the objects themselves."""
        pred, target = np.zeros(shape, bool), np.zeros(shape, bool)
        for mask in predicted:
            pred |= np.asarray(mask, bool)
        for mask in truth:
            target |= np.asarray(mask, bool)
        counts = (np.count_nonzero(pred & target), np.count_nonzero(pred), np.count_nonzero(target))
        spec = METRICS[self.metric]
        score = spec.load()(*counts) if spec.form == "counts" else spec.load()(predicted, truth)
        scores = {"dice": np.asarray([dice_from_counts(*counts)], np.float64),
                  "jaccard": np.asarray([jaccard_from_counts(*counts)], np.float64)}
        scores[self.metric] = np.asarray([score], np.float64).reshape(1)
        return ImageScores(self._record(image_id, fold, scores), self._row(scores))

    def _record(self, image_id: str, fold: int | None, scores: dict[str, np.ndarray]) -> dict:
        record = {"id": image_id, **({"fold": fold} if fold is not None else {})}
        record.update({name: float(values.mean()) for name, values in scores.items()})
        if len(self.classes) > 1:
            record.update({f"dice_{name}": float(value) for name, value in zip(self.classes, scores["dice"])})
        return record

    def _row(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        means = [1.0, scores["dice"].mean(), scores["jaccard"].mean(), scores[self.metric].mean()]
        return np.concatenate([means, scores["dice"]])

    # ---------------------------------------------------------------- accumulate

    def add(self, image_id: str, pred, target, truth: list[np.ndarray] | None = None, fold: int | None = None) -> None:
        """``score`` one image and keep it (see ``score`` for the forms)."""
        self.keep(self.score(image_id, pred, target, truth, fold))

    def add_objects(self, image_id: str, predicted: list[np.ndarray], truth: list[np.ndarray],
                    shape: tuple[int, int], fold: int | None = None) -> None:
        self.keep(self.score_objects(image_id, predicted, truth, shape, fold))

    def keep(self, scores: ImageScores) -> None:
        """Add one image's scores (from ``score``, maybe computed on another thread) after the others."""
        self._records.append(scores.record)
        self._sums += scores.sums  # in call order, float64: the same sums on every run
        if scores.histograms is not None:
            self._histograms.append(scores.histograms)
        if scores.objects is not None:
            self._objects.append(scores.objects)
        if scores.separated is not None:
            self._separated.append(scores.separated)

    # ---------------------------------------------------------------- summaries

    def __len__(self) -> int:
        return len(self._records)

    def sums(self) -> np.ndarray:
        """(4 + C,) float64: [images, Dice, IoU, metric, each class's Dice], summed over the images in the order
        they were added. Under DDP every rank's sums are added up (same length on every rank, even one that
        scored no image) and given to ``means``."""
        return self._sums.copy()

    def means(self, sums: np.ndarray | Sequence[float] | None = None) -> dict[str, float]:
        """Mean per image of Dice, IoU and the metric ("dice", "jaccard", the metric's name), with several
        classes the means over (image, class) pairs and each class's Dice ("dice_<class>"), from ``sums``
        (default this evaluator's own; under DDP the sums of every rank). No image: ZeroDivisionError."""
        count, dice, jaccard, score, *per_class = [float(v) for v in (self._sums if sums is None else sums)]
        means = {"dice": dice / count, "jaccard": jaccard / count}
        means[self.metric] = score / count  # the same value again for dice and jaccard
        if len(per_class) > 1:
            means.update({f"dice_{name}": value / count for name, value in zip(self.classes, per_class)})
        return means

    def table(self) -> pd.DataFrame:
        """One row per image, in the order they were added: id, fold (when given), dice, jaccard, the metric
        (when it is neither), ``dice_<class>`` with several classes."""
        return pd.DataFrame(self._records)

    def histograms(self) -> np.ndarray:
        """(N, 2, 256) int64: each image's level histograms of class 0 (needs ``search``)."""
        return np.stack(self._histograms)

    def separation_scores(self) -> np.ndarray:
        """(N, G) each image's metric at each setting of the watershed's search (needs ``separation``)."""
        return np.stack(self._separated)

    def threshold_scores(self) -> ThresholdScores:
        """The search's ``ThresholdScores`` on ``search``: from the objects' rows for a metric of objects, else
        exactly from the level histograms."""
        if self.search_grid is None:
            raise ValueError("this evaluator was built without search thresholds")
        if self.by_objects:
            return ThresholdScores.of_images(self.search_grid, self._objects)
        return scores_from_histograms(self.histograms(), self.search_grid, self.metric)

    def search(self, prefer: float | None = None) -> tuple[PostProcessing, pd.DataFrame]:
        """The (threshold, min_area) with the best mean metric and the search's table
        (``analysis.choose_postprocessing``); ties go to the threshold nearest ``prefer`` (default class 0's
        threshold, which must be one of ``search``)."""
        return choose_postprocessing(self.threshold_scores(), self.metric,
                                     self.thresholds[0] if prefer is None else prefer)
