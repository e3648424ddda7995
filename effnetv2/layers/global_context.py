"""Global-context attention (GCNet, Cao et al. 2019), the squeeze-excite replacement of gc_efficientnetv2_rw_t."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class ContextMlp(nn.Module):
    """1×1 conv, LayerNorm, activation, 1×1 conv: the transform of the pooled context."""

    def __init__(self, channels: int, hidden: int, activation: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.norm = LayerNorm2d(hidden, eps=1e-6)
        self.act = activation()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class GlobalContext(nn.Module):
    """Scale each channel by ``sigmoid(mlp(context))``, where the context is the attention-weighted sum of the map
    over its positions (weights: a softmax over positions of a 1×1 conv's single output channel).

    Module names follow timm's ``GlobalContext`` (``conv_attn``, ``mlp_scale.fc1/norm/fc2``), so its keys map
    one to one.
    """

    def __init__(self, channels: int, hidden: int, activation: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv_attn = nn.Conv2d(channels, 1, 1)
        self.mlp_scale = ContextMlp(channels, hidden, activation)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weights = self.conv_attn(x).reshape(b, 1, h * w).softmax(dim=-1)  # (B, 1, HW)
        context = (x.reshape(b, c, h * w) * weights).sum(dim=-1).reshape(b, c, 1, 1)
        return x * self.mlp_scale(context).sigmoid()
