"""Prediction: every fold's model loaded once, horizontal-flip TTA in the same forward pass, probabilities
averaged over TTA and folds, returned to each image's own size, written as one uint8 PNG per image.

It streams: a DataLoader reads ahead, PNG encoding and writing run on background threads with a bounded
queue, so memory does not grow with the number of test images. It resumes: a run killed part-way and
started again predicts only the images still missing, in the same batches, so every PNG comes out
byte-identical to an uninterrupted run's. It also scores each fold's held-out images with that fold's
model (the out-of-fold scores: Dice, IoU and the competition's metric, ``postprocess.metric``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ternaus.data.source import DataSource
from ternaus.analysis import (SeparationGrid, search_thresholds, true_objects, write_oof_analysis,
                              write_separation_analysis)
from ternaus.checkpoint import check_split, read_checkpoint
from ternaus.config import Config, ModelConfig, PostprocessConfig, PredictConfig, save_config, thresholds
from ternaus.data.dataset import SegmentationDataset, input_shapes, normalise_on_device, same_size_batches
from ternaus.data.files import check_image_files, prediction_image
from ternaus.data.geometry import Geometry, geometry_of
from ternaus.data.layouts import list_train, mask_spec, test_rows, train_items
from ternaus.distributed import world_from_environment
from ternaus.errors import ConfigError
from ternaus.evaluation import Evaluator
from ternaus.folds import split_fingerprint
from ternaus.io import atomic_write, atomic_write_bytes
from ternaus.lineage import (file_digest, file_source, image_fingerprints, mark_oof_pending, oof_lineage,
                             write_oof_lineage)
from ternaus.losses import probabilities
from ternaus.models import new_model
from ternaus.predictions import claim_writer, keep_or_redo, searched_key
from ternaus.registry import METRICS, MODELS
from ternaus.run_files import RunFiles, folds_to_train, predictions_record, read_folds
from ternaus.runtime import Runtime
from ternaus.stage import ConfigFile, StageOutputs, out_of_fold_lock
from ternaus.training import build_loader, same_size_loader
from ternaus.tta import merge_tta, tta_inputs
from ternaus.weights import load_weights

__all__ = ["predict", "PredictionRun", "checkpoint_paths", "prediction_fingerprint", "predict_test", "tta_probabilities",
           "image_probabilities", "load_fold_models", "to_uint8", "predict_oof", "Shard", "PngWriter", "fixed_batches",
           "write_png", "remove_oof_temporaries", "oof_outputs", "checkpoint_sources", "check_checkpoints"]


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


@torch.no_grad()
def image_probabilities(models: list[torch.nn.Module], images: torch.Tensor, sizes: list[tuple[int, int]],
                        runtime: Runtime, geometry: Geometry, tta: str = "hflip", activation: str = "sigmoid",
                        resize_back: str = "probabilities") -> list[torch.Tensor]:
    """Each image's (C, H, W) float32 probabilities at its own size ``sizes[i]``, averaged over TTA and ``models``.

    ``resize_back="logits"`` (with a resizing geometry) resizes every view's logits to the image's size before
    the sigmoid, as the 1st-place team's 1024 x 1024 families did; otherwise the averaged probabilities are
    restored (a crop of padding is the same either way)."""
    if resize_back != "logits" or geometry.input_size is None:
        probs = tta_probabilities(models, images, runtime, tta, activation)
        return [geometry.restore(maps, size) for maps, size in zip(probs, sizes)]
    inputs, count = tta_inputs(images, tta), len(images)
    totals: list[torch.Tensor | float] = [0.0] * count
    for model in models:
        with runtime.autocast():
            logits = model(inputs).float()
        for i, size in enumerate(sizes):  # the views of image i are rows i, i + count, ... (ternaus.tta)
            views = torch.stack([geometry.restore(view, size) for view in logits[i::count]])
            totals[i] = totals[i] + merge_tta(probabilities(views, activation), tta)[0]
    return [total / len(models) for total in totals]


def to_uint8(probs: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> 0..255, rounded: p >= 0.5 becomes >= 128, so thresholds survive the round trip."""
    return (probs * 255.0).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- what the stage's internals read


