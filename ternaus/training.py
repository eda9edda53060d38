"""Training: one model per fold (UNet11 by default), Adam with the Carvana cyclic schedule (or the optimiser and
schedule ``train.optimizer`` / ``train.schedule`` name), validation every epoch.

Each fold writes ``fold_K/last.pt`` (every epoch, and every ``train.checkpoint_every`` steps),
``fold_K/best.pt`` (the best validation score of ``postprocess.metric``, the competition's metric) and
``fold_K/log.csv``. The shuffle of an epoch is drawn from
(seed, fold, epoch) and each image's augmentation from its position in the epoch, and ``last.pt`` holds
the generators' states and the log, so a run killed at any moment and started again ends exactly where
an uninterrupted one would. With ``train.accumulate`` N the optimiser steps once every N batches on their
averaged gradients; ``train.checkpoint_every`` is then a multiple of N, so a checkpoint never falls inside
an accumulation and a resumed run groups the batches as the uninterrupted one did.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ternaus.data.source import DataSource
from ternaus.analysis import TrueObjects, true_objects
from ternaus.augment import build_train_transform
from ternaus.checkpoint import (NON_FINITE_ADVICE, FoldState, check_split, read_checkpoint, resume_fold_state,
                                save_fold_state, unwrap)
from ternaus.config import (
    Config,
    ModelConfig,
    PostprocessConfig,
    RuntimeConfig,
    TrainConfig,
    config_to_dict,
    save_config,
    thresholds,
)
from ternaus.data.dataset import SegmentationDataset, input_shapes, normalise_on_device, pad_collate, same_size_batches
from ternaus.data.files import check_image_files
from ternaus.data.geometry import Geometry, geometry_of
from ternaus.data.layouts import mask_spec, train_items
from ternaus.distributed import (
    World,
    broadcast_buffers,
    close_world,
    init_world,
    max_over_world,
    sum_over_world,
    world_from_environment,
)
from ternaus.errors import BusyError, ConfigError, DataError, TrainingError
from ternaus.evaluation import Evaluator
from ternaus.folds import split_fingerprint, split_group_column, split_known_groups
from ternaus.hooks import Hook, HookContext, build_hooks, evaluated_model
from ternaus.io import atomic_write
from ternaus.losses import SegmentationLoss, probabilities
from ternaus.models import build_model, new_model, set_encoder_frozen
from ternaus.registry import MODELS
from ternaus.optim import build_optimizer, build_scheduler, carvana_lr_factor
from ternaus.resume import check_resume_settings
from ternaus.run_files import RunFiles, folds_to_train, read_folds
from ternaus.runtime import Runtime, seed_everything
from ternaus.stage import ConfigFile, Lock, StageOutputs
from ternaus.weights import fit_state_dict

__all__ = ["train", "TrainingRun", "train_fold", "carvana_lr_factor", "EpochSampler", "build_loader",
           "same_size_loader", "fold_data", "train_step", "accumulation_group", "validate", "new_fold_state"]


# ---------------------------------------------------------------- what training takes from the config


@dataclass(frozen=True)
class TrainingRun:
    """What the training below ``train`` needs, built once at the stage's entry (``TrainingRun.from_config``):
    the run's files, the data, the network input's geometry, the ``train``, ``model`` and ``postprocess``
    (metric, threshold) sections, ``folds.n_folds`` and the resolved settings as a plain dict, which every
    checkpoint records."""

    files: RunFiles
    source: DataSource
    geometry: Geometry
    train: TrainConfig
    model: ModelConfig
    post: PostprocessConfig
    n_folds: int
    settings: dict

    @classmethod
    def from_config(cls, cfg: Config) -> TrainingRun:
        return cls(RunFiles.of(cfg), DataSource.of(cfg), geometry_of(cfg), cfg.train, cfg.model, cfg.postprocess,
                   cfg.folds.n_folds, config_to_dict(cfg))

    def hook_context(self, fold: int, runtime: Runtime, world: World,
                     val_set: SegmentationDataset | None = None) -> HookContext:
        """What fold ``fold``'s hooks are built from; ``val_set``: this rank's validation images."""
        return HookContext(self.train, self.model, self.files, self.geometry, fold, runtime, world, val_set)


# ---------------------------------------------------------------- data loaders


def _epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return seed * 1_000_003 + fold * 10_007 + epoch


class EpochSampler(Sampler):
    """The epoch's shuffled order, drawn from its seed alone; this rank's share of it, from ``start`` on.

    It yields ``(index, item_seed)`` pairs: each image's augmentation depends only on the epoch and its
    position in it, not on the number of loader workers nor on where an interrupted run resumed. Under
    DDP, rank r takes positions r, r + world, r + 2 world, ...; the order is padded by wrapping around so
    that every rank gets as many images (and steps) as the others, as DistributedSampler does.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world

    def _positions(self) -> range:
        padded = self.size + (-self.size) % self.world
        return range(self.rank, padded, self.world)[self.start:]

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()
        for position in self._positions():
            yield order[position % self.size], (self.seed * 100_003 + position) % 2**63

    def __len__(self) -> int:
        return len(self._positions())


