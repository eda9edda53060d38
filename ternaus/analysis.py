"""Out-of-fold analysis: per-image scores at any threshold from one pass, and the post-processing search.

Predictions are uint8 probability levels (``inference.to_uint8``), so a threshold t keeps exactly the pixels
whose level is >= ceil(255 t), the same comparison ``make_submission.py`` makes. For each out-of-fold image
one pass stores two 256-bin histograms: the levels of all its pixels and of its ground-truth pixels. From
their reversed cumulative sums come, for every threshold at once, the predicted area and the overlap, hence
any metric of pixel counts (Dice, IoU, TGS's ``iou_ap``: one object per image), without keeping the
probability maps in memory or predicting again.

The minimum-area rule is the one Kaggle's empty-mask competitions used: when fewer than ``min_area`` pixels
pass the threshold, the image's prediction is emptied. Its score depends only on those counts too, so the
search over (threshold, min_area) is exact: for each threshold every useful minimum area is tried.

A metric of objects (Airbus's ``f2_instances``) needs each threshold's connected components, not counts: the
out-of-fold pass then scores each image on a coarser grid of thresholds (``OBJECT_THRESHOLDS``, and the
training threshold), and the search tries those thresholds only, still with every useful minimum area.
Both end as a ``ThresholdScores``: each image's score kept and emptied, and its area, at each threshold.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ternaus.config import PostprocessConfig, thresholds
from ternaus.data.source import DataSource
from ternaus.io import atomic_write, atomic_write_text
from ternaus.metrics import image_score, instances, true_labels
from ternaus.registry import METRICS
from ternaus.rle import decode_rle
from ternaus.run_files import RunFiles
from ternaus.separation import component_labels, drop_small, watershed_labels

__all__ = ["level_histograms", "counts_at_levels", "threshold_level", "score_from_counts", "best_min_area",
           "search_table", "choose_row", "search_postprocessing", "PostProcessing", "per_image_scores",
           "DEFAULT_THRESHOLDS", "OBJECT_THRESHOLDS", "ThresholdScores", "scores_from_histograms",
           "object_scores_of_image", "search_thresholds", "threshold_table", "choose_postprocessing", "TrueObjects",
           "FolderObjects", "true_objects", "SeparationGrid", "separation_scores_of_image",
           "separation_table", "choose_separation", "write_separation_analysis", "write_oof_analysis", "read_postprocessing", "resolve_postprocessing"]

LEVELS = 256
DEFAULT_THRESHOLDS = tuple(round(t / 100, 2) for t in range(1, 100))
# A metric of objects is searched on these (and the training threshold): each costs a connected-components pass
# per image, where a metric of counts costs nothing per threshold.
OBJECT_THRESHOLDS = tuple(round(t / 10, 1) for t in range(1, 10))
TIE = 1e-12  # scores closer than this count as equal: ties are broken by the rules in choose_row


# ---------------------------------------------------------------- the functional core


def level_histograms(levels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(2, 256) int64 for one image: how many pixels have each uint8 level, overall and inside ``target``."""
    flat = levels.reshape(-1).long()
    inside = flat[target.reshape(-1).bool()]
    return torch.stack([torch.bincount(flat, minlength=LEVELS), torch.bincount(inside, minlength=LEVELS)])