@dataclass(frozen=True)
class PredictionRun:
    """What the predict stage's internals read, built once at its entry (``PredictionRun.from_config``): the run's
    files, the data, the geometry, the ``predict``, ``model`` and ``postprocess`` sections, and the folds
    predicted with (``train.folds``, or all ``folds.n_folds``) out of ``n_folds``. The device is not in it: that
    is each process's ``Runtime``."""

    files: RunFiles
    source: DataSource
    geometry: Geometry
    predict: PredictConfig
    model: ModelConfig
    post: PostprocessConfig
    folds: tuple[int, ...]
    n_folds: int

    @classmethod
    def from_config(cls, cfg: Config) -> "PredictionRun":
        return cls(RunFiles.of(cfg), DataSource.of(cfg), geometry_of(cfg), cfg.predict, cfg.model, cfg.postprocess,
                   tuple(folds_to_train(cfg.train.folds, cfg.folds.n_folds)), cfg.folds.n_folds)


# ---------------------------------------------------------------- models


def checkpoint_paths(files: RunFiles, folds: list[int] | tuple[int, ...]) -> dict[int, Path]:
    """Each fold's checkpoint in the run ``files`` (``predict.checkpoint`` in ``fold_K/``), for ``folds``.
    Raises FileNotFoundError naming the first fold not trained."""
    paths = {}
    for fold in folds:
        path = files.checkpoint(fold)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: train fold {fold} first (python train.py --config ... "
                                    f"--fold {fold}) or list the trained folds in train.folds")
        paths[fold] = path
    return paths


def load_fold_models(model_settings: ModelConfig, runtime: Runtime,
                     paths: dict[int, Path]) -> dict[int, torch.nn.Module]:
    """Each fold's model (the ``model`` section's network) with the weights of ``paths`` (fold -> checkpoint,
    e.g. ``checkpoint_paths``), prepared for ``runtime`` and in eval mode."""
    models = {}
    for fold, path in paths.items():
        model = load_weights(new_model(model_settings), path)
        models[fold] = runtime.prepare_model(model).eval()
    return models


def check_checkpoints(run: PredictionRun, paths: dict[int, Path], items: pd.DataFrame | None) -> None:
    """Refuse, before anything is written, a checkpoint of ``paths`` (fold -> file) trained at another
    ``data.input_size`` than ``run``'s (unless ``predict.allow_other_input_size``), and, with ``items`` (the
    training images with their folds.csv fold: the out-of-fold pass), one trained on another split than its
    fold's now: its out-of-fold images would include images it trained on. A checkpoint that records neither
    (weights alone, a bundle's) passes."""
    size = run.source.settings.input_size
    for fold, path in paths.items():
        ckpt = read_checkpoint(path, mmap=True)
        trained_at = ((ckpt.get("config") or {}).get("data") or {}).get("input_size", size)
        if trained_at != size and not run.predict.allow_other_input_size:
            setting = "null" if trained_at is None else trained_at
            raise ConfigError(f"data.input_size: {path} was trained at {_size_name(trained_at)}, the config predicts "
                              f"at {_size_name(size)}; set data.input_size={setting}, or "
                              "predict.allow_other_input_size=true to predict at the other size anyway")
        if items is not None:
            check_split(ckpt.get("split"), split_fingerprint(items, fold), path, fold)


def _size_name(size: list[int] | None) -> str:
    return "full resolution (null)" if size is None else str(size)


# ---------------------------------------------------------------- resuming an interrupted prediction


