"""Training: one UNet11 per fold, Adam with the Carvana cyclic schedule, validation every epoch.

Each fold writes ``fold_K/last.pt`` (every epoch), ``fold_K/best.pt`` (best validation Dice) and
``fold_K/log.csv``. Randomness is re-seeded from (seed, fold, epoch) at the start of every epoch, so a
run resumed from ``last.pt`` shuffles and augments exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from ternaus.augment import build_train_transform
from ternaus.checkpoint import read_checkpoint, save_checkpoint
from ternaus.config import Config, config_to_dict, save_config
from ternaus.data import DataError, Geometry, SegmentationDataset, normalise_on_device, train_items
from ternaus.io import atomic_write
from ternaus.losses import SegmentationLoss
from ternaus.metrics import dice_per_image, jaccard_per_image
from ternaus.models import build_model
from ternaus.runtime import Runtime, seed_everything

__all__ = ["train", "train_fold", "carvana_lr_factor", "read_folds", "fold_dir", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the message says where it stopped."""


def carvana_lr_factor(epoch: int, cycle_len: int = 5, cycle_step: int = 2) -> float:
    """The Carvana recipe: the learning rate halves every ``cycle_step`` epochs within cycles of ``cycle_len``."""
    return 0.5 ** ((epoch % cycle_len) // cycle_step)


def fold_dir(cfg: Config, fold: int) -> Path:
    return Path(cfg.output_dir) / f"fold_{fold}"


def read_folds(cfg: Config) -> pd.DataFrame:
    path = Path(cfg.output_dir) / "folds.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run prepare_folds.py with the same config first")
    folds = pd.read_csv(path, dtype={"id": str, "car_id": str})
    found = sorted(folds["fold"].unique().tolist())
    if found != list(range(cfg.folds.n_folds)):
        raise DataError(f"{path} holds folds {found} but folds.n_folds={cfg.folds.n_folds}; "
                        "run prepare_folds.py again with this config")
    return folds


def folds_to_train(cfg: Config) -> list[int]:
    return list(cfg.train.folds) if cfg.train.folds is not None else list(range(cfg.folds.n_folds))


def geometry_of(cfg: Config) -> Geometry:
    return Geometry(tuple(cfg.data.input_size) if cfg.data.input_size else None)


# ---------------------------------------------------------------- data loaders


def _epoch_seed(cfg: Config, fold: int, epoch: int) -> int:
    return cfg.train.seed * 1_000_003 + fold * 10_007 + epoch


def build_loader(dataset: SegmentationDataset, batch_size: int, runtime: Runtime, num_workers: int,
                 sampler: RandomSampler | None = None, generator: torch.Generator | None = None,
                 drop_last: bool = False) -> DataLoader:
    """In order unless a sampler is given; pinned host memory when the batches go to a GPU."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      pin_memory=runtime.is_cuda, drop_last=drop_last, generator=generator)


def make_loaders(cfg: Config, items: pd.DataFrame, fold: int, runtime: Runtime
                 ) -> tuple[DataLoader, DataLoader, torch.Generator]:
    geometry = geometry_of(cfg)
    train_rows = items[items["fold"] != fold].to_dict("records")
    val_rows = items[items["fold"] == fold].to_dict("records")
    train_set = SegmentationDataset(train_rows, geometry, True, build_train_transform(cfg.train.augment))
    val_set = SegmentationDataset(val_rows, geometry, True)
    generator = torch.Generator()
    # Drop a last batch of one: a single image gives a noisy Adam step at full resolution.
    drop_last = len(train_rows) % cfg.train.batch_size == 1 and len(train_rows) > 1
    train_loader = build_loader(train_set, cfg.train.batch_size, runtime, cfg.data.num_workers,
                           RandomSampler(train_set, generator=generator), generator, drop_last)
    val_loader = build_loader(val_set, cfg.train.val_batch_size, runtime, cfg.data.num_workers)
    return train_loader, val_loader, generator


# ---------------------------------------------------------------- one epoch


@dataclass
class FoldState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: SegmentationLoss
    epoch: int = 0
    best_score: float = -math.inf


def train_one_epoch(state: FoldState, loader: DataLoader, runtime: Runtime, log_every: int, desc: str) -> float:
    state.model.train()
    total = torch.zeros((), device=runtime.device)
    steps = 0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for batch in bar:
        images = normalise_on_device(runtime.to_device(batch["image"]))
        masks = batch["mask"].to(runtime.device, non_blocking=True).float()
        with runtime.autocast():
            logits = state.model(images)
        loss = state.loss_fn(logits, masks)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        total += loss.detach()
        steps += 1
        if steps % log_every == 0:  # the only host synchronisation inside the epoch
            bar.set_postfix(loss=f"{total.item() / steps:.4f}")
    bar.close()
    mean = total.item() / max(steps, 1)
    if not math.isfinite(mean):
        raise TrainingError(f"{desc}: the training loss became {mean}; the last good checkpoint is kept. "
                            "Lower train.lr or try train.amp_dtype=bfloat16")
    return mean


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, runtime: Runtime, loss_fn: SegmentationLoss,
             geometry: Geometry, threshold: float) -> dict[str, float]:
    """Mean per-image Dice and Jaccard at ``threshold``, on each image's own area (padding cropped)."""
    model.eval()
    dice, jaccard, losses = [], [], []
    for batch in loader:
        images = normalise_on_device(runtime.to_device(batch["image"]))
        masks = batch["mask"].to(runtime.device).float()
        with runtime.autocast():
            logits = model(images)
        losses.append(loss_fn(logits, masks).item())
        for logit, mask, size in zip(logits.float(), masks, batch["size"].tolist()):
            pred = torch.sigmoid(geometry.restore(logit, tuple(size))) >= threshold
            target = geometry.restore(mask, tuple(size)) > 0.5
            dice.append(dice_per_image(pred[None], target[None]).item())
            jaccard.append(jaccard_per_image(pred[None], target[None]).item())
    return {"val_loss": sum(losses) / len(losses), "val_dice": sum(dice) / len(dice),
            "val_jaccard": sum(jaccard) / len(jaccard)}


