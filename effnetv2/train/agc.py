"""Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization"), unit-wise: each output unit's gradient is clipped relative to that unit's weight norm."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

import torch
from torch import Tensor, nn


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit: over all dims but the first for ≥2-D tensors, over the whole tensor for 1-D."""
    if x.ndim <= 1:
        return x.norm(2.0)
    return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Union[Tensor, Iterable[Tensor]], clip_factor: float = 0.01, eps: float = 1e-3
) -> None:
    """Clip gradients in place: ``g ← g · min(1, λ · max(‖w‖, ε) / ‖g‖)`` per unit, ``λ = clip_factor``."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    for p in parameters:
        if p.grad is None:
            continue
        grad = p.grad
        max_norm = unitwise_norm(p).clamp_(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(grad)
        # where the gradient is small the ratio is > 1 and the gradient stays as it is
        scale = (max_norm / grad_norm.clamp(min=1e-6)).clamp(max=1.0)
        grad.mul_(scale)


def clip_model_grads_(model: nn.Module, clip_factor: float = 0.01, eps: float = 1e-3, skip_classifier: bool = True):
    """AGC over a model's parameters; the final classifier is excluded by default, as the NFNet paper does."""
    skip: set[int] = set()
    if skip_classifier and hasattr(model, "get_classifier"):
        skip = {id(p) for p in model.get_classifier().parameters()}
    adaptive_clip_grad_([p for p in model.parameters() if id(p) not in skip], clip_factor, eps)