def build_loader(dataset: Dataset, batch_size: int, runtime: Runtime, num_workers: int,
                 sampler: Sampler | None = None, drop_last: bool = False,
                 batch_sampler: list[list[int]] | None = None) -> DataLoader:
    """In order unless a sampler is given; pinned host memory when the batches go to a GPU; images of different
    sizes in one batch are padded to the largest (pad_collate)."""
    # No cv2.setNumThreads(1) in the workers: called in a worker forked after this process used OpenCV's
    # thread pool, it hangs for ever (tried).
    common = {"num_workers": num_workers, "pin_memory": runtime.is_cuda, "collate_fn": pad_collate}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last, **common)


def same_size_loader(dataset: SegmentationDataset, batch_size: int, runtime: Runtime, num_workers: int) -> DataLoader:
    """In order, in batches of one network-input size (validation, out-of-fold scores): no image is zero-padded
    to a batch-mate's size, so each prediction is the one the image gets alone."""
    batches = same_size_batches(input_shapes(dataset.rows, dataset.geometry), batch_size)
    return build_loader(dataset, batch_size, runtime, num_workers, batch_sampler=batches)


@dataclass
class FoldData:
    train_set: SegmentationDataset
    val_loader: DataLoader
    drop_last: bool
    world: World
    truth: TrueObjects | None = None  # the validation images' true objects, where the masks CSV lists them

    def train_loader(self, batch_size: int, num_workers: int, runtime: Runtime, seed: int,
                     start_step: int) -> DataLoader:
        """The epoch's training batches of ``batch_size`` (``train.batch_size``) from step ``start_step`` on,
        shuffled by ``seed`` (the epoch's); ``num_workers``: ``data.num_workers``."""
        sampler = EpochSampler(len(self.train_set), seed, start_step * batch_size, self.world.rank,
                               self.world.size)
        return build_loader(self.train_set, batch_size, runtime, num_workers, sampler, self.drop_last)


