"""Where and how a stage runs: CUDA when present (mixed precision, channels_last, pinned memory,
cuDNN autotuning), the CPU otherwise. One object, built once per stage, so every stage makes the same
choices.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Runtime", "seed_everything", "rng_states", "set_rng_states", "use_deterministic_algorithms"]


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool

    @classmethod
    def of(cls, settings: object, device_index: int = 0, cpu_channels_last: bool = False) -> "Runtime":
        """The runtime the ``runtime`` section asks for (amp, amp_dtype, channels_last, deterministic), shared by
        training and prediction; ``cpu_channels_last``: whether the network runs faster channels_last on a CPU
        (the model registry's ``cpu_channels_last``)."""
        return cls.detect(settings.amp, settings.amp_dtype, settings.channels_last, settings.deterministic,
                          device_index, cpu_channels_last)

    @classmethod
    def detect(cls, amp: bool = True, amp_dtype: str = "bfloat16", channels_last: bool = True,
               deterministic: bool = False, device_index: int = 0, cpu_channels_last: bool = False) -> "Runtime":
        """``device_index``: the GPU of this process (torchrun's LOCAL_RANK); one GPU per process. On a CPU:
        float32, channels_last only where asked for and ``cpu_channels_last`` (the network gains from it)."""
        if deterministic:
            use_deterministic_algorithms()
        if not torch.cuda.is_available():
            # CPUs without bfloat16 units run autocast far slower (measured 12x for the Lite0 U-Net), and
            # channels_last only helps depthwise convolutions (bench/cpu_memory_format.py).
            return cls(torch.device("cpu"), None, channels_last and cpu_channels_last)
        # Autotuning picks kernels by timing, which may differ from run to run.
        torch.backends.cudnn.benchmark = not deterministic
        dtype = None
        if amp:
            dtype = torch.bfloat16 if amp_dtype == "bfloat16" and torch.cuda.is_bf16_supported() else torch.float16
        return cls(torch.device("cuda", device_index), dtype, channels_last)

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


def use_deterministic_algorithms() -> None:
    """Same inputs, same bits: needed for a resumed run to match an uninterrupted one on a GPU."""
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before the first CUDA matmul.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_states() -> dict:
    """Every global random generator's state, in types that ``torch.load(weights_only=True)`` accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
