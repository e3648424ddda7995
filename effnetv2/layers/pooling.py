"""Global pooling with timm's pool-type names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


class GlobalPool(nn.Module):
    """Pool (B, C, H, W) to (B, C) — or (B, 2C) for ``catavgmax``; ``''`` passes the map through."""

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"unknown global_pool {pool_type!r}; choose one of {POOL_TYPES}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        """How many times the channel count the pooled vector is."""
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        x_avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x_max = F.adaptive_max_pool2d(x, 1).flatten(1)
        if self.pool_type == "avgmax":
            return 0.5 * (x_avg + x_max)
        return torch.cat([x_avg, x_max], dim=1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
