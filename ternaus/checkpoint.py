"""Training checkpoints, and resuming a fold from one.

A checkpoint holds the model (unwrapped: no ``module.`` prefix), optimizer, scaler, scheduler, epoch, step,
best score, the random generators' states, the log, the config and each training hook's state (``hooks``, by
the hook's name; ``ternaus/hooks.py``), written atomically; it is read back with ``weights_only=True``.
``FoldState`` is everything a fold's training carries from step to step: ``save_fold_state`` writes it,
``resume_fold_state`` restores it, so that a run killed at any moment and started again ends with the same
weights and log as an uninterrupted one.

A checkpoint also records the split its fold was trained on (``split``: ``ternaus.folds.split_fingerprint``): a
resume on another split is refused, as is a checkpoint whose tensors (weights, BatchNorm statistics, optimiser
state, the hooks') are not all finite, which is never written either. A resume applies every setting changed since
the checkpoint or refuses (``ternaus.resume``).
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ternaus.config import TrainConfig
from ternaus.distributed import World
from ternaus.errors import TrainingError, WeightsError
from ternaus.io import atomic_write
from ternaus.resume import SettingChange, check_resume_settings, optimizer_name, same_split
from ternaus.runtime import Runtime, rng_states, set_rng_states
from ternaus.weights import fit_state_dict, unreadable_weights

__all__ = ["save_checkpoint", "read_checkpoint", "write_torch", "unwrap", "FoldState", "save_fold_state", "resume_fold_state",
           "non_finite_tensors", "check_split", "NON_FINITE_ADVICE"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: Any = None, scaler: Any = None,
                    scheduler: Any = None, epoch: int = 0, best_score: float | None = None,
                    config: dict | None = None, **extra: Any) -> Path:
    plain = unwrap(model)
    state = {
        "model": plain.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "best_score": best_score,
        "config": config,
        "arch": {"name": type(plain).__name__, "num_classes": getattr(plain, "num_classes", None),
                 "transposed": getattr(plain, "transposed", None),
                 **({"encoder": plain.encoder_name} if hasattr(plain, "encoder_name") else {})},
        **extra,
    }
    return atomic_write(path, lambda tmp: write_torch(state, tmp))


def write_torch(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` with its strings interned, through an open file, so that the same state always
    gives the same bytes: pickle writes a string again or refers back to it depending on whether it is the very
    same object (an optimiser state read back from a checkpoint holds copies of the keys a fresh one shares), and a
    path would name the archive's inner folder after the (random) temporary file."""
    try:
        with open(path, "wb") as file:
            torch.save(_interned(obj), file)
    except OSError as err:  # a write through a file object names no file: name it (a full disk, say)
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def _interned(obj: Any) -> Any:
    if isinstance(obj, str):
        return sys.intern(obj)
    if type(obj) in (dict, OrderedDict):
        return type(obj)((_interned(k), _interned(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_interned(item) for item in obj)
    return obj


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict, loaded with ``weights_only=True``: tensors and plain values, never code. ``mmap``: map
    the tensors rather than read them (a look at the checkpoint's records costs no read of its weights)."""
    try:
        ckpt = _load(Path(path), mmap)
    except Exception as err:  # noqa: BLE001 - a bad file gets one clear message whatever torch raised
        raise WeightsError(f"cannot read checkpoint {path}: {unreadable_weights(Path(path), err)}. To start the "
                           "fold over instead, move it away or set train.resume=false") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path} is not a checkpoint written by train.py (no 'model' entry)")
    return ckpt


def _load(path: Path, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file of torch's legacy format cannot be mapped: read it whole
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """The dotted names of the floating-point tensors in ``tree`` (nested dicts, lists and tuples, as a state dict
    holds them) with a NaN or an infinite value; one host synchronisation per device when all are finite."""
    tensors = dict(_float_tensors(tree, prefix))
    if not tensors:
        return []
    flags = {name: torch.isfinite(t).all() for name, t in tensors.items()}
    devices = {flag.device for flag in flags.values()}
    if all(bool(torch.stack([f for f in flags.values() if f.device == d]).all()) for d in devices):
        return []
    return [name for name, flag in flags.items() if not bool(flag)]


def _float_tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix.rstrip("."), tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _float_tensors(value, f"{prefix}{key}.")
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from _float_tensors(value, f"{prefix}{index}.")


# ---------------------------------------------------------------- a fold's training state


@dataclass
class FoldState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    epoch: int = 0  # epochs completed
    step: int = 0  # batches done in epoch ``epoch + 1``: non-zero only in a mid-epoch checkpoint
    loss_sum: torch.Tensor | None = None  # their summed loss, on the device
    best_score: float = -math.inf
    log: list[dict] = field(default_factory=list)
    world: World = World()
    # The fold's training hooks (ternaus.hooks.Hook): each one's state_dict() is saved under its name.
    hooks: list = field(default_factory=list)
    # The split the fold trains on (ternaus.folds.split_fingerprint), recorded in every checkpoint.
    split: dict | None = None


# A log row's wall-clock seconds: kept in last.pt (a resume rewrites log.csv from it), left out of best.pt.
WALL_CLOCK_COLUMNS = ("time_s",)


def save_fold_state(state: FoldState, path: Path, config: dict, fold: int,
                    partial_loss: torch.Tensor | None = None, model: nn.Module | None = None,
                    wall_clock: bool = True) -> None:
    """Rank 0 writes the state to ``path``. ``config``: the run's resolved settings as a plain dict
    (``config_to_dict``), which the checkpoint records; ``fold``: the fold trained; ``partial_loss``: the loss
    summed over every rank so far in the epoch; ``model``: the weights to save as the checkpoint's model in place
    of ``state.model`` (best.pt: the model validated); ``wall_clock``: keep the log's seconds (false for best.pt,
    which then holds only what training computed: the same run, killed and resumed or not, gives the same bytes)."""
    if not state.world.is_main:
        return
    model = model if model is not None else state.model
    hooks = {hook.name: hook.state_dict() for hook in state.hooks}
    _refuse_non_finite({"model": unwrap(model).state_dict(), "optimizer": state.optimizer.state_dict(),
                        "hooks": hooks, "loss_sum": partial_loss}, path, fold, state)
    save_checkpoint(path, model=model, optimizer=state.optimizer,
                    scaler=state.scaler, scheduler=state.scheduler, epoch=state.epoch, best_score=state.best_score,
                    config=config, fold=fold, step=state.step,
                    loss_sum=partial_loss.detach().cpu() if partial_loss is not None else None,
                    log=state.log if wall_clock else [_without_wall_clock(row) for row in state.log],
                    rng=rng_states(), world_size=state.world.size, hooks=hooks, split=state.split)


# What the messages of a non-finite loss, score or state advise: the resume then runs at the lower rate.
NON_FINITE_ADVICE = ("Training stopped; the last good checkpoint is kept. Lower train.lr, or with float16 try "
                     "runtime.amp_dtype=bfloat16, then run the same command to resume (it goes on from that "
                     "checkpoint at the new rate; should it stop again, the rate before was already too high when "
                     "the checkpoint was taken: start the fold over with train.resume=false)")


def _refuse_non_finite(tensors: dict, path: Path, fold: int, state: FoldState) -> None:
    """A state with a NaN or an infinity (in the weights, BatchNorm's running statistics, the optimiser's moments,
    a hook's average) is never written as a checkpoint: a resume from it would replay the failure."""
    bad = non_finite_tensors(tensors)
    if bad:
        where = f"epoch {state.epoch + 1}, step {state.step}" if state.step else f"the end of epoch {state.epoch}"
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingError(f"fold {fold} at {where}: {', '.join(bad[:3])}{more} hold NaN or infinite values, so "
                            f"{path.name} is not written. {NON_FINITE_ADVICE}")


def _without_wall_clock(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in WALL_CLOCK_COLUMNS}


def _check_mid_epoch_resume(ckpt: dict, train: TrainConfig, path: Path, world_size: int) -> None:
    """A checkpoint taken inside an epoch continues that epoch's batches: they must be cut the same way."""
    saved = (ckpt.get("config") or {}).get("train", {})
    for key, before_the_setting in (("batch_size", None), ("seed", None), ("accumulate", 1)):
        value = saved.get(key, before_the_setting)
        if value != getattr(train, key):
            raise TrainingError(f"{path} stopped inside epoch {ckpt['epoch'] + 1} with train.{key}={value}; "
                                f"resume with train.{key}={value}, or start over with train.resume=false")
    if ckpt.get("world_size", 1) != world_size:
        raise TrainingError(f"{path} stopped inside epoch {ckpt['epoch'] + 1} with {ckpt.get('world_size', 1)} "
                            f"process(es); resume with as many (torchrun --nproc_per_node), or start over with "
                            "train.resume=false")


def check_split(recorded: dict | None, now: dict, path: Path, fold: int) -> None:
    """Refuse weights trained on another split of the images than fold ``fold`` of folds.csv now gives (``now``,
    ``ternaus.folds.split_fingerprint``): a resume on it, or an out-of-fold score of it, would hold out images the
    weights trained on. ``recorded``: the checkpoint's ``split``; a checkpoint that records none passes."""
    if same_split(recorded, now) is False:
        raise TrainingError(
            f"{path} was trained on another split than fold {fold} of folds.csv gives now ({recorded.get('n_train')} "
            f"training and {recorded.get('n_held_out')} held-out images then, {now['n_train']} and "
            f"{now['n_held_out']} now, not the same ones): folds.csv was made again, or the data's ids changed, after "
            "this fold was trained. Put back the folds.csv it was trained on (prepare_folds.py with the run's "
            "settings), or train the fold anew (train.resume=false, or a new run in another output_dir)")


def resume_fold_state(state: FoldState, path: Path, train: TrainConfig, runtime: Runtime,
                      settings: dict | None = None, fold: int = 0) -> list[SettingChange]:
    """Load ``path`` into ``state``: weights, optimizer, schedule, position in the epoch, log, generators, and
    the state of each of ``state.hooks`` the checkpoint holds. ``train``: the ``train`` section now (a checkpoint
    taken inside an epoch needs its batch_size, seed and accumulate); ``runtime``: the device the epoch's partial
    loss goes to; ``settings``: the resolved configuration now (a plain dict), compared with the checkpoint's.

    Returns the settings changed since the checkpoint, which apply from the resumed step: the learning rate and
    the optimiser's other hyperparameters (and, for another optimiser, a fresh state of it), the schedule, and
    whatever training reads from the configuration as it goes. Raises TrainingError for a change a resume cannot
    honour (``ternaus.resume.REFUSED``), a split other than ``state.split``, or a checkpoint with non-finite
    tensors."""
    ckpt = read_checkpoint(path)
    fit_state_dict(unwrap(state.model), ckpt, path)
    if state.split is not None:
        check_split(ckpt.get("split"), state.split, path, fold)
    bad = non_finite_tensors({"model": ckpt["model"], "optimizer": ckpt.get("optimizer"), "hooks": ckpt.get("hooks")})
    if bad:
        raise TrainingError(f"{path} holds NaN or infinite values ({', '.join(bad[:3])}): it is no good checkpoint "
                            "to resume from (written before checkpoints were checked). Move it away to start the fold "
                            "over, or set train.resume=false")
    changes = check_resume_settings(ckpt.get("config"), settings, path) if settings is not None else []
    if ckpt.get("step"):
        _check_mid_epoch_resume(ckpt, train, path, state.world.size)
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in state.optimizer.param_groups]
    if settings is None or optimizer_name(ckpt.get("config")) in (None, optimizer_name(settings)):
        state.optimizer.load_state_dict(ckpt["optimizer"])
    # else another optimiser: its fresh state (another's moments are no state of it)
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if settings is not None:
        _apply_hyperparameters(state, fresh)
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.epoch, state.step = ckpt["epoch"], ckpt.get("step", 0)
    if ckpt.get("loss_sum") is not None:  # summed over the ranks that wrote it: rank 0 carries it on
        partial = ckpt["loss_sum"].to(runtime.device)
        state.loss_sum = partial if state.world.is_main else torch.zeros_like(partial)
    state.best_score = ckpt["best_score"] if ckpt["best_score"] is not None else -math.inf
    state.log = list(ckpt.get("log") or [])
    if ckpt.get("rng"):
        set_rng_states(ckpt["rng"])
    saved = ckpt.get("hooks") or {}
    # A hook the checkpoint has no state for (one just switched on) starts afresh; a saved state whose hook is
    # off now is left unused.
    for hook in state.hooks:
        if hook.name in saved:
            hook.load_state_dict(saved[hook.name])
    return changes


def _apply_hyperparameters(state: FoldState, fresh: list[dict]) -> None:
    """The optimiser's hyperparameters as the configuration sets them now (``fresh``: each group's, from the
    optimiser built for it), not as the checkpoint saved them, and the schedule's base rate with them: the rate
    from here on is the new ``train.lr`` times the schedule's factor at the resumed epoch."""
    for group, settings in zip(state.optimizer.param_groups, fresh):
        group.update(settings)
    scheduler = state.scheduler
    scheduler.base_lrs = [group["initial_lr"] for group in state.optimizer.param_groups]
    for group, base, factor in zip(state.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in state.optimizer.param_groups]
