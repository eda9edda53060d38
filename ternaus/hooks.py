"""Training hooks: what the training loop calls at named moments, so that a feature around training (a moving
average of the weights, TensorBoard, later a profiler) is one class here and one line in ``HOOKS``.

``training.train_fold`` builds the fold's hooks from the settings at the fold's start (``build_hooks``) and
calls each of them, in the order of ``HOOKS``:

- ``on_fit_start(state)``: the fold's state is ready, fresh or resumed from ``last.pt`` (the model wrapped);
- ``on_step_end(state, loss)``: after each optimiser step (with ``train.accumulate`` N, once every N batches;
  ``loss``: the last batch's loss, a tensor left on the device), before the step's checkpoint;
- ``on_validation_end(state, scores)``: after each epoch's validation (``scores``: ``validate``'s dict);
- ``on_epoch_end(state, row)``: with the epoch's log row, ``state.epoch`` counting it, before the epoch's
  checkpoints are written;
- ``on_fit_end(state)``: when the fold ends, also by an error.

``evaluated(model)`` gives the model validation scores and ``best.pt`` holds (the EMA's average, or the plain
model). ``state_dict()`` / ``load_state_dict(saved)``: the hook's state, saved in every checkpoint under
``hooks[name]``; when resuming, ``load_state_dict`` comes before ``on_fit_start``. A resumed run must end bit
for bit as an uninterrupted one: a hook draws no random numbers the training would see and keeps no
wall-clock time in its state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ternaus.checkpoint import FoldState, unwrap
from ternaus.config import ModelConfig, TrainConfig
from ternaus.data.dataset import SegmentationDataset, normalise_on_device
from ternaus.data.geometry import Geometry
from ternaus.distributed import World
from ternaus.losses import probabilities
from ternaus.run_files import RunFiles
from ternaus.runtime import Runtime, rng_states, set_rng_states

__all__ = ["Hook", "HookContext", "EmaHook", "TensorBoardHook", "HOOKS", "build_hooks", "evaluated_model"]


@dataclass
class HookContext:
    """What a hook may be built from at the fold's start: the ``train`` and ``model`` sections, the run's files,
    the geometry of the network's input, the fold, this process's device and world, and this rank's validation
    images."""

    train: TrainConfig
    model: ModelConfig
    files: RunFiles
    geometry: Geometry
    fold: int
    runtime: Runtime
    world: World
    val_set: SegmentationDataset | None = None  # this rank's validation images


class Hook:
    """A hook that does nothing at every moment; subclasses override the moments they need."""

    name = "hook"  # the key of its state in a checkpoint's ``hooks``

    @classmethod
    def build(cls, ctx: HookContext) -> Hook | None:
        """The hook the settings ask for, or None when they leave it off (on this rank)."""
        return None

    def on_fit_start(self, state: FoldState) -> None:
        pass

    def on_step_end(self, state: FoldState, loss: torch.Tensor) -> None:
        pass

    def on_validation_end(self, state: FoldState, scores: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, state: FoldState, row: dict) -> None:
        pass

    def on_fit_end(self, state: FoldState) -> None:
        pass

    def evaluated(self, model: nn.Module) -> nn.Module:
        return model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        pass


def evaluated_model(state: FoldState) -> nn.Module:
    """The plain model validation scores and ``best.pt`` holds: ``state.model`` unwrapped, as the hooks see it."""
    model = unwrap(state.model)
    for hook in state.hooks:
        model = hook.evaluated(model)
    return model


# ---------------------------------------------------------------- an exponential moving average of the weights


class EmaHook(Hook):
    """``train.ema``: ema = decay * ema + (1 - decay) * weights after every optimiser step, the BatchNorm
    statistics averaged alike; the first step copies the weights (``AveragedModel``'s rule). Validation scores
    the average and ``best.pt`` holds it; ``last.pt`` holds the raw model, to train on, and the average.

    Under DDP every rank updates its average from its own (identical) weights; rank 0's BatchNorm statistics are
    broadcast before validation, as the raw model's are."""

    name = "ema"

    def __init__(self, decay: float):
        self.decay = decay
        self.average: AveragedModel | None = None
        self._saved: dict[str, Any] | None = None  # loaded before on_fit_start made the average

    @classmethod
    def build(cls, ctx: HookContext) -> EmaHook | None:
        ema = ctx.train.ema
        return cls(ema.decay) if ema.enabled else None

    def on_fit_start(self, state: FoldState) -> None:
        self.average = AveragedModel(unwrap(state.model), multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                     use_buffers=True)
        if self._saved is not None:
            self.average.load_state_dict(self._saved)
            self._saved = None

    def on_step_end(self, state: FoldState, loss: torch.Tensor) -> None:
        self.average.update_parameters(unwrap(state.model))

    def evaluated(self, model: nn.Module) -> nn.Module:
        return self.average.module

    def state_dict(self) -> dict[str, Any]:
        """``n_averaged`` (the steps averaged) and ``module.<key>``: the average's weights and buffers."""
        return self.average.state_dict() if self.average is not None else dict(self._saved or {})

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.average is None:
            self._saved = saved
        else:
            self.average.load_state_dict(saved)


# ---------------------------------------------------------------- TensorBoard


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """Whatever runs inside leaves every global random generator as it found it: TensorBoard's writer is not
    ours to audit, and a number drawn there would change the training's next augmentation."""
    saved = rng_states()
    try:
        yield
    finally:
        set_rng_states(saved)


# The log row's keys that are not validation scores, and their TensorBoard tags; a score val_X is "val/X".
EPOCH_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "epoch": "train/epoch", "time_s": "train/epoch_time_s"}


