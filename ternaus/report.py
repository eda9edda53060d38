"""The run's report: one static HTML page, PNGs beside it, opened in any browser, made from files already written.

Sections: per-fold training curves (from ``fold_K/log.csv``, drawn as inline SVG), the cross-validation table
(from ``oof.csv``), the worst and the best out-of-fold images (image, ground truth, predicted probability,
disagreement: green where both say car, red where only the prediction does, blue where only the truth does;
under a metric of objects on data of separate objects, the predicted objects coloured one by one), and a few test predictions. A part whose inputs are missing says which stage writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ternaus.data.source import DataSource
from ternaus.analysis import resolve_postprocessing
from ternaus.config import Config, PostprocessConfig, ReportConfig, thresholds
from ternaus.data.files import read_image, read_prediction
from ternaus.data.layouts import list_train, load_masks, mask_spec, test_rows
from ternaus.errors import DataError
from ternaus.io import atomic_write_bytes, atomic_write_text
from ternaus.lineage import check_oof, check_predictions, image_fingerprints
from ternaus.predictions import read_records
from ternaus.plots import svg_line_chart
from ternaus.registry import METRICS
from ternaus.run_files import RunFiles, folds_to_train
from ternaus.stage import Lock, StageOutputs
from ternaus.separation import object_labels
from ternaus.submission import masks_to_encode

__all__ = ["build_report", "ReportRun", "report_files", "cv_table", "pick_examples", "disagreement", "montage_row",
           "TP", "FP", "FN", "objects_coloured", "predicted_labels"]

GAP = 4  # pixels between the tiles of a montage row
TP, FP, FN = (40, 200, 40), (230, 30, 30), (40, 90, 255)  # RGB


@dataclass(frozen=True)
class ReportRun:
    """What the report's sections read, built once at the stage's entry (``ReportRun.from_config``): the run's
    files, its data (with the classes), the ``report`` and ``postprocess`` sections, the
    folds trained (``train.folds``, or all ``folds.n_folds``) and ``output_dir`` as configured (the page's
    title)."""

    files: RunFiles
    source: DataSource
    settings: ReportConfig
    post: PostprocessConfig
    folds: tuple[int, ...]
    output_dir: str

    @classmethod
    def from_config(cls, cfg: Config) -> "ReportRun":
        return cls(RunFiles.of(cfg), DataSource.of(cfg), cfg.report, cfg.postprocess,
                   tuple(folds_to_train(cfg.train.folds, cfg.folds.n_folds)), cfg.output_dir)


def cv_columns(metric: str = "dice") -> dict[str, str]:
    """The CV table's columns and headers: Dice, IoU and the competition's metric, then the same post-processed."""
    plain = {"dice": "Dice", "jaccard": "IoU"}
    plain.setdefault(metric, metric)
    return plain | {f"{c}_pp": f"{name}, post-processed" for c, name in plain.items()}


# ---------------------------------------------------------------- pure parts


def cv_table(oof: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Mean per-image scores per fold and over all out-of-fold images (the CV score), with image counts."""
    columns = [c for c in cv_columns(metric) if c in oof.columns]
    per_fold = oof.groupby("fold")[columns].mean()
    per_fold.insert(0, "images", oof.groupby("fold").size())
    per_fold.index = [f"fold {k}" for k in per_fold.index]
    overall = pd.DataFrame([[len(oof), *oof[columns].mean()]], columns=["images", *columns], index=["all (CV)"])
    return pd.concat([per_fold, overall])


def pick_examples(oof: pd.DataFrame, column: str, count: int, worst: bool) -> pd.DataFrame:
    """The ``count`` lowest (or highest) scores; equal scores in id order, so the page is reproducible."""
    ordered = oof.sort_values([column, "id"], ascending=[worst, True], kind="stable")
    return ordered.head(count)


