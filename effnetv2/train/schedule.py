"""Cosine LR schedule with linear warmup, stepped once per optimizer step, that a resumed run can extend."""
# The schedule counts *schedule steps* (``total_steps`` of them); an optimizer step advances it by one unless
# :meth:`WarmupCosineLR.set_pace` says otherwise (progressive learning's larger batches: fewer, longer steps per
# epoch, and the schedule still spans the whole run). The position is ``base + (n·schedule_steps) / optimizer_steps``
# from whole numbers, so it is exact at an epoch's end; without a pace it is the optimizer step count itself.

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warmup from ``warmup_factor × lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``.

    Each step's LR is computed in closed form from the step count, so the state (plain numbers) resumes exactly.
    :meth:`extend` lengthens the schedule of a run that is continued with more epochs; :meth:`set_pace` changes
    how far one optimizer step advances it and scales its LRs (a batch size that changes during the run).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_factor: float = 0.01,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.warmup_factor = float(warmup_factor)
        self.min_lr = float(min_lr)
        # (step, [LR of each group at that step]): where an extension re-planned the cosine
        self.restarts: list[tuple[float, list[float]]] = []
        # the pace (set_pace): at optimizer step base_step the schedule stood at base_position, and each pace[1]
        # optimizer steps since advanced it by pace[0] schedule steps; every LR is multiplied by scale
        self.base_position, self.base_step, self.pace, self.scale = 0.0, 0, (1, 1), 1.0
        super().__init__(optimizer, last_epoch)

    @property
    def position(self) -> float:
        """Where the schedule stands, in schedule steps (the optimizer step count unless a pace was set)."""
        schedule_steps, optimizer_steps = self.pace
        return self.base_position + (self.last_epoch - self.base_step) * schedule_steps / optimizer_steps

    def _cosine(self, start_lr: float, step: float, first: float) -> float:
        span = max(1, self.total_steps - first)
        t = min(max(step - first, 0), span)
        return self.min_lr + (start_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / span))

    def lr_at(self, step: float) -> list[float]:
        """The LR of each parameter group at schedule step ``step`` (0 = before the first step), before ``scale``."""
        restart = next((r for r in reversed(self.restarts) if r[0] <= step), None)
        if restart is not None:
            return [self._cosine(lr, step, restart[0]) for lr in restart[1]]
        if step < self.warmup_steps:
            f = self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
            return [base * f for base in self.base_lrs]
        return [self._cosine(base, step, self.warmup_steps) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        return [lr * self.scale for lr in self.lr_at(self.position)]

    def set_pace(self, position: float, schedule_steps: int = 1, optimizer_steps: int = 1, scale: float = 1.0) -> None:
        """From now on the schedule stands at ``position`` (schedule steps), each ``optimizer_steps`` optimizer
        steps advance it by ``schedule_steps`` and every LR is multiplied by ``scale``; the parameter groups take
        the LR at ``position``."""
        if schedule_steps < 1 or optimizer_steps < 1:
            raise ValueError(f"a pace of {schedule_steps} schedule steps per {optimizer_steps} optimizer steps")
        self.base_position, self.base_step = float(position), self.last_epoch
        self.pace, self.scale = (int(schedule_steps), int(optimizer_steps)), float(scale)
        self._set_lrs(self.get_lr())

    def _set_lrs(self, lrs: list[float]) -> None:
        self._last_lr = lrs
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def extend(self, total_steps: int) -> None:
        """Plan the schedule to end at ``total_steps`` (more than now) from the current step.

        Before the end of the warmup the warmup goes on and the cosine then spans the new total, as if the run had
        been started with it. After the warmup the cosine is re-planned from the current step: the LR continues
        from its current value down to ``min_lr`` at the new end (warmup is not repeated, the LR never climbs).
        """
        if total_steps < self.total_steps:
            raise ValueError(f"a schedule of {self.total_steps} steps cannot be shortened to {total_steps}")
        step = self.position
        if step > self.warmup_steps or self.restarts:
            self.restarts.append((step, self.lr_at(step)))
        self.total_steps = int(total_steps)
        self._set_lrs(self.get_lr())


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.01, min_lr: float = 0.0
) -> WarmupCosineLR:
    """Linear warmup from ``warmup_factor × lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``.

    Call ``scheduler.step()`` after every optimizer step (per-step scheduling keeps warmup smooth when an epoch
    is only a handful of steps, as in fine-tuning on small data sets).
    """
    return WarmupCosineLR(optimizer, total_steps, warmup_steps, warmup_factor, min_lr)
