"""Training checkpoints: model (unwrapped, no ``module.`` prefix), optimizer, scaler, scheduler, epoch,
step, best score, RNG states, the log and the config, written atomically. Read back with
``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ternaus.io import atomic_write
from ternaus.models import WeightsError

__all__ = ["save_checkpoint", "read_checkpoint", "unwrap"]


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
                 "transposed": getattr(plain, "transposed", None)},
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with ``weights_only=True``: tensors and plain values, never code."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a bad file gets one clear message whatever torch raised
        raise WeightsError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err)[:200]}); "
                           "move it away, or start the fold over with train.resume=false") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise WeightsError(f"{path} is not a checkpoint written by train.py (no 'model' entry)")
    return ckpt
