"""The TernausNet paper's experiment: the same UNet11 trained from three initialisations, nothing else changed.

1. LeCun uniform everywhere (from scratch);
2. the encoder from VGG11 pre-trained on ImageNet, the decoder LeCun uniform;
3. the whole network pre-trained on another dataset (here: fold 0 of a second synthetic set, trained from
   scratch with the same settings, or a checkpoint given by the user).

Every run uses the experiment's config unchanged except ``model.init`` and ``output_dir``: the same folds
file, seed, data order, augmentation, schedule and epochs. The table reports the validation IoU (mean
per-image Jaccard at ``postprocess.threshold``) that ``train.py`` logs each epoch.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ternaus.config import Config
from ternaus.io import atomic_write, atomic_write_text
from ternaus.plots import svg_line_chart
from ternaus.prepare import prepare_folds
from ternaus.registry import MODELS
from ternaus.run_files import RunFiles, folds_to_train
from ternaus.training import train
from ternaus.weights import imagenet_weight_candidates

__all__ = ["Initialisation", "initialisations", "run_experiment", "results_table", "pretrain"]


@dataclass(frozen=True)
class Initialisation:
    name: str  # folder and short label
    label: str  # the table's wording
    init: str | None  # model.init; None: not run
    why_not: str = ""


def imagenet_file(cfg: Config) -> Path | None:
    spec = MODELS[cfg.model.name]
    return next((p for p in imagenet_weight_candidates(cfg.model.encoder_weights, spec.imagenet.files)
                 if p.is_file()), None)


def initialisations(cfg: Config, checkpoint: Path) -> list[Initialisation]:
    """The paper's three rows; the ImageNet one is marked not run when its weights file is absent."""
    found = imagenet_file(cfg)
    tried = ", ".join(str(p) for p in imagenet_weight_candidates(cfg.model.encoder_weights,
                                                                 MODELS[cfg.model.name].imagenet.files))
    encoder = MODELS[cfg.model.name].encoder
    return [
        Initialisation("lecun", "LeCun uniform (from scratch)", "lecun"),
        Initialisation("imagenet", f"encoder = {encoder} pre-trained on ImageNet, decoder LeCun uniform",
                       "imagenet" if found else None,
                       "" if found else f"not run: ImageNet weights file absent (looked for {tried})"),
        Initialisation("pretrained", f"whole network pre-trained ({checkpoint})", str(checkpoint)),
    ]


def variant(cfg: Config, output_dir: Path, init: str, data_root: str | None = None) -> Config:
    """``cfg`` with another output folder and initialisation (and data), everything else the same."""
    new = copy.deepcopy(cfg)
    new.output_dir, new.model.init = str(output_dir), init
    if data_root is not None:
        new.data.root = str(data_root)
    return new


def ensure_folds(cfg: Config) -> Path:
    path = RunFiles.of(cfg).folds_csv
    return path if path.is_file() else prepare_folds(cfg)


def pretrain(cfg: Config, data_root: str, out: Path, epochs: int | None = None) -> Path:
    """Train the experiment's model from scratch on ``data_root`` (fold 0 held out); its best.pt."""
    source = variant(cfg, out, "lecun", data_root)
    source.train.folds = [0]
    source.train.epochs = epochs or cfg.train.epochs
    ensure_folds(source)
    train(source)
    return RunFiles.of(source).best(0)


def _train_variant(cfg: Config, folds_csv: Path, out: Path, init: str) -> None:
    run = variant(cfg, out, init)
    out.mkdir(parents=True, exist_ok=True)
    copy_to = RunFiles(out).folds_csv
    if not copy_to.is_file():
        shutil.copyfile(folds_csv, copy_to)  # the very same split for every initialisation
    train(run)


def read_curves(cfg: Config, out: Path, runs: list[Initialisation]) -> pd.DataFrame:
    """Long table of every run's log: init, fold, epoch, lr, train_loss, val_dice, val_jaccard, ..."""
    frames = []
    for run in (r for r in runs if r.init is not None):
        for fold in folds_to_train(cfg.train.folds, cfg.folds.n_folds):
            log = pd.read_csv(RunFiles(out / run.name).log(fold))
            frames.append(log.assign(init=run.name, fold=fold))
    return pd.concat(frames, ignore_index=True)


def results_table(curves: pd.DataFrame, runs: list[Initialisation]) -> pd.DataFrame:
    """One row per initialisation: validation IoU after the first and last epoch, and the best, fold-averaged."""
    rows = []
    for run in runs:
        if run.init is None:
            rows.append({"initialisation": run.label, "note": run.why_not})
            continue
        by_epoch = curves[curves["init"] == run.name].groupby("epoch")["val_jaccard"].mean()
        rows.append({"initialisation": run.label, "IoU epoch 1": by_epoch.iloc[0],
                     f"IoU epoch {by_epoch.index[-1]} (last)": by_epoch.iloc[-1],
                     "best IoU": by_epoch.max(), "best epoch": int(by_epoch.idxmax()),
                     # From the logs, so that a resumed run counts the epochs it did before it stopped.
                     "train time (s)": round(float(curves[curves["init"] == run.name]["time_s"].sum())),
                     "note": ""})
    return pd.DataFrame(rows)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""  # a row that was not run
    if column.startswith("IoU") or column.endswith("IoU"):
        return f"{value:.4f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(c, v) for c, v in zip(columns, row)) + " |")
    return "\n".join(lines)


def iou_chart(curves: pd.DataFrame, runs: list[Initialisation]) -> str:
    series = {}
    for run in (r for r in runs if r.init is not None):
        by_epoch = curves[curves["init"] == run.name].groupby("epoch")["val_jaccard"].mean()
        series[run.name] = (by_epoch.index.tolist(), by_epoch.tolist())
    return svg_line_chart(series, "validation IoU by epoch", "epoch", "IoU (mean per image)", 480, 300)


def write_results(cfg: Config, out: Path, runs: list[Initialisation]) -> pd.DataFrame:
    curves = read_curves(cfg, out, runs)
    atomic_write(out / "curves.csv", lambda tmp: curves.to_csv(tmp, index=False))
    table = results_table(curves, runs)
    atomic_write(out / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(out / "results.md", markdown_table(table) + "\n")
    atomic_write_text(out / "iou_by_epoch.svg", iou_chart(curves, runs) + "\n")
    return table


def run_experiment(cfg: Config, checkpoint: Path) -> pd.DataFrame:
    """Train every available initialisation into ``{output_dir}/<name>/`` and write the table and curves."""
    out = Path(cfg.output_dir)
    folds_csv = ensure_folds(cfg)
    runs = initialisations(cfg, checkpoint)
    for run in runs:
        if run.init is None:
            print(f"{run.label}: {run.why_not}")
            continue
        print(f"---- {run.label}: model.init={run.init}")
        _train_variant(cfg, folds_csv, out / run.name, run.init)
    table = write_results(cfg, out, runs)
    print(markdown_table(table))
    print(f"table: {out / 'results.md'}, curves: {out / 'iou_by_epoch.svg'}")
    return table
