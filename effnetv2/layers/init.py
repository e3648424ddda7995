"""Weight initialisation as timm does it for EfficientNets (the TensorFlow reference scheme)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def init_weights(module: nn.Module) -> None:
    """Conv: normal(0, sqrt(2 / fan_out)) with group-corrected fan-out; BN and LayerNorm: 1 / 0; Linear:
    uniform(±1/sqrt(out)). Any other layer with parameters is a TypeError."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_range = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -init_range, init_range)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):  # global-context attention; timm leaves PyTorch's default
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif any(True for _ in m.parameters(recurse=False)):
            # initialised_once allocates parameters uninitialised: a layer type nobody initialises would keep garbage
            raise TypeError(f"init_weights does not know how to initialise {type(m).__name__}; add it here")


@contextlib.contextmanager
def initialised_once(module: nn.Module) -> Iterator[None]:
    """Build ``module``'s layers inside this block on the meta device, then allocate them on the caller's device
    and run :func:`init_weights` once.

    torch's own default init of every Conv2d and Linear (kaiming-uniform) would be overwritten by
    :func:`init_weights` anyway; skipping it halves the cost of building the model (measured: 0.6 s of 1.3 s on
    2 CPU cores). BatchNorm buffers get their defaults back (running mean 0, variance 1, no batches tracked).
    """
    device = torch.empty(0).device  # the caller's: a ``with torch.device(...)`` block, else the CPU
    with torch.device("meta"):
        yield
    module.to_empty(device=device)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    init_weights(module)