def prediction_fingerprint(run: PredictionRun, paths: dict[int, Path], runtime: Runtime) -> dict:
    """Everything the PNGs' bytes depend on: the weights' hashes (``paths``: fold -> checkpoint), TTA, geometry,
    batching (``run``'s settings) and precision (``runtime``)."""
    digests = {str(fold): file_digest(path) for fold, path in paths.items()}
    data = run.source.settings
    fingerprint = {"checkpoints": digests, "model": run.model.name, "num_classes": run.model.num_classes,
                   "tta": run.predict.tta, "input_size": data.input_size, "image_max": data.image_max,
                   "batch_size": run.predict.batch_size, "batches": "one input size each",
                   "resize_back": data.resize_back, "runtime": runtime.describe()}
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


def fixed_batches(ids: list[str], batch_size: int, shapes: list[tuple[int, int]] | None = None) -> list[list[str]]:
    """The test list cut into batches that never change: a resumed run or a shard batches every image exactly
    as one uninterrupted process does, so its PNGs come out byte-identical. With ``shapes`` (each id's
    network-input shape) a batch holds one shape only, so no image is padded to a batch-mate's size and a PNG
    does not depend on its batch-mates (``data.dataset.same_size_batches``)."""
    batches = same_size_batches(shapes if shapes is not None else [(0, 0)] * len(ids), batch_size)
    return [[ids[i] for i in batch] for batch in batches]


def batches_to_do(batches: list[list[str]], done: set[str]) -> list[list[str]]:
    return [batch for batch in batches if not all(i in done for i in batch)]


