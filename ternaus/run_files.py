"""A run's files under ``output_dir``: their names, in one place, for every stage that writes or reads them.

    {output_dir}/
      folds.csv                     prepare_folds.py: id, group, fold
      configs/<stage>.yaml          every stage: the configuration it resolved
      fold_K/last.pt                train.py: every epoch (and every train.checkpoint_every steps)
      fold_K/best.pt                train.py: the epoch with the best validation score
      fold_K/log.csv                train.py: one row per epoch
      predictions/<id>.png          predict.py: the test set's probabilities (predict.out_dir)
      predictions/.predict*.json    predict.py: what made them and which they are, for resuming
      oof.csv                       predict.py: per-image out-of-fold scores
      oof_levels.npz                predict.py: per-image level histograms (the search's input)
      oof_predictions/<id>.png      predict.py: out-of-fold probabilities
      postprocess.json              predict.py: the searched threshold and minimum area
      postprocess_search.csv        predict.py: the search's table
      oof_lineage.json              predict.py, ensemble.py: what the out-of-fold files were made from
      ensemble_cv.csv               ensemble.py: each member's and the ensemble's out-of-fold CV
      configs/ensemble.yaml         ensemble.py: its configuration (an ensemble's predictions/ is ensemble.py's)
      submission.csv.gz             make_submission.py (submission.filename)
      report/index.html             report.py (report.out_dir)
      .<name>.lock                  the lock of the output <name> while a stage writes it (ternaus.io.claim)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ternaus.config import Config
from ternaus.data.files import CSV_ERRORS, duplicates
from ternaus.errors import ConfigError, DataError

__all__ = ["RunFiles", "predictions_record", "read_folds", "folds_to_train", "check_outputs"]


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run's files; ``RunFiles.of(cfg)``, or ``RunFiles(output_dir)`` for the default names."""

    root: Path
    predictions_dir: str = "predictions"  # predict.out_dir
    submission_name: str = "submission.csv.gz"  # submission.filename
    report_dir: str = "report"  # report.out_dir
    checkpoint_name: str = "best.pt"  # predict.checkpoint: the checkpoint predict.py loads from each fold

    @classmethod
    def of(cls, cfg: Config) -> "RunFiles":
        return cls(Path(cfg.output_dir), cfg.predict.out_dir, cfg.submission.filename, cfg.report.out_dir,
                   cfg.predict.checkpoint)

    @property
    def predictions(self) -> Path:
        """The test predictions' folder."""
        return self.root / self.predictions_dir

    @property
    def submission(self) -> Path:
        return self.root / self.submission_name

    @property
    def report(self) -> Path:
        """The report's folder."""
        return self.root / self.report_dir

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    def config(self, stage: str) -> Path:
        """The resolved configuration a stage saves: ``configs/<stage>.yaml``."""
        return self.root / "configs" / f"{stage}.yaml"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{fold}"

    def last(self, fold: int) -> Path:
        return self.fold_dir(fold) / "last.pt"

    def best(self, fold: int) -> Path:
        return self.fold_dir(fold) / "best.pt"

    def log(self, fold: int) -> Path:
        return self.fold_dir(fold) / "log.csv"

    def tensorboard(self, fold: int) -> Path:
        """The fold's TensorBoard event folder (outside ``fold_K/``, which holds the checkpoints and log alone):
        ``tensorboard --logdir {output_dir}`` shows every fold."""
        return self.root / "tensorboard" / f"fold_{fold}"

    def checkpoint(self, fold: int) -> Path:
        """The checkpoint predict.py uses (``predict.checkpoint``)."""
        return self.fold_dir(fold) / self.checkpoint_name

    @property
    def oof_csv(self) -> Path:
        return self.root / "oof.csv"

    @property
    def oof_levels(self) -> Path:
        return self.root / "oof_levels.npz"

    @property
    def oof_predictions(self) -> Path:
        return self.root / "oof_predictions"

    @property
    def postprocess(self) -> Path:
        return self.root / "postprocess.json"

    @property
    def postprocess_search(self) -> Path:
        return self.root / "postprocess_search.csv"

    @property
    def ensemble_cv(self) -> Path:
        return self.root / "ensemble_cv.csv"

    @property
    def oof_outputs(self) -> list[Path]:
        """The files the out-of-fold phase of predict.py writes beside the folds (and oof_predictions/)."""
        return [self.oof_csv, self.oof_levels, self.postprocess, self.postprocess_search]

    @property
    def oof_lineage(self) -> Path:
        """What the out-of-fold files were made from (``ternaus.lineage.oof_lineage``)."""
        return self.root / "oof_lineage.json"

    @property
    def oof(self) -> Path:
        """What the lock on the out-of-fold files is named after (``.oof.lock``); not a file itself."""
        return self.root / "oof"


