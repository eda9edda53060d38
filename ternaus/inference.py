"""Prediction: every fold's model loaded once, horizontal-flip TTA in the same forward pass, probabilities
averaged over TTA and folds, returned to each image's own size, written as one uint8 PNG per image.

It streams: a DataLoader reads ahead, PNG encoding and writing run on background threads with a bounded
queue, so memory does not grow with the number of test images. It resumes: a run killed part-way and
started again predicts only the images still missing, in the same batches, so every PNG comes out
byte-identical to an uninterrupted run's. It also scores each fold's held-out images with that fold's
model (the out-of-fold Dice).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ternaus.analysis import level_histograms, write_oof_analysis
from ternaus.config import Config, class_names, save_config, thresholds
from ternaus.data.dataset import SegmentationDataset, normalise_on_device
from ternaus.data.files import check_image_files, prediction_image
from ternaus.data.geometry import Geometry, geometry_of
from ternaus.data.layouts import mask_spec, test_rows, train_items
from ternaus.distributed import world_from_environment
from ternaus.errors import ConfigError
from ternaus.io import atomic_write, atomic_write_bytes, claim, remove_stale_temporaries
from ternaus.losses import probabilities
from ternaus.metrics import dice_per_image, jaccard_per_image, per_image_class
from ternaus.models import new_model
from ternaus.predictions import claim_writer, keep_or_redo, searched_key
from ternaus.run_files import (
    RunFiles,
    check_outputs,
    folds_to_train,
    predictions_record,
    read_folds,
)
from ternaus.runtime import Runtime
from ternaus.training import build_loader
from ternaus.tta import merge_tta, tta_inputs
from ternaus.weights import load_weights

__all__ = ["predict", "tta_probabilities", "load_fold_models", "to_uint8", "predict_oof", "Shard", "PngWriter",
           "fixed_batches"]


# ---------------------------------------------------------------- the functional core


@torch.no_grad()
def tta_probabilities(models: list[torch.nn.Module], images: torch.Tensor, runtime: Runtime,
                      tta: str = "hflip", activation: str = "sigmoid") -> torch.Tensor:
    """Mean class probabilities (B, C, H, W) over TTA and ``models`` for normalised ``images`` (B, 3, H, W),
    float32: sigmoids, or softmax without the background channel."""
    inputs = tta_inputs(images, tta)
    total = None
    for model in models:
        with runtime.autocast():
            logits = model(inputs)
        probs = merge_tta(probabilities(logits, activation), tta)
        total = probs if total is None else total + probs
    return total / len(models)


def to_uint8(probs: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> 0..255, rounded: p >= 0.5 becomes >= 128, so thresholds survive the round trip."""
    return (probs * 255.0).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- models


def checkpoint_paths(cfg: Config, folds: list[int] | None = None) -> dict[int, Path]:
    paths = {}
    for fold in folds if folds is not None else folds_to_train(cfg):
        path = RunFiles.of(cfg).checkpoint(fold)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: train fold {fold} first (python train.py --config ... "
                                    f"--fold {fold}) or list the trained folds in train.folds")
        paths[fold] = path
    return paths


def load_fold_models(cfg: Config, runtime: Runtime, folds: list[int] | None = None) -> dict[int, torch.nn.Module]:
    models = {}
    for fold, path in checkpoint_paths(cfg, folds).items():
        model = load_weights(new_model(cfg.model), path)
        models[fold] = runtime.prepare_model(model).eval()
    return models


# ---------------------------------------------------------------- resuming an interrupted prediction


