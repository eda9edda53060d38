"""Data for the benchmarks, in Carvana's layout: a test set of any size made from a few rendered views (their
JPEG bytes repeated under new names, so 1,000 images cost 8 renders), probability PNGs, and checkpoints of
untrained models (prediction's speed and memory do not depend on the weights)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from ternaus.checkpoint import save_checkpoint
from ternaus.config import Config, load_config
from ternaus.fixtures.carvana import jpeg_bytes, make_car, render_view
from ternaus.models import build_model

VIEWS_RENDERED = 8


def rendered_views(size: tuple[int, int], count: int = VIEWS_RENDERED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (RGB image, 0/1 mask) pairs at ``size`` (W, H), of different cars and angles."""
    return [render_view(make_car(0, i), 1 + (5 * i) % 16, size, np.random.default_rng(i)) for i in range(count)]


def test_ids(count: int) -> list[str]:
    # Carvana's "<car>_<view>" names: 16 views per car.
    return [f"{car:012x}_{view:02d}" for car in range(-(-count // 16)) for view in range(1, 17)][:count]


def write_test_set(root: Path, count: int, views: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """``root/test/<id>.jpg`` and ``root/sample_submission.csv`` for ``count`` images; returns the ids."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    jpegs = [jpeg_bytes(image, 90) for image, _ in views]
    ids = test_ids(count)
    for k, image_id in enumerate(ids):
        (root / "test" / f"{image_id}.jpg").write_bytes(jpegs[k % len(jpegs)])
    pd.DataFrame({"img": [f"{i}.jpg" for i in ids], "rle_mask": ""}).to_csv(root / "sample_submission.csv",
                                                                           index=False)
    return ids


def probability_map(mask: np.ndarray) -> np.ndarray:
    """A plausible network output: the mask's edges blurred into 0..255 probabilities."""
    return cv2.GaussianBlur(mask.astype(np.float32) * 255, (0, 0), 3).round().astype(np.uint8)


def write_predictions(folder: Path, ids: list[str], views: list[tuple[np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pngs = [cv2.imencode(".png", probability_map(mask))[1].tobytes() for _, mask in views]
    for k, image_id in enumerate(ids):
        (folder / f"{image_id}.png").write_bytes(pngs[k % len(pngs)])


def write_checkpoints(cfg: Config, folds: list[int]) -> None:
    """``fold_K/best.pt`` for each fold: a LeCun-initialised model, seeded by its fold."""
    for fold in folds:
        torch.manual_seed(fold)
        model = build_model(cfg.model)
        save_checkpoint(Path(cfg.output_dir) / f"fold_{fold}" / cfg.predict.checkpoint, model=model, epoch=1)


def config(root: Path, run: Path, *overrides: str) -> Config:
    return load_config(None, [f"data.root={root}", f"output_dir={run}", "model.init=lecun", *overrides])
