"""Cosine LR schedule with linear warmup, built from torch's own schedulers and stepped once per optimizer step."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.01, min_lr: float = 0.0
) -> LRScheduler:
    """Linear warmup from ``warmup_factor × lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``.

    Call ``scheduler.step()`` after every optimizer step (per-step scheduling keeps warmup smooth when an epoch
    is only a handful of steps, as in fine-tuning on small data sets).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
