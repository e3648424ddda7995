"""Weight initialisation as timm does it for EfficientNets (the TensorFlow reference scheme)."""

from __future__ import annotations

import math

from torch import nn


def init_weights(module: nn.Module) -> None:
    """Conv: normal(0, sqrt(2 / fan_out)) with group-corrected fan-out; BN: 1 / 0; Linear: uniform(±1/sqrt(out))."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_range = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -init_range, init_range)
            nn.init.zeros_(m.bias)