def fold_data(run: TrainingRun, items: pd.DataFrame, fold: int, runtime: Runtime, world: World) -> FoldData:
    """Fold ``fold``'s training set and this rank's validation loader. ``run``: the training's settings
    (``TrainingRun``); ``items``: every training image with its ``fold`` (``train_items``); ``runtime``,
    ``world``: this process's device and its DDP world."""
    geometry, source = run.geometry, run.source
    train_rows = items[items["fold"] != fold].to_dict("records")
    val_rows = items[items["fold"] == fold].to_dict("records")
    if not train_rows or not val_rows:
        raise DataError(f"fold {fold} has {len(train_rows)} training and {len(val_rows)} validation images; "
                        "run prepare_folds.py again with this config")
    masks, image_max = mask_spec(source), source.settings.image_max
    train_set = SegmentationDataset(train_rows, geometry, True, build_train_transform(run.train.augment), masks=masks,
                                    image_max=image_max, crop=run.train.crop)
    # Each rank validates its own share, without padding, so that every image is counted exactly once. Resized
    # input is scored against the original masks (the loss still sees them resized, as in training): a mask
    # resized down and back up is not the mask the competition scores.
    val_set = SegmentationDataset(val_rows[world.rank::world.size], geometry, True, masks=masks,
                                  mask_at_input_size=geometry.input_size is None, image_max=image_max)
    # Drop a last batch of one: a single image gives a noisy Adam step at full resolution.
    per_rank = -(-len(train_rows) // world.size)
    drop_last = per_rank % run.train.batch_size == 1 and per_rank > 1
    val_loader = same_size_loader(val_set, run.train.val_batch_size, runtime, source.settings.num_workers)
    return FoldData(train_set, val_loader, drop_last, world, true_objects(run.post.metric, source, val_rows))


# ---------------------------------------------------------------- one epoch


class LossWatch:
    """Remembers the first non-finite loss without a host synchronisation at every step."""

    def __init__(self, device: torch.device, world: World):
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), device=device)
        self.world = world

    def observe(self, loss: torch.Tensor, step: int) -> None:
        new = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(new, step, self.first_step)
        self.value = torch.where(new, loss, self.value)

    def check(self, where: str) -> None:
        """Raise if a non-finite loss was seen; called before every checkpoint so a bad state is never saved.

        Under DDP every rank calls it at the same steps and all of them stop when any one saw a bad loss."""
        local = int(self.first_step.item())
        step = local
        if self.world.distributed:  # the earliest bad step of any rank: max of -step, with -2**62 for none
            seen = max_over_world(torch.tensor([local, -local if local >= 0 else -2**62]), self.world).tolist()
            step = -seen[1] if seen[0] >= 0 else -1
        if step >= 0:
            value = self.value.item() if local == step else "non-finite on another rank"
            raise TrainingError(f"{where}, step {step}: the training loss became {value}. {NON_FINITE_ADVICE}")


def train_step(state: FoldState, batch: dict, runtime: Runtime, share: float = 1.0, step: bool = True,
               clip_grad_norm: float | None = None) -> torch.Tensor:
    """Forward and backward on ``batch``, its gradients weighted by ``share`` (1 / the batches accumulated) and
    added to those already there; with ``step``, the optimiser steps on them (after clipping their global norm
    to ``clip_grad_norm``) and clears them. Returns the batch's loss, left on the device (reading it would
    synchronise)."""
    images = normalise_on_device(runtime.to_device(batch["image"]))
    masks = batch["mask"].to(runtime.device, non_blocking=True).float()
    with runtime.autocast():
        logits = state.model(images)
    loss = state.loss_fn(logits, masks)
    state.scaler.scale(loss * share if share != 1.0 else loss).backward()
    if step:
        _optimiser_step(state, clip_grad_norm)
    return loss.detach()


def _optimiser_step(state: FoldState, clip_grad_norm: float | None) -> None:
    if clip_grad_norm is not None:
        state.scaler.unscale_(state.optimizer)  # the norm of the true gradients, not of the scaled ones
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)


def accumulation_group(step: int, steps_in_epoch: int, accumulate: int) -> tuple[int, bool]:
    """For the batch at ``step`` (from 0) of an epoch: how many batches its accumulation group holds, and whether
    it is the group's last (the optimiser steps). Groups start at multiples of ``accumulate``; the epoch's last
    group holds what is left, so an epoch always ends on a step."""
    start = step - step % accumulate
    size = min(accumulate, steps_in_epoch - start)
    return size, step == start + size - 1


