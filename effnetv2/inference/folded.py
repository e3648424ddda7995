"""The float inference copy of a model: BatchNorm folded into the convs, channels_last, in-place epilogues.

(:mod:`effnetv2.inference.int8` quantizes this fp32 copy.)

``fold_for_inference(model)`` (``effnetv2.optimize_for_inference`` for float dtypes) rebuilds the network from the
trained modules into lean eval-only ones:

- every conv + BatchNorm pair becomes one conv with a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``),
  which removes 169 passes over the activations;
- weights and activations are channels_last (NHWC), the layout oneDNN's (and cuDNN's) convolutions
  prefer: timm in NCHW pays a layout conversion around every convolution;
- SiLU, the squeeze-excite scaling and the residual add write into the tensor they modify, and
  squeeze-excite works on pooled vectors (``Linear``) rather than 1×1 maps;
- ``dtype=torch.bfloat16`` (or ``torch.float16`` on CUDA) casts the folded weights and, inside ``forward``,
  the input; outputs come back in the input's dtype, so the model is a drop-in replacement.

Only plain aten ops are used, so the result scripts, exports (``torch.export``, ONNX) and compiles.
What was measured and kept (or dropped) is in BENCHMARKS.md: calling oneDNN's fused conv + SiLU / conv + add
kernels (``torch.ops.mkldnn._convolution_pointwise``) with prepacked weights from eager code gave no gain on the AVX-512
CPU where it was first tried and 16 % in bf16 on AMX, against 38 % for ``compile=True``, which gets them from inductor
(:mod:`effnetv2.inference.compiled`): so the eager copy keeps to plain aten ops.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import SqueezeExcitation

from effnetv2.inference.compiled import FrozenCompiled, compile_mode
from effnetv2.layers import ConvResidual, FusedMBConv, GlobalPool, MBConv
from effnetv2.layers.same_padding import Conv2dSame, pad_same
from effnetv2.model import EfficientNetV2, EfficientNetV2Features, check_input

__all__ = ["INFERENCE_BLOCKS", "InferenceEfficientNetV2", "InferenceEfficientNetV2Features", "fold_for_inference"]


class FoldedConv(nn.Module):
    """A conv whose BatchNorm is folded into its weight and bias, then an optional SiLU and residual add.

    ``forward(x, residual)`` computes ``silu?(conv(x) + bias) [+ residual]``, the epilogue in place. A ``tf_``
    network's strided :class:`~effnetv2.layers.same_padding.Conv2dSame` becomes TensorFlow's padding here and a
    plain ``nn.Conv2d``: the same ops, but int8's quantizer, which finds convolutions by their exact type, then
    quantizes it (a ``Conv2dSame`` stayed float: four convs of ``tf_efficientnetv2_b0``).
    """

    def __init__(self, conv: nn.Conv2d, act: bool) -> None:
        super().__init__()
        self.same_padding = isinstance(conv, Conv2dSame)
        self.conv = conv.unpadded() if self.same_padding else conv
        self.act = act

    @classmethod
    def from_conv_bn_act(cls, seq: nn.Sequential) -> FoldedConv:
        """Fold a torchvision ``Conv2dNormActivation`` (conv, BN[, SiLU]) into one conv."""
        conv, bn = seq[0], seq[1]
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"expected conv + BatchNorm, got {type(conv).__name__} + {type(bn).__name__}")
        act = len(seq) > 2
        if act and not isinstance(seq[2], nn.SiLU):
            raise TypeError(f"expected SiLU after BatchNorm, got {type(seq[2]).__name__}")
        return cls(fuse_conv_bn_eval(conv.eval(), bn.eval()), act)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if self.same_padding:
            x = pad_same(x, self.conv.kernel_size, self.conv.stride, self.conv.dilation)
        x = self.conv(x)
        if self.act:
            x = F.silu(x, inplace=True)
        if residual is not None:
            x += residual  # x is the conv's fresh output: adding in place saves an allocation
        return x

    def extra_repr(self) -> str:
        return f"act={'silu' if self.act else 'none'}" + (", same_padding=True" if self.same_padding else "")


class FastSqueezeExcite(nn.Module):
    """Squeeze-excite on pooled vectors (Linear instead of 1×1 conv on 1×1 maps), scaling its input in place."""

    def __init__(self, se: nn.Module) -> None:
        super().__init__()
        reduce, expand = se.fc1, se.fc2
        self.reduce = nn.Linear(reduce.in_channels, reduce.out_channels)
        self.expand = nn.Linear(expand.in_channels, expand.out_channels)
        with torch.no_grad():
            self.reduce.weight.copy_(reduce.weight.flatten(1))
            self.reduce.bias.copy_(reduce.bias)
            self.expand.weight.copy_(expand.weight.flatten(1))
            self.expand.bias.copy_(expand.bias)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3))
        s = self.expand(F.silu(self.reduce(s), inplace=True)).sigmoid_()
        # x is the block's own intermediate (the depthwise conv's output), so scaling it in place is safe.
        return x.mul_(s[:, :, None, None])


class InferenceMBConv(nn.Module):
    """:class:`~effnetv2.layers.MBConv` with folded convs and the in-place squeeze-excite."""

    def __init__(self, block: MBConv) -> None:
        super().__init__()
        self.expand = FoldedConv.from_conv_bn_act(block.expand)
        self.depthwise = FoldedConv.from_conv_bn_act(block.depthwise)
        # squeeze-excite on pooled vectors; global context (gc_ networks) as it is
        self.se = FastSqueezeExcite(block.se) if isinstance(block.se, SqueezeExcitation) else copy.deepcopy(block.se)
        self.project = FoldedConv.from_conv_bn_act(block.project)
        self.use_residual = block.use_residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.se(self.depthwise(self.expand(x)))
        return self.project(out, x if self.use_residual else None)


class InferenceFusedMBConv(nn.Module):
    """:class:`~effnetv2.layers.FusedMBConv` with folded convs."""

    def __init__(self, block: FusedMBConv) -> None:
        super().__init__()
        self.expand = FoldedConv.from_conv_bn_act(block.expand)
        self.project = FoldedConv.from_conv_bn_act(block.project)
        self.use_residual = block.use_residual

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.expand(x), x if self.use_residual else None)


class InferenceConvResidual(nn.Module):
    """:class:`~effnetv2.layers.ConvResidual` with its BatchNorm folded."""

    def __init__(self, block: ConvResidual) -> None:
        super().__init__()
        self.conv = FoldedConv.from_conv_bn_act(block.conv)
        self.use_residual = block.use_residual

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, x if self.use_residual else None)


# Each block class of effnetv2.layers.BLOCK_TYPES and its inference form.
INFERENCE_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    ConvResidual: InferenceConvResidual,
    FusedMBConv: InferenceFusedMBConv,
    MBConv: InferenceMBConv,
}


def _convert_block(block: nn.Module) -> nn.Module:
    if type(block) not in INFERENCE_BLOCKS:
        raise TypeError(f"cannot optimise block of type {type(block).__name__}")
    return INFERENCE_BLOCKS[type(block)](block)


class _InferenceTrunk(nn.Module):
    """Folded stem and stages; casts inputs to the model's dtype and memory format."""

    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, model: Union[EfficientNetV2, EfficientNetV2Features], dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.in_chans = model.in_chans
        self.spec = model.spec
        self.pretrained_cfg = copy.deepcopy(model.pretrained_cfg)
        self.dtype = dtype
        self.channels_last = channels_last
        self.stem = FoldedConv.from_conv_bn_act(model.stem)
        self.stages = nn.Sequential(*[nn.Sequential(*[_convert_block(b) for b in stage]) for stage in model.stages])

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def _prepare(self, x: Tensor) -> Tensor:
        x = check_input(x, self.in_chans)
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train(self, mode: bool = True) -> _InferenceTrunk:
        if mode:
            raise RuntimeError("an optimised model is for inference only; train the original model instead")
        return super().train(False)


