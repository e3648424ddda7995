"""torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), for training and the command line."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout
from torch.utils.data import Sampler

from effnetv2.errors import DistributedEnvError

# The command line's collectives wait for the slowest process's share of the images (a slow disk, a slow decoder).
COMMAND_TIMEOUT = timedelta(hours=6)

# How long joining the process group waits for every process to arrive. torchrun starts them together, but one may
# start late on a loaded machine (importing torch, reading a model): generous. A stray WORLD_SIZE=2 RANK=0
# MASTER_ADDR/MASTER_PORT left in a shell, which nobody else joins, then fails after this wait, not torch's hours.
RENDEZVOUS_TIMEOUT = timedelta(minutes=10)
RENDEZVOUS_TIMEOUT_ENV = "EFFNETV2_RENDEZVOUS_TIMEOUT_S"  # seconds, to wait longer (or less) than that


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


# What torchrun sets beside WORLD_SIZE, and torch's env:// rendezvous needs to join the process group.
RENDEZVOUS_VARIABLES: tuple[str, ...] = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int:
    """How many processes torchrun launched: 1 without it (``WORLD_SIZE`` unset or 1, whatever else is set).

    ``WORLD_SIZE`` above 1 with ``RANK``, ``MASTER_ADDR`` or ``MASTER_PORT`` missing or malformed (a stray variable
    left in the shell, a hand-made launch) → :class:`~effnetv2.errors.DistributedEnvError` in one line, rather than
    torch's rendezvous traceback.
    """
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    world_size = _env_int("WORLD_SIZE", text, low=1)
    if world_size == 1:
        return 1
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name, "").strip()]
    if missing:
        raise DistributedEnvError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            f"launch with torchrun (torchrun --nproc_per_node {world_size} -m effnetv2 ...), or unset WORLD_SIZE to "
            "run in one process"
        )
    rank = _env_int("RANK", os.environ["RANK"], low=0)
    if rank >= world_size:
        raise DistributedEnvError(
            f"RANK={rank} is not below WORLD_SIZE={world_size}: launch with torchrun, or unset WORLD_SIZE to run in "
            "one process"
        )
    _env_int("MASTER_PORT", os.environ["MASTER_PORT"], low=1, high=65535)
    _env_int("LOCAL_RANK", os.environ.get("LOCAL_RANK", "0"), low=0)
    return world_size


def is_first_process() -> bool:
    """Whether this process is torchrun's first (``RANK`` 0) or runs alone, read from the environment: it holds
    before the process group is joined, for the messages every process would print alike (about the inputs they
    all list). A malformed torchrun environment counts as alone: joining the group refuses it in one line."""
    try:
        if launched_world_size() == 1:
            return True
    except DistributedEnvError:
        return True
    return int(os.environ["RANK"]) == 0


def _env_int(name: str, text: str, low: int, high: Optional[int] = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        where = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise DistributedEnvError(
            f"{name}={text!r} is not {where}: launch with torchrun, or unset WORLD_SIZE to run in one process"
        )
    return value


def rendezvous_timeout() -> timedelta:
    """How long joining the process group waits for the other processes: :data:`RENDEZVOUS_TIMEOUT`, or the
    seconds in ``EFFNETV2_RENDEZVOUS_TIMEOUT_S`` (a malformed value → :class:`~effnetv2.errors.DistributedEnvError`)."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV, "").strip()
    if not text:
        return RENDEZVOUS_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise DistributedEnvError(
            f"{RENDEZVOUS_TIMEOUT_ENV}={text!r} is not a number of seconds > 0: unset it to wait "
            f"{RENDEZVOUS_TIMEOUT.total_seconds():g} s"
        )
    return timedelta(seconds=seconds)


def init_distributed(device: torch.device, timeout: Optional[timedelta] = None) -> DistEnv:
    """Join torchrun's process group when launched by it (NCCL on CUDA, gloo otherwise); else a 1-process env.

    ``timeout``: how long a collective (a barrier) may wait for the other processes; torch's default (10 minutes
    for NCCL) suits training steps, not a process that has finished its share and waits for the others'.
    Joining waits :func:`rendezvous_timeout` for the other processes (not ``timeout``: a stray torchrun
    environment nobody joins must not wait hours). An incomplete torchrun environment, a process group that cannot
    be joined (MASTER_PORT taken) or one nobody else joins in time → :class:`~effnetv2.errors.DistributedEnvError`
    (one line).
    """
    world_size = launched_world_size()
    if world_size == 1:
        return DistEnv()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        wait = rendezvous_timeout()
        try:
            store = _rendezvous(wait)
        except (ValueError, RuntimeError) as e:  # torch's rendezvous errors (DistNetworkError is a RuntimeError)
            if isinstance(e, dist.DistError) and "timed out" in str(e).lower():
                raise DistributedEnvError(
                    f"no other process joined within {wait.total_seconds():g} s (WORLD_SIZE={world_size}, "
                    f"rendezvous at {_address()}; {RENDEZVOUS_TIMEOUT_ENV} sets the wait): launch with torchrun, "
                    "or unset WORLD_SIZE to run in one process"
                ) from None
            raise _cannot_join(e) from None
        timeout = timeout or (default_pg_nccl_timeout if backend == "nccl" else None) or default_pg_timeout
        store.set_timeout(timeout)  # from here on the store waits as long as the collectives, as torch's own
        # init_process_group(init_method="env://") has it (with one timeout for both)
        try:
            dist.init_process_group(
                backend,
                store=dist.PrefixStore("default_pg", store),
                rank=int(os.environ["RANK"]),
                world_size=world_size,
                timeout=timeout,
            )
        except (ValueError, RuntimeError) as e:
            raise _cannot_join(e) from None
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _address() -> str:
    return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"


def _cannot_join(error: Exception) -> DistributedEnvError:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return DistributedEnvError(
        f"cannot join the torchrun process group at {_address()} ({first[:200]}): launch with torchrun, or unset "
        "WORLD_SIZE to run in one process"
    )


def _rendezvous(wait: timedelta) -> dist.Store:
    """torch's ``env://`` rendezvous (the TCP store at MASTER_ADDR:MASTER_PORT, or torchrun's agent store),
    waiting at most ``wait`` for every process to arrive."""
    store, _, _ = next(dist.rendezvous("env://", timeout=wait))
    return store


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
