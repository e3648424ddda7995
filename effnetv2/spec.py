"""The architecture as data: stage tables and the rules that scale them.

A variant is a base table plus width/depth multipliers; adding one means adding data here, not code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

BlockKind = Literal["conv", "fused", "mbconv"]
Attention = Literal["se", "gc"]  # the mbconv stages' squeeze-excite, or global-context attention


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below ``round_limit`` of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``repeats`` blocks of one kind; only the first block strides.

    Block kinds (timm's block-string prefixes): ``conv`` (``cn``: conv + BN + SiLU), ``fused`` (``er``: fused
    inverted residual), ``mbconv`` (``ir``: inverted residual with squeeze-excite). A block adds its input back when
    it keeps the shape and ``residual`` is set (timm: ``fused``/``mbconv`` unless ``noskip``; ``conv`` with ``skip``).
    """

    block: BlockKind
    repeats: int
    kernel: int
    stride: int
    expansion: int
    out_channels: int
    se_ratio: float = 0.0  # squeeze width as a fraction of the block's *input* channels
    residual: bool = True

    def scaled(self, width: float, depth: float, round_limit: float = 0.9) -> StageSpec:
        return replace(
            self,
            repeats=math.ceil(self.repeats * depth),
            out_channels=make_divisible(self.out_channels * width, round_limit=round_limit),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem width, the stages and the head width, already scaled; ``name`` is its timm name.

    ``bn_eps`` and ``same_padding`` are the conv/BatchNorm choices of every layer: PyTorch's (eps 1e-5, symmetric
    padding) or TensorFlow's for the ``tf_`` ports (eps 1e-3, "SAME" padding on strided convs). ``attention`` is
    what the ``mbconv`` blocks with an ``se_ratio`` use: squeeze-excite, or global context (``gc``).
    """

    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int
    name: str = ""
    bn_eps: float = 1e-5
    same_padding: bool = False
    attention: Attention = "se"

    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)


def scale_spec(
    stem_channels: int,
    stages: tuple[StageSpec, ...],
    head_channels: int,
    width: float,
    depths: tuple[float, ...],
    name: str = "",
    round_limit: float = 0.9,
    **options: Any,
) -> ModelSpec:
    """Apply a width multiplier (round to 8) and per-stage depth multipliers (ceil) to a base table."""
    if len(depths) != len(stages):
        raise ValueError(f"need one depth multiplier per stage: {len(stages)} stages, {len(depths)} multipliers")
    return ModelSpec(
        stem_channels=make_divisible(stem_channels * width, round_limit=round_limit),
        stages=tuple(stage.scaled(width, depth, round_limit) for stage, depth in zip(stages, depths, strict=True)),
        head_channels=make_divisible(head_channels * width, round_limit=round_limit),
        name=name,
        **options,
    )


# fmt: off
# The official EfficientNetV2-S table (the paper's Table 4, as the reference code and timm's efficientnetv2_s).
EFFICIENTNETV2_S_BASE: tuple[StageSpec, ...] = (
    #          block     repeats kernel stride expansion out  se_ratio
    StageSpec("conv",    2,      3,     1,     1,        24),
    StageSpec("fused",   4,      3,     2,     4,        48),
    StageSpec("fused",   4,      3,     2,     4,        64),
    StageSpec("mbconv",  6,      3,     2,     4,        128, 0.25),
    StageSpec("mbconv",  9,      3,     1,     6,        160, 0.25),
    StageSpec("mbconv",  15,     3,     2,     6,        256, 0.25),
)

# Ross Wightman's EfficientNetV2 "rw" base (the rw_s network), read off the paper's figure before the
# official release: a fused first stage with expansion 1 and a residual, and a wider last stage and head.
EFFICIENTNETV2_RW_BASE: tuple[StageSpec, ...] = (
    StageSpec("fused",   2,      3,     1,     1,        24),
    *EFFICIENTNETV2_S_BASE[1:5],
    StageSpec("mbconv",  15,     3,     2,     6,        272, 0.25),
)

EFFICIENTNETV2_M_BASE: tuple[StageSpec, ...] = (
    StageSpec("conv",    3,      3,     1,     1,        24),
    StageSpec("fused",   5,      3,     2,     4,        48),
    StageSpec("fused",   5,      3,     2,     4,        80),
    StageSpec("mbconv",  7,      3,     2,     4,        160, 0.25),
    StageSpec("mbconv",  14,     3,     1,     6,        176, 0.25),
    StageSpec("mbconv",  18,     3,     2,     6,        304, 0.25),
    StageSpec("mbconv",  5,      3,     1,     6,        512, 0.25),
)

EFFICIENTNETV2_L_BASE: tuple[StageSpec, ...] = (
    StageSpec("conv",    4,      3,     1,     1,        32),
    StageSpec("fused",   7,      3,     2,     4,        64),
    StageSpec("fused",   7,      3,     2,     4,        96),
    StageSpec("mbconv",  10,     3,     2,     4,        192, 0.25),
    StageSpec("mbconv",  19,     3,     1,     6,        224, 0.25),
    StageSpec("mbconv",  25,     3,     2,     6,        384, 0.25),
    StageSpec("mbconv",  7,      3,     1,     6,        640, 0.25),
)

EFFICIENTNETV2_XL_BASE: tuple[StageSpec, ...] = (
    StageSpec("conv",    4,      3,     1,     1,        32),
    StageSpec("fused",   8,      3,     2,     4,        64),
    StageSpec("fused",   8,      3,     2,     4,        96),
    StageSpec("mbconv",  16,     3,     2,     4,        192, 0.25),
    StageSpec("mbconv",  24,     3,     1,     6,        256, 0.25),
    StageSpec("mbconv",  32,     3,     2,     6,        512, 0.25),
    StageSpec("mbconv",  8,      3,     1,     6,        640, 0.25),
)
# fmt: on


EFFICIENTNETV2_BASE: tuple[StageSpec, ...] = (  # the B0-B3 table (timm's _gen_efficientnetv2_base)
    StageSpec("conv", 1, 3, 1, 1, 16),
    StageSpec("fused", 2, 3, 2, 4, 32),
    StageSpec("fused", 2, 3, 2, 4, 48),
    StageSpec("mbconv", 3, 3, 2, 4, 96, 0.25),
    StageSpec("mbconv", 5, 3, 1, 6, 112, 0.25),
    StageSpec("mbconv", 8, 3, 2, 6, 192, 0.25),
)

TF = dict(bn_eps=1e-3, same_padding=True)  # the tf_ ports of the official TensorFlow weights


def _spec(
    name: str,
    stem: int,
    stages: tuple[StageSpec, ...],
    head: int,
    width: float = 1.0,
    depth: float = 1.0,
    **options: Any,
) -> ModelSpec:
    """One width multiplier, and one depth multiplier for every stage."""
    return scale_spec(stem, stages, head, width, (depth,) * len(stages), name=name, **options)


# timm's _gen_efficientnetv2_s / _m / _l / _xl, with their multipliers.
EFFICIENTNETV2_RW_T = _spec("efficientnetv2_rw_t", 24, EFFICIENTNETV2_S_BASE, 1280, width=0.8, depth=0.9)
GC_EFFICIENTNETV2_RW_T = _spec(
    "gc_efficientnetv2_rw_t", 24, EFFICIENTNETV2_S_BASE, 1280, width=0.8, depth=0.9, attention="gc"
)
EFFICIENTNETV2_RW_S = _spec("efficientnetv2_rw_s", 24, EFFICIENTNETV2_RW_BASE, 1792)
EFFICIENTNETV2_RW_M = scale_spec(
    stem_channels=24,
    stages=EFFICIENTNETV2_RW_BASE,
    head_channels=1792,
    width=1.2,
    depths=(1.2, 1.2, 1.2, 1.2, 1.6, 1.6),
    name="efficientnetv2_rw_m",
)
EFFICIENTNETV2_S = _spec("efficientnetv2_s", 24, EFFICIENTNETV2_S_BASE, 1280)
EFFICIENTNETV2_M = _spec("efficientnetv2_m", 24, EFFICIENTNETV2_M_BASE, 1280)
EFFICIENTNETV2_L = _spec("efficientnetv2_l", 32, EFFICIENTNETV2_L_BASE, 1280)
EFFICIENTNETV2_XL = _spec("efficientnetv2_xl", 32, EFFICIENTNETV2_XL_BASE, 1280)
TF_EFFICIENTNETV2_S = _spec("tf_efficientnetv2_s", 24, EFFICIENTNETV2_S_BASE, 1280, **TF)
TF_EFFICIENTNETV2_M = _spec("tf_efficientnetv2_m", 24, EFFICIENTNETV2_M_BASE, 1280, **TF)
TF_EFFICIENTNETV2_L = _spec("tf_efficientnetv2_l", 32, EFFICIENTNETV2_L_BASE, 1280, **TF)
TF_EFFICIENTNETV2_XL = _spec("tf_efficientnetv2_xl", 32, EFFICIENTNETV2_XL_BASE, 1280, **TF)
# B0-B3 round channels to 8 without the 90 % floor (round_limit 0), as timm's base generator does.
TF_EFFICIENTNETV2_B = {
    f"tf_efficientnetv2_b{i}": _spec(
        f"tf_efficientnetv2_b{i}", 32, EFFICIENTNETV2_BASE, 1280, width, depth, round_limit=0.0, **TF
    )
    for i, (width, depth) in enumerate(((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4)))
}

# Every architecture, by its timm name (the registry adds pretrained configs).
SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        EFFICIENTNETV2_RW_T,
        GC_EFFICIENTNETV2_RW_T,
        EFFICIENTNETV2_RW_S,
        EFFICIENTNETV2_RW_M,
        EFFICIENTNETV2_S,
        EFFICIENTNETV2_M,
        EFFICIENTNETV2_L,
        EFFICIENTNETV2_XL,
        TF_EFFICIENTNETV2_S,
        TF_EFFICIENTNETV2_M,
        TF_EFFICIENTNETV2_L,
        TF_EFFICIENTNETV2_XL,
        *TF_EFFICIENTNETV2_B.values(),
    )
}
