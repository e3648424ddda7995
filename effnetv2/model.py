"""EfficientNetV2 models: the classifier (stem → stages → head → pool → classifier) and the feature extractor."""

# No ``from __future__ import annotations``: torch.fx copies forward's annotations into the code of a traced
# module, and TorchScript must then read them as types, not strings.
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effnetv2.builder import build_stages
from effnetv2.features import FeatureInfo, resolve_indices
from effnetv2.layers import GlobalPool
from effnetv2.layers.blocks import conv_factory
from effnetv2.layers.grad_checkpointing import GRANULARITIES, checkpoint_head, checkpoint_stages, set_bn_act_recompute
from effnetv2.layers.init import initialised_once
from effnetv2.spec import EFFICIENTNETV2_RW_M, ModelSpec


def check_input(x: Tensor, in_chans: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Return ``x``, or raise a clear error unless it is a floating-point (N, in_chans, H, W) tensor of ``dtype``.

    Returning ``x`` (used by the caller) keeps the call in FX graphs: torchvision's feature extraction drops the
    nodes whose results nothing uses.

    ``dtype`` (the model's) may differ under ``torch.autocast``, which casts inside each layer; ``None`` skips that
    check (for callers that cast the input themselves). TorchScript cannot see whether CPU autocast is on, so a
    scripted model leaves a dtype mismatch to torch's own error. Shapes and dtypes are static under tracing and
    export, so these checks cost nothing there.
    """
    if not torch.jit.is_scripting():
        _check_is_tensor(x)
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D image batch (N, C, H, W), got a {x.dim()}-D tensor of shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor, got dtype {x.dtype}; convert it with .float()")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); "
            f"create the model with in_chans={x.shape[1]} or fix the input"
        )
    if dtype is not None and not torch.jit.is_scripting():  # (TorchScript skips the body it could not compile)
        _check_dtype(x, dtype)
    return x


# FX (torch.fx.symbolic_trace, torchvision's create_feature_extractor) records the checks as one call instead of
# tracing into them, whose branches on x.dim() and x.shape a symbolic tensor cannot take: the traced module still
# checks its input with the same messages.
torch.fx.wrap("check_input")


def _check_is_tensor(x: Any) -> None:
    if isinstance(x, torch.Tensor):
        return
    kind = type(x)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    expected = "expected a torch.Tensor of shape (B, C, H, W)"
    if kind.__module__.startswith("PIL"):
        raise TypeError(f"{expected}; got {name}: apply effnetv2.data.create_transform first")
    raise TypeError(f"{expected}; got {name}: use torch.as_tensor / torch.stack")


def _check_dtype(x: Tensor, dtype: torch.dtype) -> None:
    """The model's dtype, unless autocast (which casts inside each layer) is on for the input's device."""
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        fix = "x.float()" if dtype == torch.float32 else f"x.to({dtype})"
        raise TypeError(
            f"expected a {str(dtype).replace('torch.', '')} batch (the model's dtype); got {x.dtype}: "
            f"convert with {fix} or use torch.autocast"
        )


class UnpooledClassifier(nn.Linear):
    """The classifier of a model reset with ``global_pool=''`` and classes: it cannot take the unpooled maps, and
    says so (timm builds the same pair, and fails on it with a matrix-shape error)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(
                f"the classifier ({self.out_features} classes) needs pooled (B, C) input, but global_pool='' passes "
                f"the (B, C, H, W) maps; call reset_classifier({self.out_features}, 'avg') (or reset_classifier(0, '') "
                "for the maps)"
            )
        return F.linear(x, self.weight, self.bias)  # (not super().forward: TorchScript cannot call it)


class _Trunk(nn.Module):
    """Stem and stages, shared by the classifier and the feature extractor."""

    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, spec: ModelSpec, in_chans: int, drop_path_rate: float) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be a positive integer, got {in_chans}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.spec = spec
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.grad_checkpointing_granularity = "nested"
        self.stem = conv_factory(spec)(in_chans, spec.stem_channels, 3, stride=2)
        self.stages, self._levels = build_stages(spec, drop_path_rate)
        self.pretrained_cfg = {}  # set by create_model; left unannotated for TorchScript

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def _check_input(self, x: Tensor) -> Tensor:
        return check_input(x, self.in_chans, self.stem[0].weight.dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, granularity: str = "nested") -> None:
        """Recompute activations in the backward pass instead of storing them (timm's method).

        Gradients, outputs and BatchNorm statistics stay bit-identical to the plain model's.

        Args:
            enable: turn checkpointing on or off.
            granularity: what is recomputed, from the least memory to the least recomputation:
                ``"nested"`` (default: as ``"block"``, with the high-resolution stem + stage 0 as one
                segment re-run block by block), ``"block"`` (keep every block's input, timm's scheme) or
                ``"bn_act"`` (re-run no block, only recompute each BatchNorm + SiLU output). All three
                recompute BN + SiLU.
                See :mod:`effnetv2.layers.grad_checkpointing`.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.grad_checkpointing = enable
        self.grad_checkpointing_granularity = granularity
        set_bn_act_recompute(self, enable)

    @torch.jit.unused
    def _checkpointed_stages(self, x: Tensor, stages: list[nn.Module]) -> list[Tensor]:
        return checkpoint_stages(self.stem, stages, x, self.grad_checkpointing_granularity)


class EfficientNetV2(_Trunk):
    """EfficientNetV2 image classifier with timm's model API.

    Args:
        spec: the architecture table (default: rw_m).
        num_classes: classifier outputs; 0 removes the classifier (the model returns pooled embeddings).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate of the last block; earlier blocks get a linear fraction of it.
        global_pool: ``'avg'``, ``'max'``, ``'avgmax'``, ``'catavgmax'`` or ``''`` (no pooling; needs
            ``num_classes=0``).
    """

    def __init__(
        self,
        spec: ModelSpec = EFFICIENTNETV2_RW_M,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        with initialised_once(self):
            super().__init__(spec, in_chans, drop_path_rate)
            self.head = conv_factory(spec)(spec.stages[-1].out_channels, spec.head_channels, 1)
            self.num_features = spec.head_channels
            self.num_classes = num_classes
            self.global_pool, self.classifier = self._make_classifier(num_classes, global_pool)
        self.drop_rate = drop_rate
        self.feature_info = [
            dict(stage=lvl.stage, reduction=lvl.reduction, module=lvl.module, num_chs=lvl.num_chs)
            for lvl in self._levels
        ]
        self.stage_ends = [lvl.stage for lvl in self._levels]
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def _make_classifier(
        self, num_classes: int, global_pool: str, unpooled_ok: bool = False
    ) -> tuple[GlobalPool, nn.Module]:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        pool = GlobalPool(global_pool)
        if global_pool == "" and num_classes > 0:
            if not unpooled_ok:
                raise ValueError(
                    "global_pool='' (no pooling) needs num_classes=0: a Linear classifier needs pooled input"
                )
            return pool, UnpooledClassifier(self.num_features, num_classes)
        classifier = nn.Linear(self.num_features * pool.feat_mult(), num_classes) if num_classes > 0 else nn.Identity()
        return pool, classifier

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters stem → blocks → head (for layer-wise LR decay), as timm's."""
        return dict(
            stem=r"^stem",
            blocks=[
                (r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                (r"^head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (PyTorch's default Linear init, as timm); ``global_pool=None`` keeps pooling."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        # timm lets a classifier follow no pooling here (its tests reset one on an unpooled model): it is made, and
        # says what to do if it is ever run
        pool, classifier = self._make_classifier(num_classes, global_pool, unpooled_ok=True)
        param = self.stem[0].weight  # (the head may have been pruned)
        self.global_pool = pool.train(self.training)
        self.classifier = classifier.to(device=param.device, dtype=param.dtype).train(self.training)
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features * pool.feat_mult()

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled final features, (B, num_features, H/32, W/32)."""
        x = self._check_input(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = self._checkpointed_stages(x, list(self.stages))[-1]
            return checkpoint_head(self.head, x, self.grad_checkpointing_granularity)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (and classify unless ``pre_logits``) the output of :meth:`forward_features`."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Optional[Union[int, list[int]]] = None, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what no requested feature level needs (timm's method, used by ``feature_cls='getter'``): the stages
        after the last level of ``indices`` and, with ``prune_head``, the head convolution, pooling and classifier.
        Returns the levels' indices. ``prune_norm`` is accepted for timm compatibility (no final norm here)."""
        take, max_index = resolve_indices(len(self.stage_ends), indices)
        keep = self.stage_ends[max_index]
        if prune_head:
            self.reset_classifier(0, "")
        if prune_head or keep < len(self.stages):  # the head reads the last stage's output
            self.head = nn.Identity()
        self.stages = self.stages[:keep]
        return take

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """The feature levels' outputs (timm's semantics) and, unless ``intermediates_only``, the final features.

        Args:
            indices: None → all levels, int n → the last n, list → those levels (negative from the end).
            norm: accepted for timm compatibility; this network has no norm to apply to intermediates.
            stop_early: stop after the last requested level (needs ``intermediates_only=True``).
            output_fmt: only ``'NCHW'``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if stop_early and not intermediates_only:
            raise ValueError("stop_early=True needs intermediates_only=True")
        x = self._check_input(x)
        take, max_index = resolve_indices(len(self.stage_ends), indices)
        take_positions = {self.stage_ends[i] for i in take}
        last_position = self.stage_ends[max_index] if stop_early else len(self.stages)

        stages = list(self.stages[:last_position])
        if self.grad_checkpointing:
            outputs = self._checkpointed_stages(x, stages)
        else:
            outputs = []
            x = self.stem(x)
            for stage in stages:
                x = stage(x)
                outputs.append(x)
        intermediates = [out for position, out in enumerate(outputs, start=1) if position in take_positions]
        if intermediates_only:
            return intermediates
        x = outputs[-1]
        if self.grad_checkpointing:
            return checkpoint_head(self.head, x, self.grad_checkpointing_granularity), intermediates
        return self.head(x), intermediates


class EfficientNetV2Features(_Trunk):
    """The stem and stages only, returning the selected feature maps (timm's ``features_only=True``).

    ``feature_info`` describes the outputs: ``channels()``, ``reduction()``, ``module_name()``.
    """

    def __init__(
        self,
        spec: ModelSpec = EFFICIENTNETV2_RW_M,
        out_indices: Union[int, tuple[int, ...]] = (0, 1, 2, 3, 4),
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ) -> None:
        with initialised_once(self):
            super().__init__(spec, in_chans, drop_path_rate)
        self.feature_info = FeatureInfo(self._levels, out_indices)
        self._out_positions = [self._levels[i].stage for i in self.feature_info.out_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self._check_input(x)
        features: list[Tensor] = []
        if self.grad_checkpointing and not torch.jit.is_scripting():
            outputs = self._checkpointed_stages(x, list(self.stages))
            for position in self._out_positions:
                features.append(outputs[position - 1])
            return features
        x = self.stem(x)
        position = 1
        for stage in self.stages:
            x = stage(x)
            if position in self._out_positions:
                features.append(x)
            position += 1
        return features
