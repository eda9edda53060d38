"""The TernausNet paper's experiment: the same network trained from three initialisations, nothing else changed.

1. LeCun uniform everywhere (from scratch);
2. the encoder pre-trained on ImageNet (VGG11 for UNet11, or a timm encoder's file), the decoder LeCun uniform;
3. the whole network pre-trained on another dataset (fold 0 of a second synthetic set, trained from scratch
   with the same settings, or a checkpoint given by the user, e.g. the same network trained on real Carvana).

Every run uses the experiment's config unchanged except ``model.init`` and ``output_dir``: the same folds
file, seed, data order, augmentation, schedule and epochs. The table reports the validation IoU (mean
per-image Jaccard at ``postprocess.threshold``) that ``train.py`` logs each epoch and, where the configured
``postprocess.metric`` is another one (TGS's ``iou_ap``), that metric too.
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
from ternaus.errors import WeightsError
from ternaus.registry import TimmImageNetWeights
from ternaus.weights import imagenet_weight_candidates, timm_imagenet_file

__all__ = ["Initialisation", "initialisations", "run_experiment", "results_table", "pretrain"]


@dataclass(frozen=True)
class Initialisation:
    name: str  # folder and short label
    label: str  # the table's wording
    init: str | None  # model.init; None: not run
    why_not: str = ""


def imagenet_candidates(cfg: Config) -> list[Path]:
    """Where the network's ImageNet encoder file is looked for, in order (empty: none is known)."""
    spec = MODELS[cfg.model.name]
    if isinstance(spec.imagenet, TimmImageNetWeights):
        try:
            return [timm_imagenet_file(cfg.model.encoder, cfg.model.encoder_weights)]
        except WeightsError:
            return []
    return imagenet_weight_candidates(cfg.model.encoder_weights, spec.imagenet.files)


def imagenet_file(cfg: Config) -> Path | None:
    return next((p for p in imagenet_candidates(cfg) if p.is_file()), None)


def encoder_name(cfg: Config) -> str:
    spec = MODELS[cfg.model.name]
    return getattr(cfg.model, spec.encoder_option) if spec.encoder_option else spec.encoder


def initialisations(cfg: Config, checkpoint: Path) -> list[Initialisation]:
    """The paper's three rows; the ImageNet one is marked not run when its weights file is absent."""
    found = imagenet_file(cfg)
    tried = ", ".join(str(p) for p in imagenet_candidates(cfg)) or "no file is known for this encoder"
    encoder = encoder_name(cfg)
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


def scored_metrics(cfg: Config) -> dict[str, str]:
    """The logged validation columns the table reports, by the name it gives them: IoU, and the configured
    metric where it is another one."""
    metrics = {"IoU": "val_jaccard"}
    if cfg.postprocess.metric not in ("jaccard", "iou"):
        metrics[cfg.postprocess.metric] = f"val_{cfg.postprocess.metric}"
    return metrics


def results_table(curves: pd.DataFrame, runs: list[Initialisation],
                  metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per initialisation: each of ``metrics`` (name -> log column; default IoU) after the first and last
    epoch, and the best, fold-averaged; the last epoch is the one the run ended on."""
    metrics = metrics or {"IoU": "val_jaccard"}
    rows = []
    for run in runs:
        if run.init is None:
            rows.append({"initialisation": run.label, "note": run.why_not})
            continue
        row = {"initialisation": run.label}
        for name, column in metrics.items():
            by_epoch = curves[curves["init"] == run.name].groupby("epoch")[column].mean()
            row |= {f"{name} epoch 1": by_epoch.iloc[0], f"{name} epoch {by_epoch.index[-1]} (last)": by_epoch.iloc[-1],
                    f"best {name}": by_epoch.max(),
                    # IoU's keeps the name the synthetic experiment's table has always had
                    ("best epoch" if name == "IoU" else f"best {name} epoch"): int(by_epoch.idxmax())}
        # From the logs, so that a resumed run counts the epochs it did before it stopped.
        row |= {"train time (s)": round(float(curves[curves["init"] == run.name]["time_s"].sum())), "note": ""}
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""  # a row that was not run
    if column.endswith(" epoch") or column.startswith("train time"):
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(c, v) for c, v in zip(columns, row)) + " |")
    return "\n".join(lines)


def iou_chart(curves: pd.DataFrame, runs: list[Initialisation], column: str = "val_jaccard",
              name: str = "IoU") -> str:
    series = {}
    for run in (r for r in runs if r.init is not None):
        by_epoch = curves[curves["init"] == run.name].groupby("epoch")[column].mean()
        series[run.name] = (by_epoch.index.tolist(), by_epoch.tolist())
    return svg_line_chart(series, f"validation {name} by epoch", "epoch", f"{name} (mean per image)", 480, 300)


def write_results(cfg: Config, out: Path, runs: list[Initialisation]) -> pd.DataFrame:
    curves = read_curves(cfg, out, runs)
    atomic_write(out / "curves.csv", lambda tmp: curves.to_csv(tmp, index=False))
    metrics = scored_metrics(cfg)
    table = results_table(curves, runs, metrics)
    atomic_write(out / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write_text(out / "results.md", markdown_table(table) + "\n")
    for name, column in metrics.items():
        chart = "iou_by_epoch.svg" if name == "IoU" else f"{name}_by_epoch.svg"
        atomic_write_text(out / chart, iou_chart(curves, runs, column, name) + "\n")
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
