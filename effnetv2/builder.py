"""Spec → modules: stages of blocks, the linear drop-path schedule and the feature levels."""

from __future__ import annotations

from torch import nn

from effnetv2.features import FeatureLevel
from effnetv2.layers import BLOCK_TYPES
from effnetv2.spec import ModelSpec, StageSpec


def _make_block(stage: StageSpec, in_channels: int, stride: int, drop_path: float, spec: ModelSpec) -> nn.Module:
    if stage.block not in BLOCK_TYPES:
        raise ValueError(f"unknown block kind {stage.block!r} (expected one of {', '.join(BLOCK_TYPES)})")
    return BLOCK_TYPES[stage.block].from_stage(stage, in_channels, stride, drop_path, spec)


def build_stages(spec: ModelSpec, drop_path_rate: float = 0.0) -> tuple[nn.Sequential, list[FeatureLevel]]:
    """Build ``stages`` (a Sequential of Sequentials) and the feature levels it exposes.

    Block ``i`` of ``n`` (counted over the whole network) gets drop-path rate ``drop_path_rate * i / n``.
    A stage ends a feature level when the next stage downsamples, or when it is the last stage.
    """
    stages = []
    levels: list[FeatureLevel] = []
    in_channels = spec.stem_channels
    reduction = 2  # the stem strides by 2
    block_idx = 0
    for stage_idx, stage in enumerate(spec.stages):
        blocks = []
        for i in range(stage.repeats):
            stride = stage.stride if i == 0 else 1
            rate = drop_path_rate * block_idx / spec.num_blocks
            blocks.append(_make_block(stage, in_channels, stride, rate, spec))
            in_channels = stage.out_channels
            block_idx += 1
        stages.append(nn.Sequential(*blocks))
        reduction *= stage.stride
        is_last = stage_idx == len(spec.stages) - 1
        if is_last or spec.stages[stage_idx + 1].stride > 1:
            levels.append(FeatureLevel(f"stages.{stage_idx}", stage.out_channels, reduction, stage_idx + 1))
    return nn.Sequential(*stages), levels
