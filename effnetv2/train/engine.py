"""One training epoch and one evaluation pass; the pieces (AGC, EMA, AMP, schedule) come in as arguments."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from effnetv2.distributed import DistEnv, all_reduce_sum
from effnetv2.train.agc import clip_model_grads_


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run diverged (too high an LR, fp16 overflow, bad data)."""

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class StepConfig:
    """How each optimizer step runs."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # torch.bfloat16 / torch.float16; None: full precision
    channels_last: bool = False
    agc: float = 0.0  # adaptive clip factor; 0 disables clipping
    batch_transform: Optional[Callable] = None  # MixUp / CutMix
    progress: bool = False  # tqdm bar (main process on a TTY)


def _autocast(cfg: StepConfig):
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype)


def _to_device(images: torch.Tensor, cfg: StepConfig) -> torch.Tensor:
    images = images.to(cfg.device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if cfg.channels_last else images


def _bar(loader: Iterable, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: Optional[LRScheduler],
    cfg: StepConfig,
    env: DistEnv,
    scaler: Optional[torch.amp.GradScaler] = None,
    ema: Optional[torch.optim.swa_utils.AveragedModel] = None,
    clip_target: Optional[nn.Module] = None,
    desc: str = "train",
    on_step: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> dict[str, float]:
    """Train over ``loader`` once; returns the mean loss and top-1 (in %, against the augmented batches' labels,
    the largest share under MixUp/CutMix) over all ranks, and images/s (all ranks together).

    ``clip_target`` is the unwrapped model (its ``get_classifier`` is excluded from AGC); ``model`` may be DDP.
    ``on_step(step, {"loss", "lr", "grad_norm"})`` is called after each optimizer step (this rank's loss; the norm
    of the whole gradient before clipping).
    A non-finite loss on any rank stops every rank before that step changes the weights
    (:class:`NonFiniteLossError`, whose ``step`` counts from 1 within the epoch).
    """
    model.train()
    loss_sum, hits, count, start = 0.0, 0.0, 0, time.perf_counter()
    bar = _bar(loader, cfg.progress, desc)
    for step, (images, targets) in enumerate(bar, 1):
        images, targets = _to_device(images, cfg), targets.to(cfg.device, non_blocking=True)
        if cfg.batch_transform is not None:  # MixUp / CutMix on the device, after the move
            images, targets = cfg.batch_transform(images, targets)
        with _autocast(cfg):
            logits = model(images)
            loss = loss_fn(logits, targets)
        value = loss.item()
        bad = not math.isfinite(value)
        if env.enabled:  # every rank stops at the same step (a lone rank leaving would hang the others)
            bad = all_reduce_sum([float(bad)], env, cfg.device)[0] > 0
        if bad:
            raise NonFiniteLossError(f"the training loss became {value} at step {step}", step)
        unwrapped = clip_target if clip_target is not None else model
        grad_norm = _step(loss, unwrapped, optimizer, scheduler, cfg, scaler, ema, on_step is not None)
        n = images.shape[0]
        loss_sum += value * n
        hits += (logits.detach().argmax(1) == (targets.argmax(1) if targets.ndim == 2 else targets)).sum().item()
        count += n
        if on_step is not None:
            lr = max(g["lr"] for g in optimizer.param_groups)  # as the epoch's 'lr' (layer decay scales the rest)
            on_step(step, {"loss": value, "lr": lr, "grad_norm": grad_norm})
        if bar is not loader:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{value:.4f}",
                lr=f"{optimizer.param_groups[-1]['lr']:.3g}",
                img_s=f"{count * env.world_size / elapsed:.1f}",
            )
    elapsed = time.perf_counter() - start
    loss_sum, hits, count, elapsed_max = all_reduce_sum([loss_sum, hits, count, elapsed], env, cfg.device)
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_top1": 100.0 * hits / max(count, 1),
        "images_per_s": count / max(elapsed_max / env.world_size, 1e-9),
    }


def _step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: Optional[LRScheduler],
    cfg: StepConfig,
    scaler: Optional[torch.amp.GradScaler],
    ema: Optional[torch.optim.swa_utils.AveragedModel],
    measure_norm: bool,
) -> Optional[float]:
    """Backward, AGC, the optimizer and scheduler steps and the EMA update for one batch's ``loss``; the norm of
    the whole gradient before clipping when ``measure_norm``. ``model`` is the unwrapped model (not DDP)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # AGC compares true gradient norms with weight norms
    else:
        loss.backward()
    grad_norm = None
    if measure_norm:
        norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0
    if cfg.agc > 0:
        clip_model_grads_(model, cfg.agc)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update_parameters(model)
    return grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, cfg: StepConfig, env: DistEnv) -> dict[str, float]:
    """Mean cross-entropy loss, top-1 and top-5 accuracy (in %) over the whole validation set, all ranks."""
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0
    for images, targets in _bar(loader, cfg.progress, "val"):
        images, targets = _to_device(images, cfg), targets.to(cfg.device)
        with _autocast(cfg):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]
        top1 += hits[:, :1].sum().item()
        top5 += hits.any(dim=1).sum().item()
        count += targets.shape[0]
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], env, cfg.device)
    count = max(count, 1)
    return {"val_loss": loss_sum / count, "val_top1": 100.0 * top1 / count, "val_top5": 100.0 * top5 / count}