def counts_at_levels(histograms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2, 256) histograms -> predicted area (N, 256) and overlap (N, 256) at each level k (pixels with
    level >= k), and the target area (N,)."""
    at_or_above = np.cumsum(histograms[..., ::-1], axis=-1)[..., ::-1].astype(np.int64)
    return at_or_above[:, 0], at_or_above[:, 1], histograms[:, 1].sum(-1).astype(np.int64)


def threshold_level(threshold: float | np.ndarray) -> np.ndarray:
    """The first uint8 level a threshold keeps: ``level >= threshold * 255`` as the submission computes it."""
    return np.ceil(np.asarray(threshold, dtype=np.float64) * 255).astype(np.int64)


def score_from_counts(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray, metric: str) -> np.ndarray:
    """Per-image ``metric`` (a key of ``ternaus.registry.METRICS`` of the "counts" form) from pixel counts,
    arrays of any (broadcast) shape; an empty prediction of an empty mask scores 1."""
    spec = METRICS[metric]
    if spec.form != "counts":
        raise ValueError(f"{metric} is a metric of objects: it cannot be computed from pixel counts")
    return spec.load()(overlap, predicted, target)


def best_min_area(kept: np.ndarray, emptied: np.ndarray, areas: np.ndarray) -> tuple[int, float]:
    """The minimum area A maximising the mean score when images with area < A are emptied; (A, mean score).

    ``kept``/``emptied``: each image's score with its prediction kept or emptied; ``areas``: its predicted area.
    Only A = 0 and A = (some image's area) + 1 can change the score, so those are all tried; a tie goes
    to the smallest A (the least aggressive rule)."""
    order = np.argsort(areas, kind="stable")
    sorted_areas = areas[order]
    totals = kept.sum() + np.cumsum((emptied - kept)[order])
    last_of_each_area = np.append(sorted_areas[1:] != sorted_areas[:-1], True)
    candidates = np.concatenate([[0], sorted_areas[last_of_each_area] + 1])
    means = np.concatenate([[kept.sum()], totals[last_of_each_area]]) / len(kept)
    best = int(np.flatnonzero(means >= means.max() - TIE)[0])
    return int(candidates[best]), float(means[best])


@dataclass(frozen=True)
class ThresholdScores:
    """What the post-processing search needs, per out-of-fold image (N of them) at each of T thresholds: its
    score with the prediction kept (N, T), its predicted area in pixels (N, T), and its score with the
    prediction emptied (N,)."""

    thresholds: tuple[float, ...]
    kept: np.ndarray
    areas: np.ndarray
    emptied: np.ndarray

    def column(self, threshold: float) -> int:
        return self.thresholds.index(threshold)

    @classmethod
    def of_images(cls, thresholds: tuple[float, ...],
                  rows: list[tuple[np.ndarray, np.ndarray, float]]) -> ThresholdScores:
        """Stack the images' rows as ``object_scores_of_image`` returns them."""
        kept, areas, emptied = zip(*rows)
        return cls(tuple(thresholds), np.stack(kept), np.stack(areas), np.asarray(emptied))

    def per_image(self, threshold: float, min_area: int = 0) -> np.ndarray:
        """(N,) each image's score at ``threshold`` (one of ``thresholds``) with the minimum-area rule."""
        k = self.column(threshold)
        return np.where(self.areas[:, k] >= min_area, self.kept[:, k], self.emptied)


def scores_from_histograms(histograms: np.ndarray, thresholds: tuple[float, ...], metric: str) -> ThresholdScores:
    """Exact ``ThresholdScores`` of a metric of counts from (N, 2, 256) level histograms."""
    predicted, overlap, target = counts_at_levels(histograms)
    levels = threshold_level(np.asarray(thresholds))
    kept = score_from_counts(overlap[:, levels], predicted[:, levels], target[:, None], metric)
    emptied = score_from_counts(np.zeros_like(target), np.zeros_like(target), target, metric)
    return ThresholdScores(tuple(thresholds), kept, predicted[:, levels], emptied)


def object_scores_of_image(levels: np.ndarray, truth: list[np.ndarray], thresholds: tuple[float, ...],
                           metric: str) -> tuple[np.ndarray, np.ndarray, float]:
    """One image's row of ``ThresholdScores`` for any metric: (H, W) uint8 levels, its true objects -> the score
    with the prediction kept at each threshold (its connected components as objects), the predicted area at
    each threshold, and the score of an empty prediction."""
    kept, areas = [], []
    for level in threshold_level(np.asarray(thresholds)):
        pred = levels >= level
        kept.append(image_score(metric, instances(pred), truth, pred.shape))
        areas.append(int(np.count_nonzero(pred)))
    return np.asarray(kept), np.asarray(areas, np.int64), image_score(metric, [], truth, levels.shape)


def search_thresholds(metric: str, trained_at: float) -> tuple[float, ...]:
    """The thresholds the search tries for ``metric``: every 0.01 for a metric of counts (exact and free), the
    coarser ``OBJECT_THRESHOLDS`` for a metric of objects; the training threshold always."""
    grid = DEFAULT_THRESHOLDS if METRICS[metric].form == "counts" else OBJECT_THRESHOLDS
    return tuple(sorted({*grid, float(trained_at)}))


@dataclass(frozen=True)
class PostProcessing:
    threshold: float
    min_area: int
    metric: str
    score: float  # mean per-image metric on the out-of-fold images with these values
    default_score: float  # the same at the training threshold with no minimum area
    default_threshold: float
    images: int


def threshold_table(scores: ThresholdScores) -> pd.DataFrame:
    """Per threshold: the mean score with no minimum area, the best minimum area and the score with it."""
    rows = []
    for k, threshold in enumerate(scores.thresholds):
        min_area, score = best_min_area(scores.kept[:, k], scores.emptied, scores.areas[:, k])
        rows.append({"threshold": threshold, "score_no_min_area": float(scores.kept[:, k].mean()),
                     "min_area": min_area, "score": score})
    return pd.DataFrame(rows)


def search_table(histograms: np.ndarray, thresholds: tuple[float, ...], metric: str) -> pd.DataFrame:
    """``threshold_table`` of a metric of counts, from level histograms."""
    return threshold_table(scores_from_histograms(histograms, tuple(thresholds), metric))


def choose_row(table: pd.DataFrame, prefer: float = 0.5) -> pd.Series:
    """The best score; among equal scores the threshold nearest ``prefer``, then the smaller minimum area."""
    best = table[table["score"] >= table["score"].max() - TIE]
    distance = (best["threshold"] - prefer).abs()
    return best.assign(distance=distance).sort_values(["distance", "min_area"], kind="stable").iloc[0]


def choose_postprocessing(scores: ThresholdScores, metric: str,
                          default_threshold: float = 0.5) -> tuple[PostProcessing, pd.DataFrame]:
    """The (threshold, min_area) of ``scores`` with the best mean per-image ``metric``, and the search's table;
    ``default_threshold`` must be one of ``scores.thresholds``."""
    table = threshold_table(scores)
    row = choose_row(table, default_threshold)
    default = float(scores.kept[:, scores.column(default_threshold)].mean())
    chosen = PostProcessing(float(row["threshold"]), int(row["min_area"]), metric, float(row["score"]), default,
                            default_threshold, len(scores.emptied))
    return chosen, table


def search_postprocessing(histograms: np.ndarray, metric: str = "dice", default_threshold: float = 0.5,
                          thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> tuple[PostProcessing, pd.DataFrame]:
    """The (threshold, min_area) with the best mean per-image ``metric`` (of counts) on out-of-fold histograms."""
    tried = tuple(sorted({*thresholds, float(default_threshold)}))
    return choose_postprocessing(scores_from_histograms(histograms, tried, metric), metric, default_threshold)


def per_image_scores(histograms: np.ndarray, threshold: float, min_area: int = 0) -> pd.DataFrame:
    """Each image's Dice, IoU and areas at ``threshold`` with the minimum-area rule applied."""
    predicted, overlap, target = counts_at_levels(histograms)
    level = int(threshold_level(threshold))
    keep = predicted[:, level] >= min_area
    area, inter = predicted[:, level] * keep, overlap[:, level] * keep
    return pd.DataFrame({"dice": score_from_counts(inter, area, target, "dice"),
                         "jaccard": score_from_counts(inter, area, target, "jaccard"),
                         "pred_area": area, "target_area": target})


# ---------------------------------------------------------------- the watershed's settings (postprocess.objects)


@dataclass(frozen=True)
class SeparationGrid:
    """What the search tries for ``postprocess.objects: watershed``: the mask's threshold, the contact's (None:
    plain connected components, the comparison the search reports beside) and the minimum area per object."""

    mask: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    contact: tuple[float | None, ...] = (None, 0.3, 0.5, 0.7)
    min_area: tuple[int, ...] = (0, 10, 20, 40, 80)

    @classmethod
    def around(cls, trained_at: tuple[float, float]) -> "SeparationGrid":
        """The default grid with the configured (mask, contact) thresholds added."""
        grid = cls()
        return cls(tuple(sorted({*grid.mask, float(trained_at[0])})),
                   (None, *sorted({*(c for c in grid.contact if c is not None), float(trained_at[1])})),
                   grid.min_area)

    def settings(self) -> list[tuple[float, float | None, int]]:
        """Every (mask threshold, contact threshold or None, min_area), in the order of a row of scores."""
        return [(m, c, a) for m in self.mask for c in self.contact for a in self.min_area]


def separation_scores_of_image(levels: np.ndarray, target: np.ndarray, truth: list[np.ndarray] | None,
                               grid: SeparationGrid, metric: str) -> np.ndarray:
    """(G,) one image's ``metric`` at each of ``grid.settings()``: (C >= 2, H, W) uint8 levels (plane 0 the
    objects, plane 1 their contacts), the (H, W) true mask and its objects when known."""
    true = true_labels(np.asarray(target, bool), truth)
    score = METRICS[metric].load()
    row = []
    for mask_at in grid.mask:
        mask = levels[0] >= threshold_level(mask_at)
        for contact_at in grid.contact:
            labels = (component_labels(mask) if contact_at is None
                      else watershed_labels(mask, levels[1] >= threshold_level(contact_at)))
            row += [float(score(drop_small(labels, area) if area > 1 else labels, true)) for area in grid.min_area]
    return np.asarray(row)


def separation_table(scores: np.ndarray, grid: SeparationGrid) -> pd.DataFrame:
    """One row per setting of ``grid``: mask_threshold, contact_threshold ("components" for none), min_area,
    score (the mean over the images of ``scores``, (N, G))."""
    return pd.DataFrame([{"mask_threshold": m, "contact_threshold": "components" if c is None else c,
                          "min_area": a, "score": float(mean)}
                         for (m, c, a), mean in zip(grid.settings(), scores.mean(0))])


def choose_separation(scores: np.ndarray, grid: SeparationGrid, metric: str,
                      trained_at: tuple[float, float]) -> tuple[dict, pd.DataFrame]:
    """The watershed's best (mask threshold, contact threshold, min_area) on (N, G) out-of-fold ``scores``
    (ties: the first in grid order), what postprocess.json holds; beside it the best plain connected components
    and the configured thresholds' score."""
    table = separation_table(scores, grid)
    watershed = table[table["contact_threshold"] != "components"]
    best = watershed.loc[watershed["score"].idxmax()]
    components = table[table["contact_threshold"] == "components"]
    plain = components.loc[components["score"].idxmax()]
    default = watershed[(watershed["mask_threshold"] == trained_at[0]) & (watershed["contact_threshold"] ==
                                                                         trained_at[1]) & (watershed["min_area"] == 0)]
    chosen = {"threshold": [float(best["mask_threshold"]), float(best["contact_threshold"])],
              "min_area": int(best["min_area"]), "metric": metric, "objects": "watershed", "score": float(best["score"]),
              "default_score": float(default["score"].iloc[0]), "default_threshold": [float(t) for t in trained_at],
              "images": int(len(scores)), "components_score": float(plain["score"]),
              "components_threshold": float(plain["mask_threshold"]), "components_min_area": int(plain["min_area"])}
    return chosen, table


def write_separation_analysis(files: RunFiles, post: PostprocessConfig, oof: pd.DataFrame, scores: np.ndarray,
                              grid: SeparationGrid, predictions: dict | None = None) -> dict:
    """``oof.csv`` (the metric at the configured thresholds, ``<metric>_pp`` with the searched watershed,
    ``<metric>_components`` with the best plain connected components), ``postprocess_search.csv`` and
    ``postprocess.json`` for ``postprocess.objects: watershed``; returns what postprocess.json holds."""
    metric = post.metric
    trained_at = tuple(thresholds(post.threshold, 2))
    chosen, table = choose_separation(scores, grid, metric, trained_at)
    settings = grid.settings()
    column = {setting: k for k, setting in enumerate(settings)}
    pick = lambda m, c, a: scores[:, column[(m, c, a)]]  # noqa: E731
    oof = oof.assign(**{f"{metric}_pp": pick(*chosen["threshold"], chosen["min_area"]),
                        f"{metric}_components": pick(chosen["components_threshold"], None,
                                                     chosen["components_min_area"])})
    atomic_write(files.oof_csv, lambda tmp: oof.to_csv(tmp, index=False))
    atomic_write(files.postprocess_search, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(files.postprocess, json.dumps({**chosen, "predictions": predictions}, indent=1) + "\n")
    return chosen


# ---------------------------------------------------------------- true objects


@dataclass(frozen=True)
class TrueObjects:
    """The true objects of training rows whose masks CSV lists one row per object (``data.csv.rows=instance``,
    Airbus): each row decoded on its own, so that touching objects stay two objects."""

    rows: dict[str, dict]
    rle: object  # the masks CSV's RleFormat

    def __call__(self, image_id: str, shape: tuple[int, int]) -> list[np.ndarray]:
        runs = self.rows[image_id].get("runs") or ()
        objects = [decode_rle(rle, shape, self.rle).astype(bool) for _, rle in runs]
        return [mask for mask in objects if mask.any()]


@dataclass(frozen=True)
class FolderObjects:
    """The true objects of training rows of ``data.layout: instance_folders``: one mask file per object."""

    rows: dict[str, dict]

    def __call__(self, image_id: str, shape: tuple[int, int]) -> list[np.ndarray]:
        from ternaus.data.instance_folders import load_objects

        return load_objects(self.rows[image_id], shape)


def true_objects(metric: str, source: DataSource, rows: list[dict]) -> TrueObjects | FolderObjects | None:
    """The true objects of ``rows`` where the metric scores objects and the data has them one by one (a masks
    CSV with a row per object: ``TrueObjects``; a mask file per object: ``FolderObjects``); else None: the
    objects are then the connected components of each true mask."""
    if METRICS[metric].form != "objects":
        return None
    if source.layout == "instance_folders":
        return FolderObjects({row["id"]: row for row in rows})
    if source.layout != "rle_csv" or source.csv.rows != "instance":
        return None
    return TrueObjects({row["id"]: row for row in rows}, source.rle)


# ---------------------------------------------------------------- files of a run


def write_oof_analysis(files: RunFiles, post: PostprocessConfig, oof: pd.DataFrame, histograms: np.ndarray,
                       objects: ThresholdScores | None = None, predictions: dict | None = None) -> PostProcessing:
    """``oof.csv`` with scores at the training threshold and after the searched post-processing,
    ``oof_levels.npz``, ``postprocess_search.csv`` and ``postprocess.json`` under ``output_dir``.

    The search maximises ``postprocess.metric``: exactly from ``histograms`` for a metric of counts; from
    ``objects`` (the out-of-fold pass's scores on ``search_thresholds``) for a metric of objects.
    ``predictions``: what made the predictions the search was run for (``predictions.searched_key``), kept in
    postprocess.json so that make_submission.py never applies it to the predictions of other models."""
    metric = post.metric
    trained_at = thresholds(post.threshold, 1)[0]  # one class: a number, or a list of one
    scores = objects if objects is not None else scores_from_histograms(
        histograms, search_thresholds(metric, trained_at), metric)
    chosen, table = choose_postprocessing(scores, metric, trained_at)
    plain = per_image_scores(histograms, trained_at)
    tuned = per_image_scores(histograms, chosen.threshold, chosen.min_area)
    oof = oof[["id", "fold"]].reset_index(drop=True).join(plain)
    oof = oof.assign(dice_pp=tuned["dice"], jaccard_pp=tuned["jaccard"])
    if metric not in plain.columns:  # the competition's metric beside Dice and IoU
        oof.insert(4, metric, scores.per_image(trained_at))
        oof[f"{metric}_pp"] = scores.per_image(chosen.threshold, chosen.min_area)
    atomic_write(files.oof_csv, lambda tmp: oof.to_csv(tmp, index=False))
    atomic_write(files.oof_levels,
                 lambda tmp: np.savez_compressed(tmp, ids=np.asarray(oof["id"], dtype=str), histograms=histograms))
    atomic_write(files.postprocess_search, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(files.postprocess, json.dumps({**asdict(chosen), "predictions": predictions}, indent=1) + "\n")
    return chosen


def read_postprocessing(output_dir: str | Path) -> dict | None:
    path = RunFiles(Path(output_dir)).postprocess
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_postprocessing(post: PostprocessConfig, files: RunFiles, threshold: float | list[float] | None = None,
                           min_area: int | None = None) -> tuple[float | list[float], int, str]:
    """The submission's threshold and minimum area, and where each came from. First found wins: the
    command line, then the values ``predict.py`` searched (``postprocess.json``) when ``postprocess.use_searched``,
    then ``postprocess.threshold`` / ``postprocess.min_area``."""
    searched = (read_postprocessing(files.root) or {}) if post.use_searched else {}
    where = f"{files.postprocess} (searched on the out-of-fold predictions)"
    picks = []
    for cli, key in ((threshold, "threshold"), (min_area, "min_area")):
        picks.append(next((value, source) for value, source in (
            (cli, "the command line"), (searched.get(key), where),
            (getattr(post, key), f"postprocess.{key} in the config")) if value is not None))
    (t, t_from), (a, a_from) = picks
    t = [float(v) for v in t] if isinstance(t, list) else float(t)  # one per class, from the config
    return t, int(a), f"threshold {t} from {t_from}; min_area {a} from {a_from}"
