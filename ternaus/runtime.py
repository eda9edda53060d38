"""Where and how a stage runs: CUDA when present (mixed precision, channels_last, pinned memory,
cuDNN autotuning), the CPU otherwise. One object, built once per stage, so every stage makes the same
choices.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Runtime", "seed_everything"]


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool

    @classmethod
    def detect(cls, amp: bool = True, amp_dtype: str = "bfloat16", channels_last: bool = True) -> "Runtime":
        if not torch.cuda.is_available():
            # On CPUs channels_last and autocast were measured slower for UNet11; keep float32 NCHW.
            return cls(torch.device("cpu"), None, False)
        torch.backends.cudnn.benchmark = True
        dtype = None
        if amp:
            dtype = torch.bfloat16 if amp_dtype == "bfloat16" and torch.cuda.is_bf16_supported() else torch.float16
        return cls(torch.device("cuda"), dtype, channels_last)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def needs_grad_scaler(self) -> bool:
        # bfloat16 has float32's range; only float16 gradients underflow without scaling.
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def describe(self) -> str:
        precision = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "float32"
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "CPU"
        return f"{name}, {precision}{', channels_last' if self.channels_last else ''}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