# ---------------------------------------------------------------- a fold


def _new_state(cfg: Config, runtime: Runtime) -> FoldState:
    model = runtime.prepare_model(build_model(cfg.model))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.schedule == "carvana":
        factor = lambda epoch: carvana_lr_factor(epoch, cfg.train.cycle_len, cfg.train.cycle_step)  # noqa: E731
    else:
        factor = lambda epoch: 1.0  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    return FoldState(model, optimizer, scheduler, scaler, SegmentationLoss(cfg.train.loss.name, cfg.train.loss.weight))


def _resume(state: FoldState, path: Path) -> None:
    ckpt = read_checkpoint(path)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.epoch = ckpt["epoch"]
    state.best_score = ckpt["best_score"] if ckpt["best_score"] is not None else -math.inf


def _save(state: FoldState, path: Path, cfg: Config, fold: int) -> None:
    save_checkpoint(path, model=state.model, optimizer=state.optimizer, scaler=state.scaler,
                    scheduler=state.scheduler, epoch=state.epoch, best_score=state.best_score,
                    config=config_to_dict(cfg), fold=fold)


def _write_log(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


def _read_log(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file() or upto_epoch == 0:
        return []
    table = pd.read_csv(path)
    return table[table["epoch"] <= upto_epoch].to_dict("records")


def train_fold(cfg: Config, fold: int, items: pd.DataFrame, runtime: Runtime) -> float:
    """Train fold ``fold`` to ``train.epochs``, resuming from ``last.pt`` when present; returns the best Dice."""
    out = fold_dir(cfg, fold)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(_epoch_seed(cfg, fold, 0))
    state = _new_state(cfg, runtime)
    if cfg.train.resume and (out / "last.pt").is_file():
        _resume(state, out / "last.pt")
        print(f"fold {fold}: resuming from {out / 'last.pt'} after epoch {state.epoch}")
    log = _read_log(out / "log.csv", state.epoch)
    train_loader, val_loader, generator = make_loaders(cfg, items, fold, runtime)
    geometry = geometry_of(cfg)
    while state.epoch < cfg.train.epochs:
        seed_everything(_epoch_seed(cfg, fold, state.epoch + 1))
        generator.manual_seed(_epoch_seed(cfg, fold, state.epoch + 1))
        started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        desc = f"fold {fold} epoch {state.epoch + 1}/{cfg.train.epochs}"
        train_loss = train_one_epoch(state, train_loader, runtime, cfg.train.log_every, desc)
        scores = validate(state.model, val_loader, runtime, state.loss_fn, geometry, cfg.train.threshold)
        state.scheduler.step()
        state.epoch += 1
        improved = scores["val_dice"] > state.best_score
        state.best_score = max(state.best_score, scores["val_dice"])
        log.append({"epoch": state.epoch, "lr": lr, "train_loss": train_loss, **scores,
                    "time_s": round(time.perf_counter() - started, 2)})
        if improved:
            _save(state, out / "best.pt", cfg, fold)
        _save(state, out / "last.pt", cfg, fold)
        _write_log(out / "log.csv", log)
        print(f"{desc}: loss {train_loss:.4f}  val dice {scores['val_dice']:.4f}  "
              f"jaccard {scores['val_jaccard']:.4f}{'  *best' if improved else ''}")
    return state.best_score


def train(cfg: Config, fold: int | None = None) -> dict[int, float]:
    """Train ``fold``, or every fold of ``train.folds`` (all when null); returns the best Dice per fold."""
    runtime = Runtime.detect(cfg.train.amp, cfg.train.amp_dtype, cfg.train.channels_last)
    items = train_items(cfg, read_folds(cfg))
    save_config(cfg, Path(cfg.output_dir) / "configs" / "train.yaml")
    folds = [fold] if fold is not None else folds_to_train(cfg)
    print(f"training folds {folds} on {runtime.describe()}")
    return {k: train_fold(cfg, k, items, runtime) for k in folds}