def prediction_fingerprint(cfg: Config, paths: dict[int, Path], runtime: Runtime) -> dict:
    """Everything the PNGs' bytes depend on: the weights' hashes, TTA, geometry, batching and precision."""
    digests = {}
    for fold, path in paths.items():
        with open(path, "rb") as f:
            digests[str(fold)] = hashlib.file_digest(f, "sha256").hexdigest()
    fingerprint = {"checkpoints": digests, "model": cfg.model.name, "num_classes": cfg.model.num_classes,
                   "tta": cfg.predict.tta, "input_size": cfg.data.input_size, "batch_size": cfg.predict.batch_size,
                   "runtime": runtime.describe()}
    return json.loads(json.dumps(fingerprint))


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` of the test set: every ``count``-th fixed batch, from batch ``index``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/n"`` as given to ``predict.py --shard``."""
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count)) if sep else None
        except ValueError:
            shard = None
        if shard is None or not 0 <= shard.index < shard.count:
            raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4")
        return shard

    @property
    def state_file(self) -> str:
        return predictions_record(self.index, self.count)

    def take(self, batches: list[list[str]]) -> list[list[str]]:
        return batches[self.index:: self.count]


def fixed_batches(ids: list[str], batch_size: int) -> list[list[str]]:
    """The test list cut into batches that never change: a resumed run or a shard batches every image exactly
    as one uninterrupted process does, so its PNGs come out byte-identical."""
    return [ids[i: i + batch_size] for i in range(0, len(ids), batch_size)]


def batches_to_do(batches: list[list[str]], done: set[str]) -> list[list[str]]:
    return [batch for batch in batches if not all(i in done for i in batch)]


# ---------------------------------------------------------------- writing PNGs on background threads


class PngWriter:
    """Encode and write PNGs on a thread pool (OpenCV releases the GIL); at most ``2 * threads`` pending."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.pending: deque[Future] = deque()
        self.limit = 2 * threads

    def submit(self, path: Path, image: np.ndarray) -> None:
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, path, image))

    @staticmethod
    def _write(path: Path, image: np.ndarray) -> None:
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"PNG encoding failed for {path}")
        # No fsync for 100,000 PNGs: a resumed run checks each file's end instead (png_complete).
        atomic_write_bytes(path, encoded.tobytes(), durable=False)

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()


# ---------------------------------------------------------------- stages


def _loader(rows: list[dict], geometry: Geometry, with_masks: bool, cfg: Config, runtime: Runtime,
            mask_at_input_size: bool = True) -> DataLoader:
    dataset = SegmentationDataset(rows, geometry, with_masks, mask_at_input_size=mask_at_input_size,
                                  masks=mask_spec(cfg))
    return build_loader(dataset, cfg.predict.batch_size, runtime, cfg.data.num_workers)


def predict_test(cfg: Config, models: list[torch.nn.Module], runtime: Runtime, rows: list[dict],
                 fingerprint: dict, shard: Shard | None = None, setup: ExitStack | None = None) -> Path:
    """``rows``: the test images (id, image path), as data.test_rows lists them. Call it holding the
    predictions folder's claim (``predictions.claim_writer``); ``setup``, the folder lock it yields, is closed
    once this shard's record is written when other shards may run beside it."""
    shard = shard or Shard()
    image_paths = {row["id"]: row["image"] for row in rows}
    ids = list(image_paths)
    out_dir = RunFiles.of(cfg).predictions
    mine = shard.take(fixed_batches(ids, cfg.predict.batch_size))
    ids = [i for batch in mine for i in batch]
    done = keep_or_redo(out_dir, ids, fingerprint, cfg.predict.resume, shard.state_file)
    if setup is not None and shard.count > 1:
        setup.close()
    batches = batches_to_do(mine, done)
    if done:
        rest = f"predicting the remaining {sum(map(len, batches))} image(s)" if batches else "nothing left to predict"
        print(f"resuming: {len(done)} of {len(ids)} predictions were already written by the same models and "
              f"settings; {rest}")
    if batches:
        _predict_batches(cfg, models, runtime, batches, out_dir, done, image_paths)
    return out_dir


def _predict_batches(cfg: Config, models: list[torch.nn.Module], runtime: Runtime, batches: list[list[str]],
                     out_dir: Path, done: set[str], image_paths: dict[str, str]) -> None:
    rows = [{"id": i, "image": image_paths[i]} for batch in batches for i in batch]
    starts = np.cumsum([0] + [len(b) for b in batches])
    batch_sampler = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
    geometry = geometry_of(cfg)
    loader = build_loader(SegmentationDataset(rows, geometry, False), cfg.predict.batch_size, runtime,
                          cfg.data.num_workers, batch_sampler=batch_sampler)
    writer = PngWriter(cfg.predict.writer_threads)
    try:
        for batch in tqdm(loader, desc="predict test", dynamic_ncols=True):
            images = normalise_on_device(runtime.to_device(batch["image"]))
            probs = tta_probabilities(models, images, runtime, cfg.predict.tta, cfg.model.activation)
            for image_id, maps, size in zip(batch["id"], probs, batch["size"].tolist()):
                if image_id not in done:
                    writer.submit(out_dir / f"{image_id}.png",
                                  prediction_image(to_uint8(geometry.restore(maps, tuple(size))).cpu().numpy()))
    finally:
        writer.close()


def oof_record(pred: torch.Tensor, target: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """Dice and Jaccard of one image's (C, H, W) masks, means over the classes; with several classes also each
    class's Dice (``dice_<class>``)."""
    dice = per_image_class(dice_per_image, pred[None], target[None])[0]
    jaccard = per_image_class(jaccard_per_image, pred[None], target[None])[0]
    record = {"dice": dice.mean().item(), "jaccard": jaccard.mean().item()}
    if len(classes) > 1:
        record.update({f"dice_{name}": value for name, value in zip(classes, dice.tolist())})
    return record


@torch.no_grad()
def predict_oof(cfg: Config, models: dict[int, torch.nn.Module], runtime: Runtime) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-image Dice and Jaccard of each fold's held-out images, predicted by that fold's model, and each
    image's (2, 256) level histograms (``analysis.level_histograms``), from which the post-processing search
    scores any threshold. The probability PNGs go to ``{output_dir}/oof_predictions/`` for the report."""
    items = train_items(cfg, read_folds(cfg))
    geometry, records, histograms, classes = geometry_of(cfg), [], [], class_names(cfg)
    cut = torch.tensor(thresholds(cfg.train.threshold, len(classes)), device=runtime.device).view(-1, 1, 1) * 255
    writer = PngWriter(cfg.predict.writer_threads)
    try:
        for fold, model in models.items():
            rows = items[items["fold"] == fold].to_dict("records")
            for batch in tqdm(_loader(rows, geometry, True, cfg, runtime, False), desc=f"out-of-fold {fold}",
                              dynamic_ncols=True):
                images = normalise_on_device(runtime.to_device(batch["image"]))
                probs = tta_probabilities([model], images, runtime, cfg.predict.tta, cfg.model.activation)
                for image_id, maps, mask, size in zip(batch["id"], probs, batch["mask"], batch["size"].tolist()):
                    levels = to_uint8(geometry.restore(maps, tuple(size)))
                    writer.submit(RunFiles.of(cfg).oof_predictions / f"{image_id}.png",
                                  prediction_image(levels.cpu().numpy()))
                    target = mask[:, : size[0], : size[1]].to(runtime.device) > 0  # (batch padding cropped)
                    records.append({"id": image_id, "fold": fold, **oof_record(levels >= cut, target, classes)})
                    histograms.append(level_histograms(levels[:1], target[:1]).cpu().numpy())  # class 0
    finally:
        writer.close()
    return pd.DataFrame(records), np.stack(histograms)


def predict(cfg: Config, shard: Shard | None = None) -> dict:
    """The predict stage: test PNGs, then the out-of-fold scores; returns paths and the OOF Dice.

    With ``shard`` (``--shard i/n``), or under ``torchrun`` (shard RANK of WORLD_SIZE, on GPU LOCAL_RANK),
    this process predicts its share of the test set only; the shards together write what one process would.
    Shard 0 also scores the out-of-fold images."""
    world = world_from_environment()
    shard = shard or Shard(world.rank, world.size)
    files = RunFiles.of(cfg)
    check_outputs(cfg, {"output_dir": files.root, "predict.out_dir": files.predictions})
    score_oof = cfg.predict.oof and shard.index == 0
    with ExitStack() as claims:
        setup = claims.enter_context(claim_writer(files.predictions, shard.index, shard.count))
        if score_oof:
            claims.enter_context(claim(files.oof, f"the out-of-fold files in {files.root}"))
        return _predict(cfg, shard, world.local_rank, score_oof, setup)


def _predict(cfg: Config, shard: Shard, device_index: int, score_oof: bool, setup: ExitStack) -> dict:
    runtime = Runtime.detect(cfg.train.amp, cfg.train.amp_dtype, cfg.train.channels_last, device_index=device_index)
    # Everything that can be refused is checked before the first file is written.
    rows = test_rows(cfg)
    check_image_files([Path(row["image"]) for row in rows], cfg.data.max_image_pixels)
    items = train_items(cfg, read_folds(cfg)) if score_oof else None
    fingerprint = prediction_fingerprint(cfg, checkpoint_paths(cfg), runtime)
    models = load_fold_models(cfg, runtime)
    if shard.index == 0:
        save_config(cfg, RunFiles.of(cfg).config("predict"))
    part = f", shard {shard.index}/{shard.count}" if shard.count > 1 else ""
    print(f"predicting with folds {list(models)} on {runtime.describe()}, TTA: {cfg.predict.tta}{part}")
    out_dir = predict_test(cfg, list(models.values()), runtime, rows, fingerprint, shard, setup)
    result = {"predictions": out_dir, "oof_dice": None}
    if score_oof:
        _remove_oof_temporaries(cfg, list(items["id"]))
        result.update(_score_oof(cfg, models, runtime, fingerprint))
    return result


def _remove_oof_temporaries(cfg: Config, ids: list[str]) -> None:
    """What a killed out-of-fold phase left; called holding the out-of-fold files' claim."""
    files = RunFiles.of(cfg)
    remove_stale_temporaries(files.root, {p.name for p in files.oof_outputs})
    remove_stale_temporaries(files.oof_predictions, {f"{i}.png" for i in ids})


def _score_oof(cfg: Config, models: dict[int, torch.nn.Module], runtime: Runtime, fingerprint: dict) -> dict:
    oof, histograms = predict_oof(cfg, models, runtime)
    if cfg.model.num_classes == 1:  # the search's histograms hold one class
        chosen = write_oof_analysis(cfg, oof, histograms, searched_key(fingerprint))
        print(f"post-processing searched on the out-of-fold images: threshold {chosen.threshold}, min_area "
              f"{chosen.min_area}: CV {chosen.metric} {chosen.score:.4f} (at {chosen.default_threshold} without "
              f"min_area: {chosen.default_score:.4f}) -> {RunFiles.of(cfg).postprocess}")
    else:
        atomic_write(RunFiles.of(cfg).oof_csv, lambda tmp: oof.to_csv(tmp, index=False))
    oof_path = RunFiles.of(cfg).oof_csv
    for fold, group in oof.groupby("fold"):
        print(f"fold {fold}: out-of-fold Dice {group['dice'].mean():.4f}, IoU {group['jaccard'].mean():.4f} "
              f"on {len(group)} images")
    print(f"out-of-fold Dice (mean per image): {oof['dice'].mean():.4f}  ({oof_path})")
    return {"oof": oof_path, "oof_dice": float(oof["dice"].mean())}
