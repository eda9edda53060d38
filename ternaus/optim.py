"""Optimisers and learning-rate schedules, chosen by ``train.optimizer`` and ``train.schedule``
(``ternaus.registry.OPTIMIZERS``, ``SCHEDULES``).

A schedule is a pure function of the epoch (counted from 0) and the train settings giving the factor the
learning rate is multiplied by; training wraps it in ``torch.optim.lr_scheduler.LambdaLR``, whose state is the
epoch count alone, so a resumed run follows the same schedule. The 1st-place Carvana families used:

- TernausNet (UNet11): Adam, ``carvana``: halved every 2 epochs within 5-epoch cycles.
- the scratch U-Net: SGD with momentum 0.9 and weight decay 5e-4, ``step``: halved every 100 epochs.
- vgg11v1: Adam, ``cycle``: 20-epoch cycles of lr for 10 epochs, lr/10 for 5, lr/100 for 5.
- LinkNet34: Adam, ``step_then_cycle``: x0.1 every 12 epochs up to epoch 23, then 5-epoch cycles
  (lr, lr, lr/10, lr/10, lr/100).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ternaus.registry import (OPTIMIZERS, SCHEDULES, AdamSettings, CarvanaSchedule, CycleSchedule, MomentumSettings,
                              StepSchedule, StepThenCycleSchedule)

__all__ = ["adam", "sgd", "rmsprop", "carvana_factor", "constant_factor", "step_factor", "cycle_factor",
           "step_then_cycle_factor", "carvana_lr_factor", "build_optimizer", "build_scheduler"]


# ---------------------------------------------------------------- optimisers


def adam(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
         settings: AdamSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def sgd(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
        settings: MomentumSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=lr, momentum=settings.momentum, weight_decay=weight_decay)


def rmsprop(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
            settings: MomentumSettings) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(parameters, lr=lr, momentum=settings.momentum, weight_decay=weight_decay)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], settings: object, lr: float,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser ``settings`` names (``train.optimizer``) over ``parameters``. Give it every parameter, a frozen
    encoder's too: frozen ones get no gradient, which Adam and SGD skip, and the state_dict keeps one layout from
    the first step to the last."""
    return OPTIMIZERS[settings.name].load()(parameters, lr, weight_decay, settings)


# ---------------------------------------------------------------- schedules: epoch -> factor


def carvana_lr_factor(epoch: int, cycle_len: int = 5, cycle_step: int = 2) -> float:
    """The Carvana recipe: the learning rate halves every ``cycle_step`` epochs within cycles of ``cycle_len``."""
    return 0.5 ** ((epoch % cycle_len) // cycle_step)


def carvana_factor(epoch: int, settings: CarvanaSchedule) -> float:
    return carvana_lr_factor(epoch, settings.cycle_len, settings.cycle_step)


def constant_factor(epoch: int, settings: object) -> float:
    return 1.0


def step_factor(epoch: int, settings: StepSchedule | StepThenCycleSchedule) -> float:
    """``gamma ** (epoch // step_epochs)``: torch's StepLR."""
    return settings.gamma ** (epoch // settings.step_epochs)


def cycle_factor(epoch: int, settings: CycleSchedule | StepThenCycleSchedule) -> float:
    """``gamma`` to the number of ``milestones`` reached in the epoch's place within its ``cycle_len`` cycle."""
    place = epoch % settings.cycle_len
    return settings.gamma ** sum(place >= milestone for milestone in settings.milestones)


def step_then_cycle_factor(epoch: int, settings: StepThenCycleSchedule) -> float:
    """``step`` before ``cycle_start``, then ``cycle`` with its epochs counted from ``cycle_start``."""
    if epoch < settings.cycle_start:
        return step_factor(epoch, settings)
    return cycle_factor(epoch - settings.cycle_start, settings)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: object) -> torch.optim.lr_scheduler.LambdaLR:
    """``torch.optim.lr_scheduler.LambdaLR`` of the schedule ``settings`` names (``train.schedule``)."""
    factor = SCHEDULES[settings.name].load()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor(epoch, settings))
