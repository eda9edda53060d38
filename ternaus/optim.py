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

from ternaus.config import TrainConfig
from ternaus.registry import OPTIMIZERS, SCHEDULES

__all__ = ["adam", "sgd", "rmsprop", "carvana_factor", "constant_factor", "step_factor", "cycle_factor",
           "step_then_cycle_factor", "carvana_lr_factor", "build_optimizer", "build_scheduler"]


# ---------------------------------------------------------------- optimisers


def adam(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)


def sgd(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def rmsprop(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``parameters``. Give it every parameter, a frozen encoder's too: frozen ones get no
    gradient, which Adam and SGD skip, and the state_dict keeps one layout from the first step to the last."""
    return OPTIMIZERS[train.optimizer].load()(parameters, train)


# ---------------------------------------------------------------- schedules: epoch -> factor


def carvana_lr_factor(epoch: int, cycle_len: int = 5, cycle_step: int = 2) -> float:
    """The Carvana recipe: the learning rate halves every ``cycle_step`` epochs within cycles of ``cycle_len``."""
    return 0.5 ** ((epoch % cycle_len) // cycle_step)


def carvana_factor(epoch: int, train: TrainConfig) -> float:
    return carvana_lr_factor(epoch, train.cycle_len, train.cycle_step)


def constant_factor(epoch: int, train: TrainConfig) -> float:
    return 1.0


def step_factor(epoch: int, train: TrainConfig) -> float:
    """``gamma ** (epoch // step_epochs)``: torch's StepLR."""
    return train.gamma ** (epoch // train.step_epochs)


def cycle_factor(epoch: int, train: TrainConfig) -> float:
    """``gamma`` to the number of ``cycle_milestones`` reached in the epoch's place within its ``cycle_len`` cycle."""
    place = epoch % train.cycle_len
    return train.gamma ** sum(place >= milestone for milestone in train.cycle_milestones)


def step_then_cycle_factor(epoch: int, train: TrainConfig) -> float:
    """``step`` before ``cycle_start``, then ``cycle`` with its epochs counted from ``cycle_start``."""
    if epoch < train.cycle_start:
        return step_factor(epoch, train)
    return cycle_factor(epoch - train.cycle_start, train)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    factor = SCHEDULES[train.schedule].load()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor(epoch, train))