# ---------------------------------------------------------------- writing PNGs on background threads


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` as PNG and write it atomically to ``path``."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    # No fsync for 100,000 PNGs: a resumed run checks each file's end instead (png_complete).
    atomic_write_bytes(path, encoded.tobytes(), durable=False)


class PngWriter:
    """Encode and write PNGs on a thread pool (OpenCV releases the GIL); at most ``2 * threads`` pending."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.pending: deque[Future] = deque()
        self.limit = 2 * threads

    def submit(self, path: Path, image: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Write ``image`` to ``path``; ``image`` may also be a function that makes it, run on the pool too."""
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, path, image))

    @staticmethod
    def _write(path: Path, image: np.ndarray | Callable[[], np.ndarray]) -> None:
        write_png(path, image() if callable(image) else image)

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()


# ---------------------------------------------------------------- stages


def _loader(run: PredictionRun, rows: list[dict], with_masks: bool, runtime: Runtime,
            mask_at_input_size: bool = True) -> DataLoader:
    dataset = SegmentationDataset(rows, run.geometry, with_masks, mask_at_input_size=mask_at_input_size,
                                  masks=mask_spec(run.source), image_max=run.source.settings.image_max)
    return same_size_loader(dataset, run.predict.batch_size, runtime, run.source.settings.num_workers)


def predict_test(run: PredictionRun, models: list[torch.nn.Module], runtime: Runtime, rows: list[dict],
                 fingerprint: dict, shard: Shard | None = None, setup: ExitStack | None = None,
                 sources: dict | None = None) -> Path:
    """The test PNGs of ``rows`` (the test images: id, image path, as data.test_rows lists them) predicted by
    ``models`` (averaged) on ``runtime`` into ``run``'s predictions folder, which it returns; ``fingerprint``
    (``prediction_fingerprint``) decides which PNGs already there are kept; ``shard``: this process's part.
    Call it holding the predictions folder's claim (``predictions.claim_writer``); ``setup``, the folder lock it
    yields, is closed once this shard's record is written when other shards may run beside it. Each image's
    content fingerprint is recorded (and a PNG made from another image is predicted again), with ``sources``
    (``checkpoint_sources``: where the checkpoints live) for the stages that read the folder."""
    shard = shard or Shard()
    image_paths = {row["id"]: row["image"] for row in rows}
    ids = list(image_paths)
    out_dir = run.files.predictions
    shapes = input_shapes(rows, run.geometry)
    mine = shard.take(fixed_batches(ids, run.predict.batch_size, shapes))
    ids = [i for batch in mine for i in batch]
    inputs = image_fingerprints([{"id": i, "image": image_paths[i]} for i in ids])
    done = keep_or_redo(out_dir, ids, fingerprint, run.predict.resume, shard.state_file, inputs,
                        sources or {"stage": "predict"})
    if setup is not None and shard.count > 1:
        setup.close()
    batches = batches_to_do(mine, done)
    if done:
        rest = f"predicting the remaining {sum(map(len, batches))} image(s)" if batches else "nothing left to predict"
        print(f"resuming: {len(done)} of {len(ids)} predictions were already written by the same models and "
              f"settings; {rest}")
    if batches:
        _predict_batches(run, models, runtime, batches, out_dir, done, image_paths)
    return out_dir


def _predict_batches(run: PredictionRun, models: list[torch.nn.Module], runtime: Runtime, batches: list[list[str]],
                     out_dir: Path, done: set[str], image_paths: dict[str, str]) -> None:
    rows = [{"id": i, "image": image_paths[i]} for batch in batches for i in batch]
    starts = np.cumsum([0] + [len(b) for b in batches])
    batch_sampler = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
    geometry, data = run.geometry, run.source.settings
    dataset = SegmentationDataset(rows, geometry, False, image_max=data.image_max)
    loader = build_loader(dataset, run.predict.batch_size, runtime, data.num_workers, batch_sampler=batch_sampler)
    writer = PngWriter(run.predict.writer_threads)
    try:
        for batch in tqdm(loader, desc="predict test", dynamic_ncols=True):
            images = normalise_on_device(runtime.to_device(batch["image"]))
            sizes = [tuple(size) for size in batch["size"].tolist()]
            probs = image_probabilities(models, images, sizes, runtime, geometry, run.predict.tta,
                                        run.model.activation, data.resize_back)
            for image_id, maps in zip(batch["id"], probs):
                if image_id not in done:
                    writer.submit(out_dir / f"{image_id}.png", prediction_image(to_uint8(maps).cpu().numpy()))
    finally:
        writer.close()


@torch.no_grad()
def predict_oof(run: PredictionRun, models: dict[int, torch.nn.Module], runtime: Runtime) -> Evaluator:
    """Each fold's held-out images (``run``'s folds.csv), predicted by that fold's model of ``models`` (fold ->
    network) on ``runtime`` and scored at ``postprocess.threshold`` under ``postprocess.metric`` (an
    ``Evaluator`` with the search's thresholds, the search covering one class). The probability PNGs go to
    ``{output_dir}/oof_predictions/`` for the report."""
    files, source, post = run.files, run.source, run.post
    items = train_items(source, read_folds(files.folds_csv, run.n_folds), files.folds_csv)
    geometry, classes, metric = run.geometry, list(source.classes), post.metric
    at = thresholds(post.threshold, len(classes))
    watershed = post.objects == "watershed"  # its search: the mask's and the contact's thresholds, min_area
    found = Evaluator(metric, classes, at, search_thresholds(metric, at[0]) if len(classes) == 1 else None,
                      post.objects, SeparationGrid.around(tuple(at)) if watershed else None)
    truth = true_objects(metric, source, items.to_dict("records"))
    writer = PngWriter(run.predict.writer_threads)
    try:
        for fold, model in models.items():
            rows = items[items["fold"] == fold].to_dict("records")
            for batch in tqdm(_loader(run, rows, True, runtime, False), desc=f"out-of-fold {fold}",
                              dynamic_ncols=True):
                images = normalise_on_device(runtime.to_device(batch["image"]))
                sizes = [tuple(size) for size in batch["size"].tolist()]
                probs = image_probabilities([model], images, sizes, runtime, geometry, run.predict.tta,
                                            run.model.activation, source.settings.resize_back)
                for image_id, maps, mask, size in zip(batch["id"], probs, batch["mask"], sizes):
                    levels = to_uint8(maps)
                    writer.submit(files.oof_predictions / f"{image_id}.png",
                                  prediction_image(levels.cpu().numpy()))
                    target = mask[:, : size[0], : size[1]].to(runtime.device) > 0  # (batch padding cropped)
                    objects = truth(image_id, size) if truth is not None else None
                    found.add(image_id, levels, target, objects, fold)
    finally:
        writer.close()
    return found


def predict(cfg: Config, shard: Shard | None = None, checkpoints: dict[int, Path] | None = None) -> dict:
    """The predict stage: test PNGs, then the out-of-fold scores; returns paths and the OOF Dice.

    ``checkpoints`` (fold -> file): the weights to use instead of the run's ``fold_K/{predict.checkpoint}``
    (a bundle's, ``ternaus.bundle``).

    With ``shard`` (``--shard i/n``), or under ``torchrun`` (shard RANK of WORLD_SIZE, on GPU LOCAL_RANK),
    this process predicts its share of the test set only; the shards together write what one process would.
    Shard 0 also scores the out-of-fold images."""
    world = world_from_environment()
    shard = shard or Shard(world.rank, world.size)
    run = PredictionRun.from_config(cfg)
    files = run.files
    score_oof = cfg.predict.oof and shard.index == 0
    # The predictions folder's own temporaries are cleared by keep_or_redo, which knows this shard's ids.
    outputs = StageOutputs("predict", run.source.places(),
                           folders={"output_dir": files.root, "predict.out_dir": files.predictions},
                           claims=[partial(claim_writer, files.predictions, shard.index, shard.count),
                                   *([out_of_fold_lock(files)] if score_oof else [])],
                           temporaries={files.root: oof_outputs(files)} if score_oof else None,
                           config=ConfigFile(files.config("predict"), partial(save_config, cfg))
                           if shard.index == 0 else None)
    with outputs:
        runtime = Runtime.of(cfg.runtime, world.local_rank, MODELS[run.model.name].cpu_channels_last)
        return _predict(run, runtime, shard, score_oof, outputs, checkpoints)


def _predict(run: PredictionRun, runtime: Runtime, shard: Shard, score_oof: bool, outputs: StageOutputs,
             checkpoints: dict[int, Path] | None = None) -> dict:
    setup = outputs.held[0]  # the predictions folder's lock (claim_writer)
    files, source = run.files, run.source
    # Everything that can be refused is checked before the first file is written.
    rows = test_rows(source)
    check_image_files([Path(row["image"]) for row in rows], source.settings.max_image_pixels)
    items = train_items(source, read_folds(files.folds_csv, run.n_folds), files.folds_csv) if score_oof else None
    paths = checkpoints if checkpoints is not None else checkpoint_paths(files, run.folds)
    check_checkpoints(run, paths, items)
    fingerprint = prediction_fingerprint(run, paths, runtime)
    models = load_fold_models(run.model, runtime, paths)
    outputs.save_config()  # shard 0's
    part = f", shard {shard.index}/{shard.count}" if shard.count > 1 else ""
    print(f"predicting with folds {list(models)} on {runtime.describe()}, TTA: {run.predict.tta}{part}")
    out_dir = predict_test(run, list(models.values()), runtime, rows, fingerprint, shard, setup,
                           checkpoint_sources(paths, files.predictions))
    result = {"predictions": out_dir, "oof_dice": None}
    if score_oof:
        remove_oof_temporaries(outputs, files, list(items["id"]))
        result.update(_score_oof(run, models, runtime, fingerprint, paths))
    return result


def checkpoint_sources(paths: dict[int, Path], folder: Path) -> dict:
    """The ``sources`` of a record in the predictions ``folder``: the stage, and each checkpoint's file
    (``lineage.file_source``, relative to the folder)."""
    return {"stage": "predict",
            "checkpoints": {str(fold): file_source(path, folder) for fold, path in paths.items()}}


def oof_outputs(files: RunFiles, *also: Path) -> set[str]:
    """The names of the files the out-of-fold phase writes in ``output_dir`` (and those of ``also``): the
    temporaries a stage that writes them declares (``StageOutputs(temporaries=...)``)."""
    return {p.name for p in (*files.oof_outputs, files.oof_lineage, *also)}


def remove_oof_temporaries(outputs: StageOutputs, files: RunFiles, ids: list[str]) -> None:
    """What a killed out-of-fold phase left in ``oof_predictions/`` (its PNGs of ``ids``); its files in
    ``output_dir`` are declared to ``outputs`` (``oof_outputs``), which holds the out-of-fold files' claim."""
    outputs.remove_temporaries(files.oof_predictions, {f"{i}.png" for i in ids})


def _score_oof(run: PredictionRun, models: dict[int, torch.nn.Module], runtime: Runtime, fingerprint: dict,
               paths: dict[int, Path] | None = None) -> dict:
    """The out-of-fold pass and its files, recorded in ``oof_lineage.json`` once they are all written (with the
    checkpoints ``paths``, folds.csv and the training images: ``lineage.oof_lineage``)."""
    mark_oof_pending(run.files.oof_lineage)
    found = predict_oof(run, models, runtime)
    oof, metric = found.table(), run.post.metric
    files = run.files
    if found.search_grid is not None:  # one class: the search's histograms hold class 0
        chosen = write_oof_analysis(files, run.post, oof, found.histograms(), found.threshold_scores(),
                                    searched_key(fingerprint))
        grid = found.search_grid
        how = (f"exact over {len(grid)} thresholds" if METRICS[metric].form == "counts" else
               f"on {len(grid)} thresholds {grid[0]}-{grid[-1]} only: {metric} counts objects, which the level "
               "histograms cannot")
        print(f"post-processing searched on the out-of-fold images for {metric} ({how}): threshold "
              f"{chosen.threshold}, min_area {chosen.min_area}: CV {metric} {chosen.score:.4f} (at "
              f"{chosen.default_threshold} without min_area: {chosen.default_score:.4f}) -> {files.postprocess}")
    elif found.separation is not None:
        chosen = write_separation_analysis(files, run.post, oof, found.separation_scores(), found.separation,
                                           searched_key(fingerprint))
        print(f"watershed searched on the out-of-fold images for {metric}: thresholds (mask, contact) "
              f"{chosen['threshold']}, min_area {chosen['min_area']}: CV {metric} {chosen['score']:.4f} (at "
              f"{chosen['default_threshold']} without min_area: {chosen['default_score']:.4f}; plain connected "
              f"components at best: {chosen['components_score']:.4f}) -> {files.postprocess}")
    else:
        atomic_write(files.oof_csv, lambda tmp: oof.to_csv(tmp, index=False))
    write_oof_lineage(files.oof_lineage, oof_lineage("predict", list_train(run.source).to_dict("records"),
                                                     searched_key(fingerprint), paths, files.folds_csv,
                                                     base=files.root))
    extra = [metric] if metric not in ("dice", "jaccard") else []
    for fold, group in oof.groupby("fold"):
        others = "".join(f", {name} {group[name].mean():.4f}" for name in extra)
        print(f"fold {fold}: out-of-fold Dice {group['dice'].mean():.4f}, IoU {group['jaccard'].mean():.4f}"
              f"{others} on {len(group)} images")
    others = "".join(f", {name} {oof[name].mean():.4f}" for name in extra)
    print(f"out-of-fold (mean per image, at postprocess.threshold): Dice {oof['dice'].mean():.4f}, "
          f"IoU {oof['jaccard'].mean():.4f}{others}  ({files.oof_csv})")
    return {"oof": files.oof_csv, "oof_dice": float(oof["dice"].mean()), f"oof_{metric}": float(oof[metric].mean())}
