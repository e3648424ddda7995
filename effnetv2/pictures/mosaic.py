"""Feature mosaics: the strongest channels of each feature level of one image, one row per level.

A channel's strength is its mean activation over the map; the ``k`` strongest are drawn, each scaled to its own
minimum and maximum (the colour bar of a tile is relative); the input image as the network saw it heads the first
column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from torch import Tensor

from effnetv2.atomic import atomic_path

TILE_INCHES = (1.6, 1.75)  # a tile and its title
DPI = 100


def strongest_channels(feature_map: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` channels of ``feature_map`` (C, H, W) with the highest mean activation, strongest first."""
    return feature_map.float().mean(dim=(1, 2)).topk(min(k, feature_map.shape[0])).indices


def mosaic_size(levels: int, k: int) -> tuple[int, int]:
    """The picture's size in pixels (width, height): the input image and ``k`` tiles per row, one row per level."""
    return round(TILE_INCHES[0] * (k + 1) * DPI), round(TILE_INCHES[1] * levels * DPI)


def draw_mosaic(
    image: Tensor,
    maps: Sequence[Tensor],
    levels: Sequence[int],
    reductions: Sequence[int],
    path: Union[str, os.PathLike],
    k: int = 8,
    title: str = "",
) -> None:
    """Write a PNG to ``path`` atomically: for each level (``maps[i]`` of shape (C, H, W), the output of feature
    level ``levels[i]`` at stride ``reductions[i]``) a row with the level's ``k`` strongest channels, after
    ``image`` (3, H, W in [0, 1]) in the first row and the level's name in the others."""
    from matplotlib.figure import Figure

    if not maps:
        raise ValueError("no feature level to draw")
    width, height = mosaic_size(len(maps), k)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(maps), k + 1, squeeze=False)
    shown = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    for row, (feature_map, level, stride) in enumerate(zip(maps, levels, reductions, strict=True)):
        feature_map = feature_map.detach().float().cpu()
        channels, h, w = feature_map.shape
        label = f"level {level}: stride {stride}\n{channels} ch, {h}x{w}"
        if row == 0:  # the input once: every row's maps cover the same image
            axes[row, 0].imshow(shown)
            axes[row, 0].set_title("input\n" + label, fontsize="small")
        else:
            axes[row, 0].text(0.5, 0.5, label, ha="center", va="center", fontsize="medium")
        chosen = strongest_channels(feature_map, k)
        for col in range(k):
            ax = axes[row, col + 1]
            if col < len(chosen):
                c = int(chosen[col])
                tile = feature_map[c]
                ax.imshow(tile.numpy(), cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {c}  mean {tile.mean():.2f}", fontsize="x-small")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.set_axis_off()
    note = f"the {k} strongest channels of each level (highest mean activation); each tile scaled to its own range"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize="medium")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


__all__ = ["draw_mosaic", "mosaic_size", "strongest_channels"]
