"""The submission: threshold each probability PNG (per class), resize it to ``submission.encode_size`` when set,
run-length encode it in the competition's convention (``submission.rle``), write one row per image, per
(image, class) or per connected component (``submission.rows``) with the columns ``submission.columns`` /
``submission.values`` say, in the sample submission's row order, to a CSV (gzip for ``.gz``); then check the
written file. The defaults are Carvana's: ``img,rle_mask``, one row per image, row-major, 1-indexed.

Encoding runs in a process pool: PNG decoding and RLE are CPU-bound and independent per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ternaus.data.source import DataSource
from ternaus.analysis import read_postprocessing, resolve_postprocessing
from ternaus.config import (Config, PostprocessConfig, class_names, save_config, submission_rows_problem,
                            thresholds)
from ternaus.data.files import duplicates, image_size, listing, png_shape, read_prediction, read_text_csv
from ternaus.data.layouts import list_train, test_rows
from ternaus.errors import ConfigError, DataError
from ternaus.io import atomic_write
from ternaus.lineage import check_oof, check_predictions, image_fingerprints
from ternaus.separation import object_labels
from ternaus.predictions import claim_reader
from ternaus.predictions import made_by as predictions_made_by
from ternaus.rle import CARVANA_RLE, RleFormat, absolute_runs, encode_rle
from ternaus.run_files import RunFiles
from ternaus.stage import ConfigFile, Lock, StageOutputs, out_of_fold_lock

__all__ = ["make_submission", "check_submission", "submission_problems", "encode_prediction", "check_rle",
           "overlapping_objects", "SubmissionFormat", "submission_format", "masks_to_encode", "image_rows", "order_like_sample"]


@dataclass(frozen=True)
class SubmissionFormat:
    columns: tuple[str, ...] = ("img", "rle_mask")
    values: tuple[str, ...] = ("{image}", "{rle}")
    rows: str = "image"
    classes: tuple[str, ...] = ("1",)
    encode_size: tuple[int, int] | None = None
    rle: RleFormat = CARVANA_RLE
    objects: str = "components"  # postprocess.objects: how rows=instance splits a mask into objects

    @property
    def rle_column(self) -> int:
        return self.values.index("{rle}")

    @property
    def key_columns(self) -> list[str]:
        """The columns that name a row: all but the RLE's."""
        return [c for i, c in enumerate(self.columns) if i != self.rle_column]

    def row(self, image: str, class_index: int, rle: str) -> tuple[str, ...]:
        fields = {"image": image, "stem": Path(image).stem, "class": self.classes[class_index], "rle": rle}
        return tuple(template.format(**fields) for template in self.values)

    def keys_of(self, image: str) -> list[tuple[str, ...]]:
        """The keys (values of the key columns) this image's rows carry."""
        classes = range(len(self.classes)) if self.rows == "image_class" else [0]
        return [tuple(v for i, v in enumerate(self.row(image, c, "")) if i != self.rle_column) for c in classes]


def submission_format(cfg: Config) -> SubmissionFormat:
    sub = cfg.submission
    # The watershed's second plane is the contacts, which split the first (instance_folders makes them whether
    # the watershed or plain components decode them): one class is written.
    watershed = cfg.postprocess.objects == "watershed"
    contacts = watershed or cfg.data.layout == "instance_folders"
    problem = submission_rows_problem(sub, 1 if contacts else cfg.model.num_classes)
    if problem:
        raise ConfigError(problem)
    if watershed and sub.rows != "instance":
        raise ConfigError(f"postprocess.objects=watershed separates objects, which submission.rows={sub.rows} does "
                          "not write: set submission.rows=instance")
    return SubmissionFormat(tuple(sub.columns), tuple(sub.values), sub.rows, tuple(class_names(cfg)),
                            tuple(sub.encode_size) if sub.encode_size else None, sub.rle, cfg.postprocess.objects)


# ---------------------------------------------------------------- the functional core