class InferenceEfficientNetV2(_InferenceTrunk):
    """The inference-only classifier made by :func:`optimize_for_inference`."""

    def __init__(self, model: EfficientNetV2, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__(model, dtype, channels_last)
        self.head = FoldedConv.from_conv_bn_act(model.head)
        self.global_pool = GlobalPool(model.global_pool.pool_type)
        self.classifier = copy.deepcopy(model.classifier)
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.head_hidden_size = model.head_hidden_size
        self.feature_info = copy.deepcopy(model.feature_info)

    def _features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.head(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled final features, (B, num_features, H/32, W/32), in the input's dtype."""
        return self._features(self._prepare(x)).to(x.dtype)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (and classify unless ``pre_logits``) the output of :meth:`forward_features`."""
        x = self.global_pool(x.to(self.dtype))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self._features(self._prepare(x))).to(x.dtype)


class InferenceEfficientNetV2Features(_InferenceTrunk):
    """The inference-only feature extractor made by :func:`optimize_for_inference`."""

    def __init__(self, model: EfficientNetV2Features, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__(model, dtype, channels_last)
        self.feature_info = copy.deepcopy(model.feature_info)
        self._out_positions = list(model._out_positions)

    def forward(self, x: Tensor) -> list[Tensor]:
        in_dtype = x.dtype
        x = self.stem(self._prepare(x))
        features: list[Tensor] = []
        position = 1
        for stage in self.stages:
            x = stage(x)
            if position in self._out_positions:
                features.append(x.to(in_dtype))
            position += 1
        return features


_REDUCED = (torch.bfloat16, torch.float16)


def _cpu_has_native_bf16() -> bool:
    # torch.cpu's feature probes are private; if they move, assume the best rather than warn wrongly.
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(p) for p in probes):
        return True
    return any(p() for p in probes)


def fold_for_inference(
    model: Union[EfficientNetV2, EfficientNetV2Features],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    compile: Union[bool, str] = False,
) -> nn.Module:
    """The float inference copy of :func:`effnetv2.optimize_for_inference` (see there): BatchNorm folded in fp32,
    then cast to ``dtype`` (float32, bfloat16, or float16 on CUDA)."""
    mode = compile_mode(compile)
    if dtype not in (torch.float32, *_REDUCED):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 or torch.int8, got {dtype}")
    param = next(model.parameters())
    if dtype == torch.float16 and param.device.type == "cpu":
        raise ValueError("float16 inference is for CUDA (CPUs have no fast float16 convolutions); use torch.bfloat16")
    if dtype == torch.bfloat16 and param.device.type == "cpu" and not _cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX): oneDNN emulates them and "
            "bfloat16 inference runs slower than float32 here; see BENCHMARKS.md",
            stacklevel=2,
        )
    # Fold on an fp32 copy, so the caller's model keeps its mode and weights and the folding is exact.
    source = copy.deepcopy(model).float().eval()
    cls = InferenceEfficientNetV2 if isinstance(model, EfficientNetV2) else InferenceEfficientNetV2Features
    with torch.no_grad():
        fast = cls(source, dtype, channels_last)  # type: ignore[arg-type]
    fast = fast.to(device=param.device, dtype=dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.eval()
    fast.requires_grad_(False)
    if mode is not None:
        fast = FrozenCompiled(fast, mode) if param.device.type == "cpu" else torch.compile(fast, mode=mode)
    return fast
