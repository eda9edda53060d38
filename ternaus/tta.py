"""Test-time augmentation, chosen by ``predict.tta`` (``ternaus.registry.TTAS``).

A TTA turns a batch into the batch the network sees (``inputs``) and the network's probabilities back into
one map per image (``merge``), undoing each view's transform before averaging. Every view goes through the
network in the same forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ternaus.registry import TTAS

__all__ = ["TTA", "HFLIP", "NO_TTA", "tta_inputs", "merge_tta"]


@dataclass(frozen=True)
class TTA:
    """``inputs``: (B, ...) -> (V * B, ...), the V views stacked; ``merge``: (V * B, C, H, W) -> (B, C, H, W)."""

    inputs: Callable[[torch.Tensor], torch.Tensor]
    merge: Callable[[torch.Tensor], torch.Tensor]


def _with_mirror(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images, images.flip(-1)])


def _mean_with_mirror(probs: torch.Tensor) -> torch.Tensor:
    half = probs.shape[0] // 2
    return (probs[:half] + probs[half:].flip(-1)) / 2


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


HFLIP = TTA(_with_mirror, _mean_with_mirror)  # the image and its horizontal mirror
NO_TTA = TTA(_same, _same)


def tta_inputs(images: torch.Tensor, tta: str) -> torch.Tensor:
    """The batch the network sees: the images, then their mirrors when ``tta == "hflip"``."""
    return TTAS[tta].load().inputs(images)


def merge_tta(probs: torch.Tensor, tta: str) -> torch.Tensor:
    """Undo each view's transform and average: (V * B, C, H, W) -> (B, C, H, W)."""
    return TTAS[tta].load().merge(probs)