def train_one_epoch(state: FoldState, loader: DataLoader, runtime: Runtime, train: TrainConfig, desc: str,
                    save_progress: Callable[[], None]) -> float:
    """Train from ``state.step`` to the end of the epoch; ``save_progress()`` checkpoints every
    ``train.checkpoint_every`` steps. ``train``: the ``train`` section (accumulate, clip_grad_norm, log_every,
    checkpoint_every); ``desc``: the progress bar's and the errors' label. Returns the epoch's mean loss."""
    state.model.train()
    watch = LossWatch(runtime.device, state.world)
    every, steps_in_epoch = train.checkpoint_every, state.step + len(loader)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, initial=state.step, total=steps_in_epoch,
               disable=not state.world.is_main)
    for batch in bar:
        size, last = accumulation_group(state.step, steps_in_epoch, train.accumulate)
        loss = train_step(state, batch, runtime, 1.0 / size, last, train.clip_grad_norm)
        state.step += 1
        if last:  # an optimiser step; before its checkpoint, which holds the hooks' states
            for hook in state.hooks:
                hook.on_step_end(state, loss)
        watch.observe(loss, state.step)
        state.loss_sum += loss
        if state.step % train.log_every == 0:  # the only host synchronisations inside the epoch
            watch.check(desc)
            bar.set_postfix(loss=f"{state.loss_sum.item() / state.step:.4f}")
        if every and state.step % every == 0 and state.step < steps_in_epoch:  # the epoch's end saves anyway
            watch.check(desc)
            save_progress()
    bar.close()
    watch.check(desc)
    total = sum_over_world(state.loss_sum.detach().reshape(1), state.world).item()
    return total / max(state.step * state.world.size, 1)


