"""The submission: threshold each probability PNG, run-length encode it at the image's own size, write
``img,rle_mask`` rows in ``sample_submission.csv`` order to a gzip CSV, then check the written file.

Encoding runs in a process pool: PNG decoding and RLE are CPU-bound and independent per image.
"""

from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ternaus.analysis import resolve_postprocessing
from ternaus.config import Config, resolve, save_config
from ternaus.data import DataError, image_size, list_test
from ternaus.io import atomic_write
from ternaus.rle import parse_runs, rle_encode

__all__ = ["make_submission", "check_submission", "encode_prediction", "check_rle"]

HEADER = ["img", "rle_mask"]


def encode_prediction(png_path: str, threshold: float, min_area: int = 0) -> str:
    """RLE of ``png >= threshold * 255`` (0..255 probabilities), row-major as Carvana wants; a mask of fewer
    than ``min_area`` pixels is submitted empty."""
    probs = cv2.imread(png_path, cv2.IMREAD_UNCHANGED)
    if probs is None:
        raise DataError(f"prediction {png_path} cannot be read; run predict.py again")
    mask = probs >= threshold * 255
    if np.count_nonzero(mask) < min_area:
        mask[:] = False  # encoded by the same encoder, whatever its convention for an empty mask
    return rle_encode(mask)


def _encode_star(args: tuple[str, float, int]) -> str:
    return encode_prediction(*args)


def _prediction_paths(cfg: Config, ids: list[str]) -> list[str]:
    pred_dir = Path(cfg.output_dir) / cfg.predict.out_dir
    paths = [str(pred_dir / f"{i}.png") for i in ids]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} predictions are missing from {pred_dir}, e.g. "
                        f"{missing[0]}; run predict.py first")
    return paths


def check_rle(rle: str, size: int) -> str | None:
    """What is wrong with one RLE string for an image of ``size`` pixels, or None."""
    try:
        starts, lengths = parse_runs(rle)
    except ValueError as err:
        return str(err)
    if (starts <= 0).any() or (lengths <= 0).any():
        return "has a start or length that is not a positive integer"
    if (np.diff(starts) <= 0).any():
        return "has starts that do not increase"
    if (starts[1:] < starts[:-1] + lengths[:-1]).any():
        return "has overlapping runs"
    if starts.size and starts[-1] + lengths[-1] - 1 > size:
        return f"runs past the end of the image ({size} pixels)"
    return None


def check_submission(path: str | Path, cfg: Config) -> list[str]:
    """Every problem with a written submission, one line each: header, rows, each RLE string."""
    ids = list_test(cfg)
    table, problem = _read_submission(Path(path))
    if problem:
        return [problem]
    # Names are compared exactly as the sample spells them ("<id>.jpg"): Kaggle matches them as strings.
    expected = {f"{i}.jpg": i for i in ids}
    counts = table["img"].value_counts()
    problems = [f"{path}: {name} appears {n} times" for name, n in counts[counts > 1].items()]
    problems += [f"{path}: {name} is missing" for name in expected if name not in counts.index]
    problems += [f"{path}: {name!r} is not a test image" for name in counts.index if name not in expected]
    test_dir = resolve(cfg, cfg.data.test_dir)
    for line, name, rle in zip(table.index, table["img"], table["rle_mask"]):
        if name in expected:
            height, width = image_size(test_dir / name)
            problem = check_rle(rle, height * width)
            if problem:
                problems.append(f"{path} line {line} ({name}): the RLE {problem}")
    return problems


def _read_submission(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        # Blank lines are read as empty rows, so that a row's line in the file is its index + 2.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except Exception as err:  # noqa: BLE001 - pandas, gzip and the codecs each raise their own kind
        return None, f"{path} is not a readable CSV ({type(err).__name__}: {str(err).strip()[:200]})"
    if list(table.columns) != HEADER:
        return None, f"{path}: header is {list(table.columns)}, expected {HEADER}"
    table.index = table.index + 2
    return table[(table["img"] != "") | (table["rle_mask"] != "")], None


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    # The suffix picks the compression: ".csv.gz" -> gzip, as every top Carvana team submitted.
    compression = "gzip" if path.name.endswith(".gz") else None
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, compression=compression))


def make_submission(cfg: Config, threshold: float | None = None, min_area: int | None = None) -> Path:
    """Encode every test prediction and write ``{output_dir}/{submission.filename}``; checks it after writing.

    ``threshold``/``min_area`` (the command line) win over the config, which wins over postprocess.json."""
    threshold, min_area, sources = resolve_postprocessing(cfg, threshold, min_area)
    print(f"post-processing: {sources}")
    ids = list_test(cfg)
    jobs = [(p, threshold, min_area) for p in _prediction_paths(cfg, ids)]
    save_config(cfg, Path(cfg.output_dir) / "configs" / "make_submission.yaml")
    processes = cfg.submission.processes or os.cpu_count() or 1
    with Pool(processes) as pool:
        rles = list(tqdm(pool.imap(_encode_star, jobs, chunksize=16), total=len(jobs), desc="encode",
                         dynamic_ncols=True))
    path = _write_csv(Path(cfg.output_dir) / cfg.submission.filename,
                      pd.DataFrame({"img": [f"{i}.jpg" for i in ids], "rle_mask": rles}))
    problems = check_submission(path, cfg)
    if problems:
        raise DataError("the written submission has problems:\n  " + "\n  ".join(problems[:50]))
    return path
