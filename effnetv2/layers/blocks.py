"""The residual blocks of EfficientNetV2, assembled from torchvision.ops parts.

:class:`MBConv` and :class:`FusedMBConv` are ``[expand] -> [depthwise] -> [squeeze-excite] -> project``,
:class:`ConvResidual` a single conv + BN + SiLU; each adds its input back (through stochastic depth) when it keeps
the shape and its stage asks for a residual. ``TIMM_KEYS`` maps each block's module paths to timm's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth

from effnetv2.layers.bn_silu import batch_norm_silu
from effnetv2.layers.global_context import GlobalContext
from effnetv2.layers.same_padding import Conv2dSame
from effnetv2.spec import ModelSpec, StageSpec


class ConvBnAct(Conv2dNormActivation):
    """torchvision's conv + BN + SiLU, with two training-time savings; same modules and state-dict keys.

    With autograd on, SiLU runs out of place: torchvision's in-place SiLU makes autograd clone its input
    first, one extra pass over the activation for nothing (same memory, same numbers). With
    ``recompute_bn_act`` set (gradient checkpointing does it), BN + SiLU store only the BN input and
    recompute the rest in the backward pass (:mod:`effnetv2.layers.bn_silu`). Outputs, gradients and BN
    statistics are bit-identical to ``Conv2dNormActivation``'s either way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recompute_bn_act = False

    def forward(self, x: Tensor) -> Tensor:
        # A bare `if not is_scripting()` is skipped by the TorchScript compiler; a combined condition is not.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if torch.is_grad_enabled() and self._ends_in_silu():
                if self.recompute_bn_act and type(self[1]) is nn.BatchNorm2d and self[1].training:
                    return batch_norm_silu(self[0](x), self[1])  # exact type: not SyncBatchNorm (DDP)
                return F.silu(self[1](self[0](x)))
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def _ends_in_silu(self) -> bool:
        return len(self) == 3 and type(self[2]) is nn.SiLU


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
    eps: float = 1e-5,
    same_padding: bool = False,
) -> ConvBnAct:
    """Bias-free conv, BatchNorm (``eps``, momentum 0.1), optional SiLU.

    Padding: symmetric ``k // 2``; with ``same_padding`` a strided conv pads as TensorFlow's "SAME"
    (:class:`~effnetv2.layers.same_padding.Conv2dSame`), as timm's ``pad_type='same'`` does (a stride-1 conv with an
    odd kernel pads ``k // 2`` either way).
    """
    layer = ConvBnAct(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        norm_layer=partial(nn.BatchNorm2d, eps=eps),
        activation_layer=nn.SiLU if act else None,
        bias=False,
    )
    if same_padding and stride > 1:
        layer[0] = Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)
    return layer


ConvFactory = Callable[..., ConvBnAct]  # conv_bn_act with a model's BatchNorm eps and padding bound


def conv_factory(spec: ModelSpec) -> ConvFactory:
    """``conv_bn_act`` with the spec's BatchNorm eps and padding mode."""
    return partial(conv_bn_act, eps=spec.bn_eps, same_padding=spec.same_padding)


class _Block(nn.Module):
    """What every block kind gives the builder and the key map: ``from_stage`` and ``timm_keys``."""

    TIMM_KEYS: dict[str, str] = {}

    @classmethod
    def from_stage(cls, stage: StageSpec, in_channels: int, stride: int, drop_path: float, spec: ModelSpec):
        raise NotImplementedError

    @classmethod
    def timm_keys(cls, stage: StageSpec, spec: ModelSpec) -> dict[str, str]:
        """Our module paths inside the block → timm's."""
        return dict(cls.TIMM_KEYS)


class ConvResidual(_Block):
    """conv + BN + SiLU with an optional residual: timm's ``ConvBnAct`` block (``cn``), stage 0 of the official
    EfficientNetV2 tables."""

    TIMM_KEYS = {"conv.0": "conv", "conv.1": "bn1"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        residual: bool = True,
        drop_path: float = 0.0,
        conv: ConvFactory = conv_bn_act,
    ) -> None:
        super().__init__()
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        self.conv = conv(in_channels, out_channels, kernel_size, stride)
        self.drop_path = StochasticDepth(drop_path, "row")

    @classmethod
    def from_stage(
        cls, stage: StageSpec, in_channels: int, stride: int, drop_path: float, spec: ModelSpec
    ) -> ConvResidual:
        return cls(in_channels, stage.out_channels, stage.kernel, stride, stage.residual, drop_path, conv_factory(spec))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.use_residual:
            out = self.drop_path(out) + x
        return out


