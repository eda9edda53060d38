"""Several processes, one per GPU, with the engine PyTorch ships: ``torchrun`` and DistributedDataParallel.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``python train.py`` is a world of one and
never touches ``torch.distributed``. Backend ``nccl`` on GPUs, ``gloo`` on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "world_from_environment", "init_world", "close_world", "sum_over_world", "max_over_world",
           "broadcast_buffers"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_environment() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world() -> World:
    """The process group torchrun asked for, or a world of one."""
    world = world_from_environment()
    if world.distributed and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def close_world(world: World, wait: bool = True) -> None:
    """Leave the process group; ``wait`` first lets every rank finish (not after an error: it would hang)."""
    if world.distributed and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _reduce(values: torch.Tensor, world: World, op: dist.ReduceOp) -> torch.Tensor:
    if world.distributed:
        # gloo reduces CPU tensors, nccl CUDA ones: keep the values where the backend wants them.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        values = values.detach().to(device, copy=True)  # all_reduce works in place: never on the caller's tensor
        dist.all_reduce(values, op=op)
    return values


def sum_over_world(values: torch.Tensor, world: World) -> torch.Tensor:
    return _reduce(values, world, dist.ReduceOp.SUM)


def max_over_world(values: torch.Tensor, world: World) -> torch.Tensor:
    return _reduce(values, world, dist.ReduceOp.MAX)


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP broadcasts them at the start of each
    training forward only, so after an epoch's last step every rank holds its own; the checkpoint holds rank 0's,
    and validation must score that model on every rank."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