class TensorBoardHook(Hook):
    """``train.tensorboard``: events under ``{output_dir}/tensorboard/fold_K`` (rank 0 only), their step the
    optimiser steps done in the fold: every epoch's log row (training loss, learning rate, each validation
    score, its time), the last batch's training loss every ``train.log_every`` steps, and the first
    ``PREVIEW_IMAGES`` validation images, each as one picture: the image, its true mask and the predicted
    probability (the evaluated model's; the classes' maximum), side by side at the network's input size.

    A resumed run appends to the same folder in a new event file, and hides the events of the steps after its
    checkpoint that the stopped run had written (``purge_step``): they are written again."""

    name = "tensorboard"
    PREVIEW_IMAGES = 3

    def __init__(self, folder: Path, log_every: int, runtime: Runtime, geometry: Geometry, activation: str,
                 val_set: SegmentationDataset | None):
        self.folder, self.log_every, self.runtime = folder, log_every, runtime
        self.geometry, self.activation, self.val_set = geometry, activation, val_set
        self.step = 0  # optimiser steps done in the fold: the events' step
        self.purge_step = 1
        self.writer = None
        self.preview: list[dict] = []

    @classmethod
    def build(cls, ctx: HookContext) -> TensorBoardHook | None:
        if not (ctx.train.tensorboard and ctx.world.is_main):
            return None
        return cls(ctx.files.tensorboard(ctx.fold), ctx.train.log_every, ctx.runtime, ctx.geometry,
                   ctx.model.activation, ctx.val_set)

    def on_fit_start(self, state: FoldState) -> None:
        with _random_state_kept():
            count = min(self.PREVIEW_IMAGES, len(self.val_set)) if self.val_set is not None else 0
            self.preview = [self.val_set[k] for k in range(count)]
        self.purge_step = self.step + 1  # events at the checkpoint's step were written before it; later ones replay

    def _events(self) -> Any:
        """The event writer, made at the first event: a run that stops before writing one leaves no file."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # here: it loads TensorBoard, no other stage does

            with _random_state_kept():
                self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
        return self.writer

    def on_step_end(self, state: FoldState, loss: torch.Tensor) -> None:
        self.step += 1
        if self.step % self.log_every == 0:  # a host synchronisation, as the progress bar's
            self._events().add_scalar("train/batch_loss", loss.item(), self.step)

    @torch.no_grad()
    def on_validation_end(self, state: FoldState, scores: dict[str, float]) -> None:
        model = evaluated_model(state)
        training = model.training
        model.eval()  # a forward in training mode would move BatchNorm's statistics, which the checkpoint holds
        with _random_state_kept():
            for item in self.preview:
                self._events().add_image(f"validation/{item['id']}", self._panel(model, item), self.step)
        model.train(training)

    def _panel(self, model: nn.Module, item: dict) -> torch.Tensor:
        """(3, h, 3 w) floats in [0, 1]: the image, its true mask and the predicted probability."""
        image = item["image"]
        with self.runtime.autocast():
            logits = model(normalise_on_device(self.runtime.to_device(image[None])))
        predicted = probabilities(logits, self.activation)[0].amax(0).cpu()
        mask = item["mask"]
        if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):  # resize mode: the original mask
            mask = torch.from_numpy(self.geometry.masks_to_input(mask.numpy()))
        truth = mask.float().amax(0) > 0.5
        gray = [plane.float().expand(3, -1, -1) for plane in (truth, predicted)]
        return torch.cat([image.float() / 255.0, *gray], dim=2).clamp(0, 1)

    def on_epoch_end(self, state: FoldState, row: dict) -> None:
        with _random_state_kept():
            for key, value in row.items():
                tag = "val/" + key.removeprefix("val_") if key.startswith("val_") else EPOCH_TAGS.get(key)
                if tag is not None:
                    self._events().add_scalar(tag, value, self.step)
            self._events().flush()  # before the epoch's checkpoint: a kill after it must not lose the epoch

    def on_fit_end(self, state: FoldState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.step = int(saved["step"])


# Every hook, in the order the loop calls them; a new one is a class above and one line here.
HOOKS: list[type[Hook]] = [EmaHook, TensorBoardHook]


def build_hooks(ctx: HookContext) -> list[Hook]:
    """The hooks the settings switch on, for this rank."""
    return [hook for cls in HOOKS if (hook := cls.build(ctx)) is not None]