class FusedMBConv(_Block):
    """Fused inverted residual ("edge residual"): k×k conv + BN + SiLU, then 1×1 conv + BN.

    Both convs are kept even at expansion 1, as timm's rw variant does.
    """

    TIMM_KEYS = {"expand.0": "conv_exp", "expand.1": "bn1", "project.0": "conv_pwl", "project.1": "bn2"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expansion: int,
        drop_path: float = 0.0,
        residual: bool = True,
        conv: ConvFactory = conv_bn_act,
    ) -> None:
        super().__init__()
        mid_channels = in_channels * expansion
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        self.expand = conv(in_channels, mid_channels, kernel_size, stride)
        self.project = conv(mid_channels, out_channels, 1, act=False)
        self.drop_path = StochasticDepth(drop_path, "row")

    @classmethod
    def from_stage(
        cls, stage: StageSpec, in_channels: int, stride: int, drop_path: float, spec: ModelSpec
    ) -> FusedMBConv:
        conv = conv_factory(spec)
        return cls(
            in_channels, stage.out_channels, stage.kernel, stride, stage.expansion, drop_path, stage.residual, conv
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.expand(x))
        if self.use_residual:
            out = self.drop_path(out) + x
        return out


class MBConv(_Block):
    """Inverted residual: 1×1 expand, k×k depthwise, squeeze-excite, 1×1 project (no activation)."""

    TIMM_KEYS = {
        "expand.0": "conv_pw",
        "expand.1": "bn1",
        "depthwise.0": "conv_dw",
        "depthwise.1": "bn2",
        "project.0": "conv_pwl",
        "project.1": "bn3",
    }
    # the attention's modules, by kind: torchvision's squeeze-excite names differ from timm's; GlobalContext's match
    ATTENTION_TIMM_KEYS = {
        "se": {"se.fc1": "se.conv_reduce", "se.fc2": "se.conv_expand"},
        "gc": {f"se.{m}": f"se.{m}" for m in ("conv_attn", "mlp_scale.fc1", "mlp_scale.norm", "mlp_scale.fc2")},
    }

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expansion: int,
        se_ratio: float,
        drop_path: float = 0.0,
        residual: bool = True,
        conv: ConvFactory = conv_bn_act,
        attention: str = "se",
    ) -> None:
        super().__init__()
        mid_channels = in_channels * expansion
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        self.expand = conv(in_channels, mid_channels, 1)
        self.depthwise = conv(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels)
        # The squeeze width follows the block's input channels, not the expanded ones.
        squeeze_channels = int(in_channels * se_ratio + 0.5)
        if attention == "gc":
            self.se: nn.Module = GlobalContext(mid_channels, squeeze_channels, activation=nn.SiLU)
        else:
            self.se = SqueezeExcitation(mid_channels, squeeze_channels, activation=nn.SiLU)
        self.project = conv(mid_channels, out_channels, 1, act=False)
        self.drop_path = StochasticDepth(drop_path, "row")

    @classmethod
    def timm_keys(cls, stage: StageSpec, spec: ModelSpec) -> dict[str, str]:
        return {**cls.TIMM_KEYS, **cls.ATTENTION_TIMM_KEYS[spec.attention]}

    @classmethod
    def from_stage(cls, stage: StageSpec, in_channels: int, stride: int, drop_path: float, spec: ModelSpec) -> MBConv:
        return cls(
            in_channels,
            stage.out_channels,
            stage.kernel,
            stride,
            stage.expansion,
            stage.se_ratio,
            drop_path,
            stage.residual,
            conv_factory(spec),
            spec.attention,
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.use_residual:
            out = self.drop_path(out) + x
        return out


# The one table of block kinds: a stage's ``block`` names its module class, which knows how to build itself from
# the stage (``from_stage``) and its timm key names (``TIMM_KEYS``). optimize.py maps each class to its inference
# form; a test checks that every kind here has one.
BLOCK_TYPES: dict[str, type[_Block]] = {"conv": ConvResidual, "fused": FusedMBConv, "mbconv": MBConv}
