"""Score a submission against known masks with the competition's metric (``postprocess.metric``):

    python -m ternaus.evaluate --config CONFIG SUBMISSION TRUTH [--images DIR] [--oof OOF_CSV] [KEY=VALUE ...]

``TRUTH`` is either

- a CSV in the submission's format: the columns ``submission.columns`` (found by name, in any order), the RLE
  in ``submission.rle``. The rows of one key are its objects (Airbus: one row per ship); a key the CSV does not
  list is empty (Severstal lists only the defects). The competitions' own training CSVs are such files
  (TGS's ``train.csv``, Airbus's ``train_ship_segmentations_v2.csv``, Severstal's ``train.csv``, Carvana's
  ``train_masks.csv``); or
- a folder of mask images named as the training masks are (``data.layout``: Carvana's ``<id>_mask.gif``,
  ``folders``' ``<id>.png``), read as training masks and written into rows as ``make_submission.py`` would
  (with ``submission.rows=instance``, one object per connected component); or
- with ``data.layout: instance_folders``, a folder of image folders with one mask PNG per object
  (``<id>/images/<id>.png``, ``<id>/masks/*.png``; DSB 2018's ``stage1_train``): each mask file is one true
  object, and the folder's images are the images scored (``--images`` is then not needed).

``--images`` (default ``data.test_dir``) holds the images the truth belongs to: each names its rows (through
``submission.values``) and gives its size (or ``submission.encode_size``). Every row key of those images is
scored and averaged: images, or (image, class) pairs. The submission must have every key and no other, each
once (one row per key but with ``submission.rows=instance``, whose rows are objects); a truth in rows of
images or objects must list every image too (a truth of (image, class) rows lists only the non-empty ones).
``--subset`` scores only the keys both list instead, and says how many that is of how many. A truth mask of
another size than its image is refused.

``--oof`` prints the out-of-fold score of a run: ``oof.csv`` (predict.py's) or ``ensemble_cv.csv``
(ensemble.py's), after checking the run's ``oof_lineage.json`` against its checkpoints, folds and members.

The pipeline never reads test masks; this is for data that has them (the fixtures' hidden test masks, a
held-out part of the training set).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ternaus.data.source import DataSource
from ternaus.cli import load_stage_config, run_stage
from ternaus.config import Config
from ternaus.data.files import IMAGE_SUFFIXES, image_size, listing, read_text_csv
from ternaus.data.folders import files_by_stem
from ternaus.data.instance_folders import image_folders, load_objects
from ternaus.data.layouts import list_train, load_masks, mask_spec
from ternaus.errors import ConfigError, DataError
from ternaus.evaluation import Evaluator
from ternaus.lineage import check_oof
from ternaus.registry import METRICS
from ternaus.rle import decode_rle, encode_rle
from ternaus.submission import SubmissionFormat, image_rows, masks_to_encode, submission_format

__all__ = ["score_submission", "expected_keys", "read_rows", "truth_rows", "objects_by_key", "score_objects", "main"]

Key = tuple[str, ...]


def expected_keys(fmt: SubmissionFormat, images: Path, layout: str = "folders") -> dict[Key, tuple[int, int]]:
    """Every row key of the images in ``images``, with the (H, W) its RLE is decoded at; ``layout``
    ``instance_folders``: the images are ``images/<id>/images/<id>.png``."""
    found = image_folders(images, "test_dir") if layout == "instance_folders" else files_by_stem(
        images, IMAGE_SUFFIXES, "images")
    if not found:
        raise DataError(f"no images in {images}: --images must hold the images the truth belongs to")
    shapes = {}
    for path in found.values():
        shape = fmt.encode_size or image_size(path)
        shapes.update({key: shape for key in fmt.keys_of(path.name)})
    return shapes


def read_rows(path: Path, fmt: SubmissionFormat, what: str) -> pd.DataFrame:
    """A CSV with the submission's columns (others are ignored), as strings, in the submission's column order."""
    table = read_text_csv(path, list(fmt.columns), f"it must have the submission's columns {list(fmt.columns)} "
                          "(submission.columns)", what=what)
    return table[list(fmt.columns)]


def truth_rows(source: DataSource, fmt: SubmissionFormat, masks: Path, images: Path) -> pd.DataFrame:
    """The true masks of the folder ``masks`` (of the images in ``images``), read as ``source``'s layout reads
    training masks, as rows of the submission format ``fmt``."""
    if source.layout == "instance_folders":
        return _object_rows(source, fmt, masks)
    if source.layout == "rle_csv":
        raise ConfigError(f"{masks} is a folder, but data.layout=rle_csv reads masks from a CSV: give the truth as "
                          "a CSV in the submission's format")
    # The folder is the whole truth: no masks CSV (Carvana's layout would fall back on train_masks.csv).
    data = dataclasses.replace(source.settings, train_dir=str(images.resolve()), masks_dir=str(masks.resolve()),
                               masks_csv=str(masks.resolve()))
    truth = dataclasses.replace(source, settings=data)
    table = list_train(truth)
    lacking = table[(table["mask"] == "") & (table["rle"] == "")]["id"].tolist()
    if lacking:
        raise DataError(f"{len(lacking)} image(s) of {images} have no mask in {masks}, e.g. {lacking[:3]}")
    rows, classes, spec, wrong = [], source.num_classes, mask_spec(truth), []
    for row in table.to_dict("records"):
        size = image_size(row["image"])
        planes = load_masks(row, size, spec) * 255
        if planes.shape[1:] != size:
            wrong.append(f"{row['mask'] or row['id']}: (height, width) {planes.shape[1:]}, its image {size}")
            continue
        rows += image_rows(Path(row["image"]).name, masks_to_encode(planes, [0.5] * classes, fmt.encode_size), fmt)
    if wrong:
        raise DataError(listing(f"{len(wrong)} true mask(s) in {masks} are not the size of their image in {images}: "
                                "they cannot be scored right; give --images the images these masks belong to", wrong,
                                limit=10))
    return pd.DataFrame(rows, columns=list(fmt.columns))


def _object_rows(source: DataSource, fmt: SubmissionFormat, folder: Path) -> pd.DataFrame:
    """The true objects of a folder in ``instance_folders``' layout (``<id>/images/<id>.png``, one mask PNG per
    object in ``<id>/masks/``), one row per object as the submission writes them."""
    truth = dataclasses.replace(source, settings=dataclasses.replace(source.settings, train_dir=str(folder.resolve())))
    rows = []
    for row in list_train(truth).to_dict("records"):
        name = Path(row["image"]).name
        objects = load_objects(row, image_size(row["image"]))
        rows += [fmt.row(name, 0, encode_rle(mask, fmt.rle)) for mask in objects] or [fmt.row(name, 0, fmt.rle.empty)]
    return pd.DataFrame(rows, columns=list(fmt.columns))


def objects_by_key(table: pd.DataFrame, fmt: SubmissionFormat, shapes: dict[Key, tuple[int, int]],
                   what: str) -> dict[Key, list[np.ndarray]]:
    """Each key's objects: its rows' non-empty masks, decoded in ``submission.rle``; keys not in ``shapes``
    (the images') are refused."""
    objects: dict[Key, list[np.ndarray]] = defaultdict(list)
    keys = list(zip(*(table[c] for c in fmt.key_columns)))
    unknown = sorted({key for key in keys if key not in shapes})
    if unknown:
        raise DataError(f"{what} has {len(unknown)} row key(s) that name none of the images, e.g. "
                        f"{[','.join(k) for k in unknown[:3]]}; check --images and submission.values")
    problems = []
    for key, rle in zip(keys, table[fmt.columns[fmt.rle_column]]):
        try:
            mask = decode_rle(rle, shapes[key], fmt.rle).astype(bool)
        except ValueError as err:
            problems.append(f"{','.join(key)}: {err}")
            continue
        if mask.any():
            objects[key].append(mask)
    if problems:
        raise DataError(listing(f"{what}: {len(problems)} RLE string(s) do not fit their image "
                                "(check submission.rle)", problems, limit=10))
    return objects


def score_objects(metric: str, predicted: dict[Key, list[np.ndarray]], truth: dict[Key, list[np.ndarray]],
                  shapes: dict[Key, tuple[int, int]]) -> float:
    """Mean over ``shapes``' keys of ``metric``, each key scored by ``Evaluator.score_objects``."""
    evaluator = Evaluator(metric)
    for key, shape in shapes.items():
        evaluator.add_objects(",".join(key), predicted.get(key, []), truth.get(key, []), shape)
    return float(np.mean(evaluator.table()[metric]))


def _keys(table: pd.DataFrame, fmt: SubmissionFormat) -> list[Key]:
    return list(zip(*(table[c] for c in fmt.key_columns)))


def _repeated_keys_problem(table: pd.DataFrame, fmt: SubmissionFormat, what: str) -> str | None:
    """A key listed twice where a key is one row (all but ``rows=instance``, whose rows are objects)."""
    if fmt.rows == "instance":
        return None
    counts = pd.Series(_keys(table, fmt), dtype=object).value_counts()
    repeated = [",".join(k) for k in counts[counts > 1].index]
    if repeated:
        return (f"{what} lists {len(repeated)} key(s) more than once, e.g. {sorted(repeated)[:3]}: each key is one row "
                "(Kaggle refuses such a file); remove the repeats")
    return None


def _unlisted(table: pd.DataFrame, fmt: SubmissionFormat, shapes: dict) -> list:
    """The keys of ``shapes`` (the images scored) that ``table`` has no row for, in ``shapes``' order."""
    listed = set(_keys(table, fmt))
    return [key for key in shapes if key not in listed]


def _submitted_keys_problem(table: pd.DataFrame, fmt: SubmissionFormat, shapes: dict) -> str | None:
    missing = _unlisted(table, fmt, shapes)
    if missing:
        return (f"the submission has no row for {len(missing)} of {len(shapes)} key(s), e.g. "
                f"{[','.join(k) for k in missing[:3]]}: Kaggle refuses such a file (--subset scores the keys it "
                "has only)")
    return None


def _truth_keys_problem(table: pd.DataFrame, fmt: SubmissionFormat, shapes: dict, truth: Path) -> str | None:
    """A truth in rows of images or objects lists every image (empty ones with an empty RLE); one it does not list
    has no known mask, and scoring it as empty would count a right prediction as wrong."""
    if fmt.rows == "image_class":  # Severstal's lists only the (image, class) pairs with a defect
        return None
    missing = _unlisted(table, fmt, shapes)
    if missing:
        return (f"the truth {truth} has no row for {len(missing)} of {len(shapes)} image(s), e.g. "
                f"{[','.join(k) for k in missing[:3]]}: their masks are unknown. Give --images the images the truth "
                "covers, or --subset to score only the images both list")
    return None


def _subset(shapes: dict[Key, tuple[int, int]], submitted: pd.DataFrame, truth: pd.DataFrame,
            fmt: SubmissionFormat) -> dict[Key, tuple[int, int]]:
    """The keys of ``shapes`` the submission lists and (unless rows are (image, class) pairs) the truth lists."""
    both = set(_keys(submitted, fmt))
    if fmt.rows != "image_class":
        both &= set(_keys(truth, fmt))
    kept = {key: shape for key, shape in shapes.items() if key in both}
    if not kept:
        raise DataError("--subset: the submission and the truth have no key of the images in common; check --images "
                        "and submission.values")
    print(f"--subset: scoring {len(kept)} of the {len(shapes)} key(s) of the images (those the submission "
          f"{'and the truth list' if fmt.rows != 'image_class' else 'lists'})")
    return kept


def score_submission(cfg: Config, submission: str | Path, truth: str | Path, images: str | Path | None = None,
                     metrics: tuple[str, ...] | None = None, subset: bool = False) -> dict[str, float]:
    """Mean per key of ``metrics`` (default ``postprocess.metric``) of ``submission`` against ``truth`` (a CSV in
    the submission's format, or a folder of masks; see the module's docstring) over the images of ``images``
    (default ``data.test_dir``). Returns ``{metric: score}``. Raises DataError for what cannot be scored right:
    a key repeated, a key of the images missing from the submission or the truth (``subset``: score the keys
    both list instead), a true mask of another size than its image."""
    fmt, source = submission_format(cfg), DataSource.of(cfg)
    truth = Path(truth)
    # A folder of instance folders holds its own images: it is the test set it scores.
    own_images = source.layout == "instance_folders" and truth.is_dir()
    images = Path(images) if images is not None else truth if own_images else source.test_dir
    shapes = expected_keys(fmt, images, source.layout)
    true_table = truth_rows(source, fmt, truth, images) if truth.is_dir() else read_rows(truth, fmt, "the truth")
    submitted = read_rows(Path(submission), fmt, "the submission")
    problem = (_repeated_keys_problem(submitted, fmt, f"the submission {submission}")
               or _repeated_keys_problem(true_table, fmt, f"the truth {truth}"))
    if problem:
        raise DataError(problem)
    if subset:
        shapes = _subset(shapes, submitted, true_table, fmt)
        submitted = submitted[[key in shapes for key in _keys(submitted, fmt)]]
        true_table = true_table[[key in shapes for key in _keys(true_table, fmt)]]
    problem = _submitted_keys_problem(submitted, fmt, shapes)
    if problem:
        raise DataError(f"{submission}: {problem}")
    problem = _truth_keys_problem(true_table, fmt, shapes, truth)
    if problem:
        raise DataError(problem)
    predicted = objects_by_key(submitted, fmt, shapes, f"the submission {submission}")
    true = objects_by_key(true_table, fmt, shapes, f"the truth {truth}")
    return {name: score_objects(name, predicted, true, shapes) for name in metrics or (cfg.postprocess.metric,)}


def _oof_line(path: str, metric: str) -> str:
    """The out-of-fold score of ``oof.csv`` (per image) or ``ensemble_cv.csv`` (per run), checked against the
    run's ``oof_lineage.json``."""
    check_oof(Path(path).parent / "oof_lineage.json", None, "ternaus.evaluate --oof")
    try:
        oof = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise DataError(f"--oof {path} cannot be read as a CSV ({str(err).strip()[:200]})") from None
    if {"run", "cv", "cv_searched"} <= set(oof.columns):  # ensemble.py's ensemble_cv.csv: one row per run
        lines = [f"  {row['run']}: {row['cv']:.4f} at {row['at']}, {row['cv_searched']:.4f} after the searched "
                 f"post-processing (threshold {row['threshold']}, min_area {row['min_area']})"
                 for row in oof.to_dict("records")]
        return f"out-of-fold {metric} (mean per image) of each run of the ensemble ({path}):\n" + "\n".join(lines)
    if "dice" not in oof.columns and metric not in oof.columns:
        raise DataError(f"--oof {path} has neither a {metric!r} nor a 'dice' column: give predict.py's oof.csv or "
                        "ensemble.py's ensemble_cv.csv")
    column = metric if metric in oof.columns else "dice"  # an oof.csv written before the metric was chosen
    tuned = f"; after the searched post-processing {oof[column + '_pp'].mean():.4f}" \
        if f"{column}_pp" in oof.columns else ""
    return f"out-of-fold {column} (mean per image, at postprocess.threshold): {oof[column].mean():.4f}{tuned}"


def main(argv: list[str] | None = None, prog: str = "python -m ternaus.evaluate") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Score a submission against known masks with the config's metric.")
    parser.add_argument("--config", required=True, help="the competition's YAML (its format and postprocess.metric)")
    parser.add_argument("submission", help="submission CSV (.csv or .csv.gz)")
    parser.add_argument("truth", help="a CSV in the submission's format, or a folder of masks named as the "
                                      "training masks")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--images", default=None, help="the images the truth belongs to (default data.test_dir)")
    parser.add_argument("--oof", default=None, help="oof.csv written by predict.py (or ensemble_cv.csv written by "
                                                    "ensemble.py): also print its mean score")
    parser.add_argument("--subset", action="store_true", help="score only the keys both the submission and the truth "
                                                              "list (says how many), instead of refusing the others")
    args = parser.parse_intermixed_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        metric = cfg.postprocess.metric
        names = (metric,) if metric == "dice" else (metric, "dice")
        scores = score_submission(cfg, args.submission, args.truth, args.images, names, args.subset)
        if args.oof:
            print(_oof_line(args.oof, metric))
        unit = "(image, class) pair" if cfg.submission.rows == "image_class" else "image"
        for name, score in scores.items():
            print(f"submission {name} (mean per {unit}; {METRICS[name].title}): {score:.4f}")

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
