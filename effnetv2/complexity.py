"""A model's compute and activation counts for one image, as timm's published stats count them (fvcore's rules)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effnetv2.layers.pooling import GlobalPool


def macs_and_activations(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """MACs and activations of one image through ``model``, counted as fvcore does (timm's published stats).

    MACs: convolutions and linear layers (torch's ``FlopCounterMode`` FLOPs / 2), plus 2 per BatchNorm output
    element (1 without affine) and 1 per input element of global average pooling. Activations: the output
    elements of every convolution and linear layer. Runs on the meta device when the model is there.
    """
    extra = activations = 0

    def count_norm(module: nn.BatchNorm2d, inputs: Any, output: torch.Tensor) -> None:
        nonlocal extra
        extra += output.numel() * (2 if module.affine else 1)

    def count_pool(module: GlobalPool, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal extra
        if "avg" in module.pool_type:
            extra += inputs[0].numel()

    def count_activations(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output.numel()

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(count_norm))
        elif isinstance(module, GlobalPool):
            hooks.append(module.register_forward_hook(count_pool))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(count_activations))
    param = next(model.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.empty(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + extra, activations