def masks_to_encode(probs: np.ndarray, cuts: list[float], encode_size: tuple[int, int] | None = None,
                    min_area: int = 0) -> np.ndarray:
    """(C, H, W) uint8 probabilities -> (C, h, w) bool masks: each class at its threshold, after resizing the
    probabilities (bilinear) to ``encode_size`` (H, W) when given, so the smaller mask is not blockier. A class
    with fewer than ``min_area`` pixels at the prediction's own size (where the search counted them) is empty."""
    # level >= t * 255, unrounded: the comparison training, the out-of-fold scores and the search make.
    cut = np.asarray(cuts, np.float64)[:, None, None] * 255
    small = (probs >= cut).sum(axis=(1, 2)) < min_area if min_area else np.zeros(len(probs), bool)
    if encode_size is not None:
        probs = np.stack([cv2.resize(p, encode_size[::-1], interpolation=cv2.INTER_LINEAR) for p in probs])
    masks = probs >= cut
    masks[small] = False
    return masks


def image_rows(image: str, masks: np.ndarray, fmt: SubmissionFormat, min_area: int = 0) -> list[tuple[str, ...]]:
    """The submission rows of one test image from its (C, h, w) masks; rows=instance: one row per object
    (``fmt.objects``: connected components, or the watershed along plane 1's contacts, dropping objects under
    ``min_area`` pixels), or one empty row."""
    if fmt.rows == "image_class":
        return [fmt.row(image, c, encode_rle(mask, fmt.rle)) for c, mask in enumerate(masks)]
    if fmt.rows == "instance":
        labels = object_labels(masks, fmt.objects, min_area)
        rows = [fmt.row(image, 0, encode_rle(labels == k, fmt.rle)) for k in range(1, int(labels.max()) + 1)]
        return rows or [fmt.row(image, 0, fmt.rle.empty)]
    return [fmt.row(image, 0, encode_rle(masks[0], fmt.rle))]


def order_like_sample(table: pd.DataFrame, sample: pd.DataFrame, keys: list[str], where: str) -> pd.DataFrame:
    """``table``'s rows in the order the sample submission lists their keys; rows of one key (instances) keep
    their own order. Keys on one side only are refused: the sample belongs to another test set or format."""
    position = {key: i for i, key in reversed(list(enumerate(zip(*(sample[c] for c in keys)))))}
    ours = list(zip(*(table[c] for c in keys)))
    missing = sorted(set(position) - set(ours))
    extra = sorted(set(ours) - set(position))
    if missing or extra:
        raise DataError(f"{where} and the test images disagree: {len(missing)} row(s) of the sample have no "
                        f"prediction (e.g. {missing[:2]}), {len(extra)} prediction row(s) are not in the sample "
                        f"(e.g. {extra[:2]}); check data.test_dir, submission.values and data.class_names")
    order = np.argsort([position[key] for key in ours], kind="stable")
    return table.iloc[order].reset_index(drop=True)


def encode_prediction(png_path: str, threshold: float, min_area: int = 0) -> str:
    """RLE of one single-class prediction PNG in Carvana's format, as ``make_submission`` encodes it: pixels
    ``>= threshold * 255``, and empty when fewer than ``min_area`` are."""
    fmt = SubmissionFormat()
    return _encode_image((png_path, Path(png_path).name, [threshold], min_area, fmt))[0][fmt.rle_column]


def _encode_image(job: tuple[str, str, list[float], int, SubmissionFormat]) -> list[tuple[str, ...]]:
    png_path, image, cuts, min_area, fmt = job
    probs = read_prediction(png_path, len(cuts))
    if probs is None:
        raise DataError(f"prediction {png_path} cannot be read as {len(cuts)} class(es); run predict.py again")
    if fmt.objects == "watershed":  # min_area is per object: the image is never emptied whole
        return image_rows(image, masks_to_encode(probs, cuts, fmt.encode_size), fmt, min_area)
    return image_rows(image, masks_to_encode(probs, cuts, fmt.encode_size, min_area), fmt)