def disagreement(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image dimmed, coloured where prediction and truth agree on car (TP), or where only one says car."""
    out = (image.astype(np.float32) * 0.45).astype(np.uint8)
    truth, pred = truth.astype(bool), pred.astype(bool)
    for where, colour in ((truth & pred, TP), (pred & ~truth, FP), (truth & ~pred, FN)):
        out[where] = colour
    return out


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def montage_row(tiles: list[np.ndarray], height: int) -> np.ndarray:
    """Tiles (RGB or grey) scaled to ``height`` and placed side by side on white, ``GAP`` pixels apart."""
    scaled = [fit_height(t, height) for t in tiles]
    width = sum(t.shape[1] for t in scaled) + GAP * (len(scaled) - 1)
    row = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for tile in scaled:
        row[:, x: x + tile.shape[1]] = tile
        x += tile.shape[1] + GAP
    return row


# ---------------------------------------------------------------- reading a run


def read_logs(files: RunFiles, folds: tuple[int, ...] | list[int]) -> dict[int, pd.DataFrame]:
    """The training log (``fold_K/log.csv`` of the run ``files``) of each of ``folds`` that has one."""
    logs = {}
    for fold in folds:
        path = files.log(fold)
        if path.is_file():
            logs[fold] = pd.read_csv(path)
    return logs


def write_png(path: Path, rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, encoded.tobytes())
    return path.name


def read_probability(path: Path, num_classes: int) -> np.ndarray | None:
    """Class 0's (H, W) probabilities from a prediction PNG (the report shows the first class)."""
    probs = read_prediction(path, num_classes)
    return None if probs is None else probs[0]


def thresholded(probs: np.ndarray, threshold: float | list[float], min_area: int) -> np.ndarray:
    """The mask make_submission.py encodes from class 0's probabilities."""
    return masks_to_encode(probs[None], thresholds(threshold, 1)[:1], None, min_area)[0]


def predicted_labels(run: "ReportRun", path: Path, post: tuple[float | list[float], int]) -> np.ndarray | None:
    """(H, W) the objects make_submission.py writes (rows=instance) from the prediction PNG at ``path``: 0
    background, 1..N; None where they are not shown (``shows_objects``) or the PNG cannot be read."""
    if not shows_objects(run):
        return None
    planes = read_prediction(path, run.source.num_classes)
    if planes is None:
        return None
    watershed = run.post.objects == "watershed"
    masks = masks_to_encode(planes, thresholds(post[0], len(planes)), None, 0 if watershed else post[1])
    return object_labels(masks, run.post.objects, post[1] if watershed else 0)


def shows_objects(run: "ReportRun") -> bool:
    """Whether the montages show the predicted objects one by one: for a metric of objects on data with its
    objects one by one (``instance_folders``) or split by the watershed, where telling touching objects apart
    is the point."""
    separated = run.post.objects == "watershed" or run.source.layout == "instance_folders"
    return METRICS[run.post.metric].form == "objects" and separated


def objects_coloured(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image dimmed, each object (label 1..N) in its own colour: hues spread by the golden ratio, so that
    neighbours (consecutive labels) differ; where two touching objects meet, the colour changes."""
    out = (image.astype(np.float32) * 0.35).astype(np.uint8)
    count = int(labels.max())
    if count:
        hues = ((np.arange(count) * 0.618034) % 1.0 * 180).astype(np.uint8)
        hsv = np.stack([hues, np.full(count, 220, np.uint8), np.full(count, 255, np.uint8)], 1)[None]
        palette = np.concatenate([[[0, 0, 0]], cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]])
        out[labels > 0] = palette[labels[labels > 0]]
    return out


# ---------------------------------------------------------------- HTML sections


FOLD_CHARTS = (("loss", "loss", {"train": "train_loss", "validation": "val_loss"}),
               ("validation", "score", {"Dice": "val_dice", "IoU": "val_jaccard"}),
               ("learning rate", "lr", {"lr": "lr"}))


def fold_charts(fold: int, log: pd.DataFrame, metric: str = "dice") -> str:
    """Loss, validation scores (Dice, IoU and the competition's metric) and learning rate by epoch; a column an
    older log lacks is left out."""
    epochs = log["epoch"].tolist()
    charts = []
    for title, y_label, columns in FOLD_CHARTS:
        if title == "validation" and metric not in ("dice", "jaccard"):
            columns = columns | {metric: f"val_{metric}"}
        series = {name: (epochs, log[column].tolist()) for name, column in columns.items() if column in log}
        charts.append(svg_line_chart(series, f"fold {fold}: {title}", "epoch", y_label, 320, 220))
    return f'<div class="fold" id="curves-fold-{fold}">' + "".join(charts) + "</div>"


def curves_section(logs: dict[int, pd.DataFrame], metric: str = "dice") -> str:
    if not logs:
        return "<p>No training logs (fold_K/log.csv): run train.py.</p>"
    return "\n".join(fold_charts(fold, log, metric) for fold, log in logs.items())


def search_chart(path: Path, metric: str) -> str:
    """The post-processing search's CV score by threshold, with and without the best minimum area."""
    if not path.is_file():
        return ""
    table = pd.read_csv(path)
    if "mask_threshold" in table.columns:  # the watershed's search (analysis.separation_table)
        return separation_chart(table, metric)
    thresholds = table["threshold"].tolist()
    return svg_line_chart({"best min_area": (thresholds, table["score"].tolist()),
                           "no min_area": (thresholds, table["score_no_min_area"].tolist())},
                          f"CV {metric} by threshold (out-of-fold)", "threshold", metric, 420, 240)


def separation_chart(table: pd.DataFrame, metric: str) -> str:
    """The watershed's search: CV score by the mask's threshold, one line per contact threshold (and plain
    connected components), each at its best minimum area."""
    best = table.groupby(["contact_threshold", "mask_threshold"], sort=True)["score"].max().reset_index()
    lines = {("components" if c == "components" else f"contacts at {c}"): (g["mask_threshold"].tolist(),
                                                                            g["score"].tolist())
             for c, g in best.groupby("contact_threshold", sort=True)}
    return svg_line_chart(lines, f"CV {metric} by mask threshold (out-of-fold, best min_area)", "threshold",
                          metric, 420, 240)


def cv_section(oof: pd.DataFrame | None, post: str, chart: str = "", metric: str = "dice") -> str:
    if oof is None:
        return "<p>No oof.csv: run predict.py (with predict.oof=true).</p>"
    table = cv_table(oof, metric)
    headers = cv_columns(metric)
    head = "".join(f"<th>{escape(headers.get(c, c))}</th>" for c in table.columns)
    body = []
    for name, row in table.iterrows():
        cells = "".join(f"<td>{int(v)}</td>" if c == "images" else f"<td>{v:.4f}</td>" for c, v in row.items())
        body.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    return (f'<table class="cv"><tr><th></th>{head}</tr>{"".join(body)}</table>'
            f"<p>Mean per-image scores of each fold's held-out images, predicted by the model that did not train on "
            f"them. The competition's metric (postprocess.metric): {escape(metric)}, "
            f"{escape(METRICS[metric].title)}. Post-processing: {escape(post)}.</p>{chart}")


def examples_section(run: ReportRun, out: Path, oof: pd.DataFrame | None, worst: bool,
                     post: tuple[float, int]) -> str:
    """The worst (or best) out-of-fold images of ``run`` (``oof``: oof.csv, or None) as montages written into
    ``out``, thresholded with ``post`` (threshold, min_area)."""
    if oof is None:
        return "<p>No oof.csv: run predict.py.</p>"
    column = next(c for c in (f"{run.post.metric}_pp", run.post.metric, "dice") if c in oof.columns)
    count = run.settings.worst if worst else run.settings.best
    rows = list_train(run.source).set_index("id")
    kind = "worst" if worst else "best"
    items = []
    for rank, example in enumerate(pick_examples(oof, column, count, worst).itertuples(index=False), 1):
        tiles = oof_tiles(run, rows.loc[example.id].to_dict() | {"id": example.id}, post)
        if tiles is None:
            missing = run.files.oof_predictions / f"{example.id}.png"
            items.append(f"<p>{escape(example.id)}: no {escape(str(missing))}; run predict.py again</p>")
            continue
        name = write_png(out / f"{kind}_{rank:02d}.png", montage_row(tiles, run.settings.tile_height))
        score = getattr(example, column)
        items.append(f'<figure><img src="{name}" alt="{escape(example.id)}"><figcaption>{escape(example.id)} '
                     f"(fold {example.fold}): {column} {score:.4f}</figcaption></figure>")
    objects = " | the predicted objects, one colour each" if shows_objects(run) else ""
    legend = ("<p>image | ground truth | predicted probability | disagreement: <span style='color:#28c828'>"
              "both</span>, <span style='color:#e61e1e'>prediction only</span>, <span style='color:#285aff'>"
              f"truth only</span>{objects}. Sorted by {escape(column)}.</p>")
    return legend + "\n".join(items)


def oof_tiles(run: ReportRun, row: dict, post: tuple[float, int]) -> list[np.ndarray] | None:
    """One training image (``row`` of ``list_train``) of ``run``: image, truth, out-of-fold probability and
    disagreement at ``post`` (threshold, min_area); None when its out-of-fold PNG cannot be read."""
    path = run.files.oof_predictions / f"{row['id']}.png"
    probs = read_probability(path, run.source.num_classes)
    if probs is None:
        return None
    image = read_image(row["image"], run.source.settings.image_max)
    if probs.shape != image.shape[:2]:
        raise DataError(f"{path} is (height, width) {probs.shape}, but the training image {row['image']} is "
                        f"{image.shape[:2]}: the out-of-fold predictions were made on other data (another "
                        "data.root?). Run predict.py with predict.oof=true on this data, or give report.py the "
                        "data.root the run was trained on")
    truth = load_masks(row, image.shape[:2], mask_spec(run.source))[0] > 0  # class 0, from whichever layout
    labels = predicted_labels(run, run.files.oof_predictions / f"{row['id']}.png", post)
    pred = thresholded(probs, *post) if labels is None else labels > 0
    tiles = [image, truth.astype(np.uint8) * 255, probs, disagreement(image, truth, pred)]
    return tiles if labels is None else [*tiles, objects_coloured(image, labels)]


def test_section(run: ReportRun, out: Path, post: tuple[float, int]) -> str:
    """The first ``report.test_images`` test predictions of ``run`` as montages written into ``out``, with the
    mask submitted at ``post`` (threshold, min_area)."""
    pred_dir = run.files.predictions
    items = []
    for rank, row in enumerate(test_rows(run.source)[: run.settings.test_images], 1):
        image_id = row["id"]
        probs = read_probability(pred_dir / f"{image_id}.png", run.source.num_classes)
        if probs is None:
            return f"<p>No test predictions in {escape(str(pred_dir))}: run predict.py.</p>"
        image = read_image(row["image"], run.source.settings.image_max)
        if probs.shape != image.shape[:2]:
            raise DataError(f"{pred_dir / f'{image_id}.png'} is (height, width) {probs.shape}, but the test image "
                            f"{row['image']} is {image.shape[:2]}: run predict.py on this data.root again")
        labels = predicted_labels(run, pred_dir / f"{image_id}.png", post)
        mask = thresholded(probs, *post) if labels is None else labels > 0
        overlay = disagreement(image, mask, mask) if labels is None else objects_coloured(image, labels)
        name = write_png(out / f"test_{rank:02d}.png", montage_row([image, probs, overlay], run.settings.tile_height))
        found = "" if labels is None else f" in {int(labels.max())} objects"
        items.append(f'<figure><img src="{name}" alt="{escape(image_id)}"><figcaption>{escape(image_id)}: '
                     f"{int(mask.sum())} foreground pixels submitted{found}</figcaption></figure>")
    return "<p>image | predicted probability | submitted mask</p>" + "\n".join(items)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px} table.cv td,table.cv th{padding:2px 10px;"
         "text-align:right;border-bottom:1px solid #ccc} figure{margin:6px 0} figcaption{font-size:12px;color:#444}"
         " .fold svg{margin-right:8px}")


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    body = "\n".join(f'<section id="{key}"><h2>{escape(heading)}</h2>\n{html}\n</section>'
                     for key, heading, html in sections)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n")


def report_files(settings: ReportConfig) -> set[str]:
    """The names of the files report.py writes in its folder, by the ``report`` section ``settings``."""
    shown = {"worst": settings.worst, "best": settings.best, "test": settings.test_images}
    return {"index.html"} | {f"{kind}_{rank:02d}.png" for kind, count in shown.items() for rank in range(1, count + 1)}


def build_report(cfg: Config) -> Path:
    """Write ``{output_dir}/{report.out_dir}/index.html`` and its PNGs; returns the page's path."""
    run = ReportRun.from_config(cfg)
    out = run.files.report
    with StageOutputs("report", run.source.places(), folders={"report.out_dir": out},
                      claims=[Lock(out, f"the report {out}")], temporaries={out: report_files(run.settings)}):
        out.mkdir(parents=True, exist_ok=True)
        return _build_report(run, out)


def _check_oof_inputs(run: ReportRun, oof: pd.DataFrame) -> None:
    """oof.csv and oof_predictions/ belong to the training set of ``run`` as it is now (``oof_lineage.json``), and
    name only its images (a run without the record, made before it was kept, is checked by id only)."""
    train = list_train(run.source)
    check_oof(run.files.oof_lineage, train.to_dict("records"), "report.py")
    unknown = sorted(set(oof["id"]) - set(train["id"]))
    if unknown:
        raise DataError(f"{run.files.oof_csv} scores {len(unknown)} image(s) that are not in the training set of "
                        f"data.root={run.source.root}, e.g. {unknown[:3]}: give report.py the data.root the run was "
                        "trained on, or run predict.py with predict.oof=true on this data")


def _build_report(run: ReportRun, out: Path) -> Path:
    """The page of ``run``, written with its PNGs into ``out``."""
    files = run.files
    oof_path = files.oof_csv
    oof = pd.read_csv(oof_path, dtype={"id": str}) if oof_path.is_file() else None
    if oof is not None:
        _check_oof_inputs(run, oof)
    rows = test_rows(run.source)[: run.settings.test_images]
    if rows and read_records(files.predictions):
        check_predictions(files.predictions, [r["id"] for r in rows], image_fingerprints(rows), "report.py")
    threshold, min_area, how = resolve_postprocessing(run.post, files)
    post = (threshold, min_area)
    metric = run.post.metric
    sections = [("curves", "Training curves", curves_section(read_logs(files, run.folds), metric)),
                ("cv", "Cross-validation", cv_section(oof, how, search_chart(files.postprocess_search, metric),
                                                      metric)),
                ("worst", "Worst out-of-fold images", examples_section(run, out, oof, True, post)),
                ("best", "Best out-of-fold images", examples_section(run, out, oof, False, post)),
                ("test", "Test predictions", test_section(run, out, post))]
    return atomic_write_text(out / "index.html", page(f"ternaus report: {run.output_dir}", sections))
