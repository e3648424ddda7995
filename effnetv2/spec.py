"""The architecture as data: stage tables and the rules that scale them.

A variant is a base table plus width/depth multipliers; adding one means adding data here, not code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

BlockKind = Literal["fused", "mbconv"]


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below ``round_limit`` of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``repeats`` blocks of one kind; only the first block strides."""

    block: BlockKind
    repeats: int
    kernel: int
    stride: int
    expansion: int
    out_channels: int
    se_ratio: float = 0.0  # squeeze width as a fraction of the block's *input* channels

    def scaled(self, width: float, depth: float) -> StageSpec:
        return replace(
            self,
            repeats=math.ceil(self.repeats * depth),
            out_channels=make_divisible(self.out_channels * width),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem width, the stages and the head width, already scaled."""

    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int

    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)


def scale_spec(
    stem_channels: int,
    stages: tuple[StageSpec, ...],
    head_channels: int,
    width: float,
    depths: tuple[float, ...],
) -> ModelSpec:
    """Apply a width multiplier (round to 8) and per-stage depth multipliers (ceil) to a base table."""
    if len(depths) != len(stages):
        raise ValueError(f"need one depth multiplier per stage: {len(stages)} stages, {len(depths)} multipliers")
    return ModelSpec(
        stem_channels=make_divisible(stem_channels * width),
        stages=tuple(stage.scaled(width, depth) for stage, depth in zip(stages, depths, strict=True)),
        head_channels=make_divisible(head_channels * width),
    )


# Ross Wightman's EfficientNetV2 "rw" base (the rw_s network), read off the paper's figure before the
# official release: a fused first stage with expansion 1 and a residual, and a wider last stage and head.
# fmt: off
EFFICIENTNETV2_RW_BASE: tuple[StageSpec, ...] = (
    #          block     repeats kernel stride expansion out  se_ratio
    StageSpec("fused",   2,      3,     1,     1,        24),
    StageSpec("fused",   4,      3,     2,     4,        48),
    StageSpec("fused",   4,      3,     2,     4,        64),
    StageSpec("mbconv",  6,      3,     2,     4,        128, 0.25),
    StageSpec("mbconv",  9,      3,     1,     6,        160, 0.25),
    StageSpec("mbconv",  15,     3,     2,     6,        272, 0.25),
)
# fmt: on

EFFICIENTNETV2_RW_M = scale_spec(
    stem_channels=24,
    stages=EFFICIENTNETV2_RW_BASE,
    head_channels=1792,
    width=1.2,
    depths=(1.2, 1.2, 1.2, 1.2, 1.6, 1.6),
)
