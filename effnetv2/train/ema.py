"""Model EMA through ``torch.optim.swa_utils`` (weights and BatchNorm buffers are both averaged)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def create_ema(model: nn.Module, decay: float = 0.9998) -> AveragedModel:
    """An exponential moving average of ``model``; call ``ema.update_parameters(model)`` after each step.

    ``use_buffers=True`` averages BN running statistics too, so ``ema.module`` is ready for evaluation.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
