"""A model's compute and activation counts for one image, as timm's published stats count them (fvcore's rules),
and the same FLOPs split by kind of layer (what a CPU's limit estimate needs, ``scripts/_bench.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import SqueezeExcitation

from effnetv2.layers.global_context import ContextMlp
from effnetv2.layers.pooling import GlobalPool

KINDS = ("1x1 conv", "kxk conv", "depthwise conv", "squeeze-excite", "classifier", "other")


@dataclass(frozen=True)
class Complexity:
    """One image's counts. ``flops``: 2 per multiply-add of each kind of layer (:data:`KINDS`; "other": what
    torch's ``FlopCounterMode`` counted outside convolutions and linear layers). ``norm_pool_macs``: fvcore's
    extras (2 per BatchNorm output element, 1 without affine; 1 per input element of global average pooling).
    ``activations``: output elements of every convolution and linear layer. ``moved``: input + output elements
    of every convolution and linear layer, what a model whose element-wise work is fused into them reads and
    writes (times the element size: bytes)."""

    flops: dict[str, int]
    norm_pool_macs: int
    activations: int
    moved: int

    @property
    def macs(self) -> int:
        """All MACs as fvcore counts them (timm's published GMACs)."""
        return sum(self.flops.values()) // 2 + self.norm_pool_macs


def layer_kind(module: nn.Module, attention: set[int]) -> str:
    """The kind (:data:`KINDS`) of a convolution or linear layer; ``attention``: ids of squeeze-excite layers."""
    if id(module) in attention:
        return "squeeze-excite"
    if isinstance(module, nn.Linear):
        return "classifier"
    if module.groups > 1 and module.weight.shape[1] == 1:
        return "depthwise conv"
    return "1x1 conv" if tuple(module.kernel_size) == (1, 1) else "kxk conv"


def complexity(model: nn.Module, input_size: tuple[int, int, int]) -> Complexity:
    """Counts of one image through ``model`` (:class:`Complexity`); on the meta device when the model is there."""
    flops = dict.fromkeys(KINDS, 0)
    counts = dict(extra=0, activations=0, moved=0)
    attention = {id(m) for a in model.modules() if isinstance(a, (SqueezeExcitation, ContextMlp)) for m in a.modules()}

    def count_norm(module: nn.BatchNorm2d, inputs: Any, output: torch.Tensor) -> None:
        counts["extra"] += output.numel() * (2 if module.affine else 1)

    def count_pool(module: GlobalPool, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if "avg" in module.pool_type:
            counts["extra"] += inputs[0].numel()

    def count_layer(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        per_output = module.weight[0].numel()  # a conv's in-channels per group × kernel; a linear's in-features
        flops[layer_kind(module, attention)] += 2 * output.numel() * per_output
        counts["activations"] += output.numel()
        counts["moved"] += inputs[0].numel() + output.numel()

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(count_norm))
        elif isinstance(module, GlobalPool):
            hooks.append(module.register_forward_hook(count_pool))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(count_layer))
    param = next(model.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.empty(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    flops["other"] = counter.get_total_flops() - sum(flops.values())
    return Complexity(flops, counts["extra"], counts["activations"], counts["moved"])


def macs_and_activations(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """MACs and activations of one image through ``model``, counted as fvcore does (timm's published stats).

    MACs: convolutions and linear layers (torch's ``FlopCounterMode`` FLOPs / 2), plus 2 per BatchNorm output
    element (1 without affine) and 1 per input element of global average pooling. Activations: the output
    elements of every convolution and linear layer. Runs on the meta device when the model is there.
    """
    counts = complexity(model, input_size)
    return counts.macs, counts.activations