def predictions_record(shard_index: int = 0, shard_count: int = 1) -> str:
    """The name of the record, inside the predictions folder, of what made its PNGs (one per shard)."""
    return ".predict.json" if shard_count == 1 else f".predict-{shard_index}-of-{shard_count}.json"


def read_folds(path: Path, n_folds: int) -> pd.DataFrame:
    """The folds file at ``path`` (``RunFiles.folds_csv``), checked: one row per id, integer folds
    0 .. ``n_folds`` - 1 (``folds.n_folds``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run prepare_folds.py with the same config first")
    try:
        folds = pd.read_csv(path, dtype={"id": str, "car_id": str, "group": str})
    except CSV_ERRORS as err:
        raise DataError(f"{path} is not a readable CSV ({str(err).strip()[:200]}); "
                        "run prepare_folds.py again") from None
    if not {"id", "fold"} <= set(folds.columns) or not pd.api.types.is_integer_dtype(folds["fold"]):
        raise DataError(f"{path} needs an 'id' column and an integer 'fold' column; run prepare_folds.py again")
    repeated = duplicates(folds["id"])
    if repeated:
        raise DataError(f"{path} lists {len(repeated)} id(s) more than once, e.g. {repeated[:3]}; "
                        "run prepare_folds.py again")
    found = sorted(folds["fold"].unique().tolist())
    if found != list(range(n_folds)):
        raise DataError(f"{path} holds folds {found} but folds.n_folds={n_folds}; "
                        "run prepare_folds.py again with this config")
    return folds


def folds_to_train(folds: list[int] | None, n_folds: int) -> list[int]:
    """The folds train.py trains and predict.py averages: ``folds`` (``train.folds``), or all ``n_folds``."""
    return list(folds) if folds is not None else list(range(n_folds))


# ---------------------------------------------------------------- outputs kept apart from the data


def _overlap(output: Path, data: Path) -> str | None:
    if output == data:
        return "is"
    if data in output.parents:
        return "lies inside"
    if output in data.parents:
        return "contains"
    return None


def check_outputs(data: dict[str, Path], folders: dict[str, Path], files: dict[str, Path] | None = None) -> None:
    """Refuse, before anything runs, an output folder that is, lies inside or contains a data folder, and an
    output file that is a data file: a stage replaces and deletes files where it writes, and the data must
    never be among them. ``data``: the data's places (``DataSource.places``); ``folders``/``files``: the outputs, by
    the key or option that sets them. Raises ConfigError listing every overlap."""
    data_folders = {key: place for key, place in data.items() if place.is_dir()}
    data_files = {key: place for key, place in data.items() if key not in data_folders}
    problems = []
    for key, folder in folders.items():
        for data_key, place in data_folders.items():
            how = _overlap(Path(folder).resolve(), place)
            if how:
                problems.append(f"{key}: {folder} {how} the data folder {place} ({data_key})")
    for key, path in (files or {}).items():
        problems += [f"{key}: {path} is the data file {data_key}" for data_key, place in data_files.items()
                     if Path(path).resolve() == place]
    if problems:
        raise ConfigError("outputs and data overlap:\n  - " + "\n  - ".join(problems) + "\nA stage writes, replaces "
                          "and deletes files in its output folders; point output_dir (or the key named) at a folder "
                          "outside the data")
