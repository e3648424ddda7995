"""DistributedDataParallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


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


def init_distributed(device: torch.device) -> DistEnv:
    """Join torchrun's process group when launched by it (NCCL on CUDA, gloo otherwise); else a 1-process env."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


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