def _at_image_size(logit: torch.Tensor, mask: torch.Tensor, size: tuple[int, int], geometry: Geometry,
                   activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (C, H, W) float probabilities and bool true masks at its own size.

    ``mask``: the original mask (batch padding at the bottom and right) in resize mode, the network-sized one
    (cropped back exactly) in pad mode."""
    probs = probabilities(geometry.restore(logit, size)[None], activation)[0]
    height, width = size
    target = (mask[:, :height, :width] if geometry.input_size is not None else geometry.restore(mask, size)) > 0.5
    return probs, target


def _network_masks(masks: torch.Tensor, sizes: list[list[int]], geometry: Geometry) -> torch.Tensor:
    """The masks the loss compares the network's output with, in resize mode: the originals (batch padding
    cropped) resized exactly as the training masks are."""
    return torch.stack([torch.from_numpy(geometry.masks_to_input(np.ascontiguousarray(m[:, :h, :w].numpy())))
                        for m, (h, w) in zip(masks, sizes)])


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, runtime: Runtime, loss_fn: SegmentationLoss,
             geometry: Geometry, threshold: float | list[float], world: World = World(),
             classes: list[str] | None = None, metric: str = "dice",
             truth: TrueObjects | None = None, objects: str = "components") -> dict[str, float]:
    """Mean per-image Dice, Jaccard and ``metric`` (``postprocess.metric``; ``val_<metric>`` when it is neither)
    at ``threshold`` (one, or one per class), on each image's own area and its original mask; with several
    classes the means over (image, class) pairs, and each class's Dice. ``truth``: the true objects of a metric
    of objects, where the masks CSV lists them (else each true mask's connected components); ``objects``:
    ``postprocess.objects`` (how a prediction becomes objects).

    The loss is each batch's loss weighted by its image count. Under DDP the sums of every rank's share
    are added up, so each validation image counts exactly once whatever the number of ranks."""
    model.eval()
    activation = getattr(loss_fn, "activation", "sigmoid")
    n_classes = len(classes) if classes else 1
    evaluator = Evaluator(metric, classes or [str(k + 1) for k in range(n_classes)], thresholds(threshold, n_classes),
                          objects=objects)
    loss_sum = 0.0  # each batch's loss times its image count, in float64 so that the mean does not depend on order
    for batch in loader:
        images = normalise_on_device(runtime.to_device(batch["image"]))
        sizes = batch["size"].tolist()
        masks = batch["mask"]
        net_masks = _network_masks(masks, sizes, geometry) if geometry.input_size is not None else masks
        with runtime.autocast():
            logits = model(images)
        loss_sum += loss_fn(logits, net_masks.to(runtime.device).float()).item() * len(images)
        for image_id, logit, mask, size in zip(batch["id"], logits.float(), masks.to(runtime.device), sizes):
            objects = truth(image_id, tuple(size)) if truth is not None else None
            evaluator.add(image_id, *_at_image_size(logit, mask, tuple(size), geometry, activation), objects)
    # [loss sum, images, Dice sum, ...]: the same length on every rank, even one with no image to validate.
    loss, *sums = sum_over_world(torch.from_numpy(np.concatenate([[loss_sum], evaluator.sums()])), world).tolist()
    scores = {"val_loss": loss / sums[0]}
    scores.update({f"val_{name}": value for name, value in evaluator.means(sums).items()})
    return scores


# ---------------------------------------------------------------- a fold


def new_fold_state(train: TrainConfig, model_settings: ModelConfig, runtime: Runtime,
                   world: World = World()) -> FoldState:
    """A fold's fresh state: the network of ``model_settings`` (the ``model`` section) on ``runtime``'s device,
    the optimiser, schedule, loss (the ``train`` section's) and gradient scaler."""
    model = runtime.prepare_model(build_model(model_settings))
    # Every parameter, a frozen encoder's too: frozen ones get no gradient, which Adam and SGD skip (no update,
    # no weight decay, no state), and the optimizer's state_dict keeps one layout from the first step to the last.
    optimizer = build_optimizer(model.parameters(), train.optimizer, train.lr, train.weight_decay)
    scheduler = build_scheduler(optimizer, train.schedule)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    loss_fn = SegmentationLoss.from_settings(train.loss, model_settings.activation)
    return FoldState(model, optimizer, scheduler, scaler, loss_fn, world=world)


def _save_progress(state: FoldState, run: TrainingRun, fold: int) -> None:
    """A checkpoint inside an epoch. Every rank calls it at the same step: it holds the loss so far of all."""
    partial = sum_over_world(state.loss_sum.detach().reshape(1), state.world)[0]
    save_fold_state(state, run.files.last(fold), run.settings, fold, partial)


def _write_log(path: Path, rows: list[dict], world: World) -> None:
    # The log is also inside last.pt, so a kill between the two writes loses nothing.
    if world.is_main:
        atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


def _check_scores(scores: dict[str, float], desc: str) -> None:
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        raise TrainingError(f"{desc}: validation gave {bad}. {NON_FINITE_ADVICE}")


def _start_fold(run: TrainingRun, fold: int, runtime: Runtime, world: World, hooks: Sequence[Hook] = (),
                split: dict | None = None) -> FoldState:
    """A fresh state, or the one in ``last.pt`` when resuming (the hooks' states too; every setting changed since
    applied from there, each named in a line, or refused); under DDP the model is wrapped last. ``split``: the
    fold's split (``folds.split_fingerprint``), which its checkpoints record and a resume must find again."""
    files = run.files
    out = files.fold_dir(fold)
    say = print if world.is_main else _quiet
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(_epoch_seed(run.train.seed, fold, 0))
    state = new_fold_state(run.train, run.model, runtime, world)
    state.hooks, state.split = list(hooks), split
    last = files.last(fold)
    if run.train.resume and last.is_file():
        changes = resume_fold_state(state, last, run.train, runtime, run.settings, fold)
        where = f"epoch {state.epoch + 1}, step {state.step}" if state.step else f"the end of epoch {state.epoch}"
        say(f"fold {fold}: resuming from {last} at {where}")
        for change in changes:
            say(f"fold {fold}: {change} (changed since {last.name}): {change.effect(where)}")
        if state.log:
            _write_log(files.log(fold), state.log, world)
    elif world.is_main:
        files.log(fold).unlink(missing_ok=True)
    # Before DDP wraps the model: DDP reduces the gradients of the parameters that require one at that moment.
    if set_encoder_frozen(state.model, encoder_frozen_in(run.model, state.epoch + 1)):
        say(f"fold {fold}: encoder frozen to the end of epoch {run.model.freeze_encoder_epochs} "
            "(model.freeze_encoder_epochs)")
    state.model = _wrap(state.model, run.train.compile, runtime, world)
    return state


def _wrap(model: torch.nn.Module, compile: bool, runtime: Runtime, world: World) -> torch.nn.Module:
    """The plain model as training runs it: under DDP, gradients averaged over the ranks (rank 0's weights
    are broadcast here); with ``compile`` (train.compile), compiled around DDP, as PyTorch recommends.
    Checkpoints and validation use the plain model (unwrap)."""
    if world.distributed:
        device_ids = [runtime.device.index] if runtime.is_cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(model) if compile else model


def encoder_frozen_in(model: ModelConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` (counted from 1) trains the decoder alone; ``model``: the ``model`` section
    (``freeze_encoder_epochs``)."""
    return epoch <= model.freeze_encoder_epochs


def _apply_encoder_freeze(state: FoldState, run: TrainingRun, runtime: Runtime, desc: str) -> None:
    """Freeze or release the encoder for the coming epoch. Under DDP a released encoder needs a new
    wrapper: the old one was built without the encoder's parameters and would leave their gradients
    unsynchronised between the ranks. A compiled model is compiled again for the new set of gradients."""
    frozen = encoder_frozen_in(run.model, state.epoch + 1)
    if not set_encoder_frozen(unwrap(state.model), frozen):
        return
    if state.world.distributed:
        # The old wrapper's hooks would still fire in backward.
        getattr(state.model, "_orig_mod", state.model)._remove_autograd_hooks()
    if state.world.distributed or run.train.compile:
        state.model = _wrap(unwrap(state.model), run.train.compile, runtime, state.world)
    if state.world.is_main:
        print(f"{desc}: encoder {'frozen' if frozen else 'released'}")


def _quiet(*args, **kwargs) -> None:
    """print() for ranks other than 0."""


def _end_epoch(state: FoldState, run: TrainingRun, fold: int, row: dict, desc: str,
               validated: torch.nn.Module) -> None:
    """Step the schedule, log the row, and checkpoint: ``best.pt`` holds ``validated``, the model scored."""
    metric = run.post.metric
    key = f"val_{metric}"
    _check_scores({"val_loss": row["val_loss"], "val_dice": row["val_dice"], key: row[key]}, desc)
    files = run.files
    state.scheduler.step()
    state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, None
    improved = row[key] > state.best_score
    state.best_score = max(state.best_score, row[key])
    state.log.append(row)
    for hook in state.hooks:
        hook.on_epoch_end(state, row)
    # The generators as the next epoch starts them: an epoch's end then records one state whatever consumed random
    # numbers before it (a loader resumed mid-epoch draws its workers' seed again), and the same run, killed and
    # resumed or not, writes the same checkpoint bytes. The next epoch seeds them so anyway.
    seed_everything(_epoch_seed(run.train.seed, fold, state.epoch + 1))
    if improved:
        save_fold_state(state, files.best(fold), run.settings, fold, model=validated, wall_clock=False)
    save_fold_state(state, files.last(fold), run.settings, fold)
    _write_log(files.log(fold), state.log, state.world)
    if state.world.is_main:
        other = f"  {metric} {row[key]:.4f}" if metric not in ("dice", "jaccard") else ""
        print(f"{desc}: loss {row['train_loss']:.4f}  val dice {row['val_dice']:.4f}  "
              f"jaccard {row['val_jaccard']:.4f}{other}{'  *best' if improved else ''}")


def train_fold(run: TrainingRun, fold: int, items: pd.DataFrame, runtime: Runtime, world: World = World()) -> float:
    """Train fold ``fold`` to ``train.epochs``, resuming from ``last.pt`` when present; returns the best
    validation score of ``postprocess.metric``. ``run``: the training's settings (``TrainingRun``); ``items``:
    every training image with its ``fold``; ``runtime``, ``world``: this process's device and its DDP world."""
    data = fold_data(run, items, fold, runtime, world)
    hooks = build_hooks(run.hook_context(fold, runtime, world, data.val_loader.dataset))
    state = _start_fold(run, fold, runtime, world, hooks, split_fingerprint(items, fold))
    try:
        for hook in state.hooks:
            hook.on_fit_start(state)
        _train_epochs(state, run, fold, data, runtime)
    finally:
        for hook in state.hooks:
            hook.on_fit_end(state)
    return state.best_score


def _train_epochs(state: FoldState, run: TrainingRun, fold: int, data: FoldData, runtime: Runtime) -> None:
    world, geometry, train = state.world, run.geometry, run.train
    while state.epoch < train.epochs:
        seed = _epoch_seed(train.seed, fold, state.epoch + 1)
        if state.step == 0:  # a mid-epoch resume has its generators' states from the checkpoint
            seed_everything(seed)
            state.loss_sum = torch.zeros((), device=runtime.device)
        started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        desc = f"fold {fold} epoch {state.epoch + 1}/{train.epochs}"
        _apply_encoder_freeze(state, run, runtime, desc)
        loader = data.train_loader(train.batch_size, run.source.settings.num_workers, runtime, seed, state.step)
        train_loss = train_one_epoch(state, loader, runtime, train, desc, lambda: _save_progress(state, run, fold))
        # The plain model (or the hooks' choice, the EMA's average): each rank validates a different number of
        # batches, with no collective inside; every rank first takes rank 0's BatchNorm statistics, those of the
        # model the checkpoint holds.
        broadcast_buffers(unwrap(state.model), world)
        validated = evaluated_model(state)
        if validated is not unwrap(state.model):
            broadcast_buffers(validated, world)
        scores = validate(validated, data.val_loader, runtime, state.loss_fn, geometry,
                          run.post.threshold, world, list(run.source.classes), run.post.metric, data.truth,
                          run.post.objects)
        for hook in state.hooks:
            hook.on_validation_end(state, scores)
        row = {"epoch": state.epoch + 1, "lr": lr, "train_loss": train_loss, **scores,
               "time_s": round(time.perf_counter() - started, 2)}
        _end_epoch(state, run, fold, row, desc, validated)


def train(cfg: Config, fold: int | None = None) -> dict[int, float]:
    """Train ``fold``, or every fold of ``train.folds`` (all when null); returns the best validation score
    (``postprocess.metric``) per fold.

    Under ``torchrun`` every process trains the same fold with DistributedDataParallel, one GPU each."""
    folds = [fold] if fold is not None else folds_to_train(cfg.train.folds, cfg.folds.n_folds)
    if not set(folds) <= set(range(cfg.folds.n_folds)):
        raise ConfigError(f"--fold {fold}: folds.n_folds={cfg.folds.n_folds} gives folds 0..{cfg.folds.n_folds - 1}")
    run = TrainingRun.from_config(cfg)
    files = run.files
    world = world_from_environment()  # the process group itself starts once the outputs are checked
    main = world.is_main  # rank 0 alone writes: it claims, clears and saves
    # One config file per fold when folds run side by side (one per GPU) into the same output_dir.
    name = f"train_fold_{folds[0]}" if fold is not None else "train"
    outputs = StageOutputs("train", run.source.places(), folders={"output_dir": files.root},
                           claims=[partial(_claim_folds, files, folds, world)],
                           temporaries={files.fold_dir(k): _fold_files(files, k) for k in folds} if main else None,
                           config=ConfigFile(files.config(name), partial(save_config, cfg)) if main else None)
    world = init_world()
    try:
        with outputs:
            scores = _train_folds(run, cfg.runtime, folds, world, outputs)
    except BaseException:
        close_world(world, wait=False)  # the other ranks stop at their next collective
        raise
    close_world(world)
    return scores


def _fold_files(files: RunFiles, fold: int) -> set[str]:
    """The names of the files train.py writes in a fold's folder."""
    return {files.last(fold).name, files.best(fold).name, files.log(fold).name}


@contextmanager
def _claim_folds(files: RunFiles, folds: list[int], world: World) -> Iterator[None]:
    """Rank 0, which alone writes, claims the folds' folders for the block; every rank learns whether it could,
    so that all stop together when another run holds one."""
    with ExitStack() as claims:
        failure = None
        if world.is_main:
            try:
                for k in folds:
                    folder = files.fold_dir(k)
                    claims.enter_context(Lock(folder, f"fold {k} ({folder})")())
            except (BusyError, OSError) as err:
                failure = err
        failed = failure is not None
        if world.distributed:
            failed = bool(max_over_world(torch.tensor([float(failed)]), world).item())
        if failure is not None:
            raise failure
        if failed:
            raise BusyError("rank 0 could not claim the folds' folders; its message says why")
        yield


def _say_removed(outputs: StageOutputs, folds: list[int], files: RunFiles) -> None:
    """Name, per fold, the partly written files the protocol cleared when it claimed the folds' folders."""
    for k in folds:
        stale = outputs.removed.get(files.fold_dir(k), [])
        if stale:
            print(f"fold {k}: removed {len(stale)} partly written file(s) left by an interrupted run")


def _check_groups(folds: pd.DataFrame, layout: str, path: Path, world: World) -> None:
    """Refuse a folds.csv that puts one of its own groups in two folds; warn where the data's layout knows a group
    (Carvana's car) that the folds split."""
    problem = split_group_column(folds)
    if problem:
        raise DataError(f"{path}: {problem}, so validation would score images of groups the model trained on; "
                        "run prepare_folds.py again (it keeps each group in one fold)")
    leak = split_known_groups(folds, layout)
    if leak and world.is_main:
        print(f"warning: {path}: {leak}. Use folds.group_by=car (or a folds.from_file keyed by car) for an honest "
              "CV", file=sys.stderr)


def _check_resumes(run: TrainingRun, folds: list[int], items: pd.DataFrame) -> None:
    """What a resume of each of ``folds`` would refuse (its network, split or settings), found before the run's
    configuration is saved or any fold trains: a refused run leaves its files as they were."""
    if not run.train.resume:
        return
    for fold in folds:
        last = run.files.last(fold)
        if not last.is_file():
            continue
        ckpt = read_checkpoint(last, mmap=True)
        with torch.random.fork_rng(devices=[]):  # an initialisation that draws nothing the training sees
            fit_state_dict(new_model(run.model), ckpt, last)
        check_split(ckpt.get("split"), split_fingerprint(items, fold), last, fold)
        check_resume_settings(ckpt.get("config"), run.settings, last)


def _train_folds(run: TrainingRun, runtime_settings: RuntimeConfig, folds: list[int], world: World,
                 outputs: StageOutputs) -> dict[int, float]:
    runtime = Runtime.of(runtime_settings, world.local_rank, MODELS[run.model.name].cpu_channels_last)
    folds_csv = run.files.folds_csv
    split = read_folds(folds_csv, run.n_folds)
    _check_groups(split, run.source.layout, folds_csv, world)
    items = train_items(run.source, split, folds_csv)
    # First and last bytes and the header only: seconds for Carvana.
    check_image_files([Path(p) for p in items["image"]], run.source.settings.max_image_pixels)
    _check_resumes(run, folds, items)
    if world.is_main:
        outputs.save_config()
        ranks = f", {world.size} processes" if world.distributed else ""
        print(f"training folds {folds} on {runtime.describe()}{ranks}")
        _say_removed(outputs, folds, run.files)
    return {k: train_fold(run, k, items, runtime, world) for k in folds}