def _prediction_paths(pred_dir: Path, ids: list[str]) -> list[str]:
    """The PNG of each id in ``pred_dir`` (``RunFiles.predictions``); raises DataError when any is missing."""
    paths = [str(pred_dir / f"{i}.png") for i in ids]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} predictions are missing from {pred_dir}, e.g. "
                        f"{missing[0]}; run predict.py first")
    return paths


# ---------------------------------------------------------------- checking a written file


def check_rle(rle: str, size: int, fmt: RleFormat = CARVANA_RLE) -> str | None:
    """What is wrong with one RLE string (written in ``fmt``) for an image of ``size`` pixels, or None."""
    try:
        starts, lengths = absolute_runs(rle, fmt)
    except ValueError as err:
        return str(err)
    if (starts < 0).any() or (lengths <= 0).any():
        return "has a start or length that is not a positive integer"
    if (np.diff(starts) <= 0).any():
        return "has starts that do not increase"
    if (starts[1:] < starts[:-1] + lengths[:-1]).any():
        return "has overlapping runs"
    if starts.size and starts[-1] + lengths[-1] > size:
        return f"runs past the end of the image ({size} pixels)"
    return None


def overlapping_objects(rles: list[str], fmt: RleFormat = CARVANA_RLE) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, of ``rles`` (one image's objects, each a valid RLE in ``fmt``) that share a
    pixel: a sweep over the runs sorted by start, keeping the runs still open."""
    runs = sorted((int(start), int(start + length), k) for k, rle in enumerate(rles)
                  for start, length in zip(*absolute_runs(rle, fmt)))
    pairs, open_runs = set(), []
    for start, end, k in runs:
        open_runs = [(stop, j) for stop, j in open_runs if stop > start]
        pairs.update((min(j, k), max(j, k)) for _, j in open_runs if j != k)
        open_runs.append((end, k))
    return sorted(pairs)


def _overlap_problems(path: Path, rows: list[tuple[int, tuple[str, ...], str]], fmt: RleFormat) -> list[str]:
    """One line per pair of rows of one image whose objects overlap (rows: instance); ``rows``: the (line, key,
    RLE) of each row whose RLE is valid."""
    by_image: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    for line, key, rle in rows:
        by_image.setdefault(key, []).append((line, rle))
    problems = []
    for key, objects in by_image.items():
        for a, b in overlapping_objects([rle for _, rle in objects], fmt) if len(objects) > 1 else []:
            problems.append(f"{path} lines {objects[a][0]} and {objects[b][0]} ({_name(key)}): the objects overlap; "
                            "each pixel may belong to one object only (the metric refuses overlapping objects)")
    return problems


def _expected_keys(source: DataSource, fmt: SubmissionFormat) -> dict[tuple[str, ...], int]:
    """Every row key the test set of ``source`` calls for, with the pixel count its RLE is checked against."""
    expected = {}
    for row in test_rows(source):
        image = Path(row["image"])
        height, width = fmt.encode_size or image_size(image)
        expected.update({key: height * width for key in fmt.keys_of(image.name)})
    return expected


def _name(key: tuple[str, ...]) -> str:
    return ",".join(key)


def check_submission(path: str | Path, cfg: Config) -> list[str]:
    """Every problem with a written submission, one line each: header, rows, each RLE string."""
    return submission_problems(path, submission_format(cfg), DataSource.of(cfg))


def submission_problems(path: str | Path, fmt: SubmissionFormat, source: DataSource) -> list[str]:
    """Every problem with the submission written at ``path`` in the format ``fmt`` (``submission_format``) for
    the test set of ``source`` (``DataSource.of``), one line each: header, rows, each RLE string."""
    expected = _expected_keys(source, fmt)
    table, problem = _read_submission(Path(path), list(fmt.columns))
    if problem:
        return [problem]
    # Names are compared exactly as the sample spells them ("<id>.jpg"): Kaggle matches them as strings.
    keys = pd.Series(list(zip(*(table[c] for c in fmt.key_columns))), index=table.index, dtype=object)
    counts = keys.value_counts(sort=False)
    problems = [] if fmt.rows == "instance" else [f"{path}: {_name(k)} appears {n} times"
                                                  for k, n in counts[counts > 1].items()]
    problems += [f"{path}: {_name(k)} is missing" for k in expected if k not in counts.index]
    problems += [f"{path}: {_name(k)!r} is not a test image" for k in counts.index if k not in expected]
    valid = []
    for line, key, rle in zip(table.index, keys, table[fmt.columns[fmt.rle_column]]):
        if key in expected:
            problem = check_rle(rle, expected[key], fmt.rle)
            if problem:
                problems.append(f"{path} line {line} ({_name(key)}): the RLE {problem}")
            else:
                valid.append((line, key, rle))
    if fmt.rows == "instance":
        problems += _overlap_problems(path, valid, fmt.rle)
    return problems


def _read_submission(path: Path, header: list[str]) -> tuple[pd.DataFrame | None, str | None]:
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        # Blank lines are read as empty rows, so that a row's line in the file is its index + 2.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except Exception as err:  # noqa: BLE001 - pandas, gzip and the codecs each raise their own kind
        return None, f"{path} is not a readable CSV ({type(err).__name__}: {str(err).strip()[:200]})"
    if list(table.columns) != header:
        return None, f"{path}: header is {list(table.columns)}, expected {header}"
    table.index = table.index + 2
    return table[(table != "").any(axis=1)], None


# ---------------------------------------------------------------- the stage


def _encode_all(jobs: list, processes: int) -> list[list[tuple[str, ...]]]:
    if processes == 1:  # no pool to start for a handful of images
        return [_encode_image(job) for job in tqdm(jobs, desc="encode", dynamic_ncols=True)]
    with Pool(processes) as pool:
        return list(tqdm(pool.imap(_encode_image, jobs, chunksize=16), total=len(jobs), desc="encode",
                         dynamic_ncols=True))


def _sample(path: Path, fmt: SubmissionFormat) -> pd.DataFrame | None:
    """The sample submission at ``path`` (``DataSource.sample_submission``) when there is one (Carvana's layout
    requires it: it lists the test images)."""
    if not path.is_file():
        return None
    sample = read_text_csv(path, list(fmt.key_columns), "set submission.columns to the sample's header")
    repeated = duplicates(pd.Series([_name(k) for k in zip(*(sample[c] for c in fmt.key_columns))], dtype=str))
    if repeated:
        raise DataError(f"{path} lists {len(repeated)} row key(s) more than once, e.g. {repeated[:3]}; the sample "
                        "names each row of a submission once: use the competition's sample submission")
    return sample


def _check_searched_for(files: RunFiles, made_by: dict | None) -> None:
    """postprocess.json (in the run ``files``) is applied only to the predictions it was searched for
    (``made_by``: the predictions' record)."""
    searched = read_postprocessing(files.root)
    if searched is None or searched.get("predictions") == made_by:
        return
    raise DataError(f"{files.postprocess} was searched on the out-of-fold predictions of other models or settings "
                    f"than those that made {files.predictions} (or predict.py stopped before it searched again). "
                    "Run predict.py again (it keeps the test PNGs it already wrote), or set the threshold and the "
                    "minimum area yourself: --threshold and --min-area, or postprocess.threshold and "
                    "postprocess.min_area with postprocess.use_searched=false")


def make_submission(cfg: Config, threshold: float | list[float] | None = None, min_area: int | None = None) -> Path:
    """Encode every test prediction and write ``{output_dir}/{submission.filename}``; checks it after writing.

    ``threshold``/``min_area`` (the command line) win over postprocess.json (with ``postprocess.use_searched``,
    and only when it was searched for the models and settings that made the predictions), which wins over
    ``postprocess.threshold`` / ``min_area``."""
    files = RunFiles.of(cfg)
    source = DataSource.of(cfg)
    searched = cfg.postprocess.use_searched and (threshold is None or min_area is None)
    claims = [Lock(files.submission, f"the submission {files.submission}"), partial(claim_reader, files.predictions)]
    if searched:  # predict.py's out-of-fold phase writes postprocess.json
        claims.append(out_of_fold_lock(files))
    outputs = StageOutputs("make_submission", source.places(),
                           folders={"output_dir": files.root, "submission.filename": files.submission.parent},
                           files={"submission.filename": files.submission}, claims=claims,
                           temporaries={files.submission.parent: {files.submission.name}},
                           config=ConfigFile(files.config("make_submission"), partial(save_config, cfg)))
    with outputs:
        return _make_submission(files, source, submission_format(cfg), cfg.postprocess, cfg.submission.processes,
                                threshold, min_area, searched, outputs)


def _make_submission(files: RunFiles, source: DataSource, fmt: SubmissionFormat, post: PostprocessConfig,
                     processes: int, threshold: float | list[float] | None, min_area: int | None, searched: bool,
                     outputs: StageOutputs) -> Path:
    """Encode the test predictions of ``files`` for the test set of ``source`` in the format ``fmt``, with the
    ``postprocess`` section ``post`` (``threshold``/``min_area``: the command line's, or None; ``searched``: read
    postprocess.json), on ``processes`` processes (``submission.processes``, 0: one per core); check and return
    the file written."""
    rows = test_rows(source)
    ids = [r["id"] for r in rows]
    paths = _prediction_paths(files.predictions, ids)
    check_predictions(files.predictions, ids, image_fingerprints(rows), "make_submission.py")
    _check_prediction_sizes(paths, rows, len(fmt.classes))
    made_by = predictions_made_by(files.predictions, ids)
    if searched:
        _check_searched_for(files, made_by)
    threshold, min_area, sources = resolve_postprocessing(post, files, threshold, min_area)
    if searched and str(files.postprocess) in sources:
        check_oof(files.oof_lineage, list_train(source).to_dict("records"), "make_submission.py")
    print(f"post-processing: {sources}")
    cuts = thresholds(threshold, len(fmt.classes))
    jobs = [(p, Path(row["image"]).name, cuts, min_area, fmt) for p, row in zip(paths, rows)]
    sample = _sample(source.sample_submission, fmt)
    outputs.save_config()
    encoded = _encode_all(jobs, processes or os.cpu_count() or 1)
    table = pd.DataFrame([row for image in encoded for row in image], columns=list(fmt.columns))
    if sample is not None:
        table = order_like_sample(table, sample, fmt.key_columns, str(source.sample_submission))
    return _write_checked(files.submission, table, fmt, source)


def _check_prediction_sizes(paths: list[str], rows: list[dict], classes: int) -> None:
    """Each prediction PNG has its test image's (height, width): one made for other images (another data.root
    with the same ids) would encode RLEs of the wrong size. Headers only: cheap on 100,000 images."""
    wrong = []
    for path, row in zip(paths, rows):
        shape, (height, width) = png_shape(path), image_size(row["image"])
        if shape != (classes * height, width):  # the classes stacked top to bottom (prediction_image)
            wrong.append(f"{path} is (height, width) {shape}, the test image {row['image']} is {(height, width)}"
                         + (f" ({classes} classes stacked: {(classes * height, width)})" if classes > 1 else ""))
    if wrong:
        raise DataError(listing(f"{len(wrong)} of {len(paths)} predictions are not at their test image's size (made "
                                "for other images): run predict.py again with this config, then make_submission.py",
                                wrong, limit=5))


def _write_checked(path: Path, table: pd.DataFrame, fmt: SubmissionFormat, source: DataSource) -> Path:
    """Write the submission under a temporary name, check it there, and only then put it in place: a check that
    fails leaves the previous submission as it was."""
    # The suffix picks the compression: ".csv.gz" -> gzip, as every top Carvana team submitted.
    compression = "gzip" if path.name.endswith(".gz") else None

    def write_and_check(tmp: Path) -> None:
        table.to_csv(tmp, index=False, compression=compression)
        problems = [p.replace(str(tmp), str(path)) for p in submission_problems(tmp, fmt, source)]
        if problems:
            raise DataError(f"the submission made for {path} has problems, so it was not written (the previous one "
                            "is kept):\n  " + "\n  ".join(problems[:50]))

    return atomic_write(path, write_and_check)
