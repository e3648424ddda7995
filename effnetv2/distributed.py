"""torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), for training and the command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# The command line's collectives wait for the slowest process's share of the images (a slow disk, a slow decoder).
COMMAND_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout: Optional[timedelta] = None) -> DistEnv:
    """Join torchrun's process group when launched by it (NCCL on CUDA, gloo otherwise); else a 1-process env.

    ``timeout``: how long a collective (a barrier) may wait for the other processes; torch's default (10 minutes
    for NCCL) suits training steps, not a process that has finished its share and waits for the others'.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """This process's device: under torchrun on CUDA, the GPU of its LOCAL_RANK (made current)."""
    if device.type == "cuda" and env.enabled:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (identity in one process)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order, on rank 0 (``[obj]`` in one process; ``[]`` on the other ranks)."""
    if not env.enabled:
        return [obj]
    gathered: list[Any] = [None] * env.world_size if env.is_main else []
    dist.gather_object(obj, gathered if env.is_main else None, dst=0)
    return gathered


def close_distributed(env: DistEnv) -> None:
    """Leave the process group (torch warns at exit when a process did not)."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity in one process)."""
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BN statistics) to every rank: DDP syncs them only at the start of each forward."""
    if env.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, no padding: evaluation counts each image exactly once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
