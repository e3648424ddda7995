"""Class activation map pictures: one panel per explained class, side by side, and a colour bar for the map's scale.

Each panel is the image the network saw with the map overlaid (:func:`effnetv2.cam.overlay`), its class and
probability above it. Small inputs (a 64 or 96 px model input) are drawn larger, at least ``PANEL_MIN`` pixels on
the shorter side, so that the map and the labels can be read; the panels keep the image's aspect ratio. The layout is
placed in pixels, so each panel is drawn at exactly its size (no resampling by matplotlib).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

from torch import Tensor

from effnetv2.atomic import atomic_path

PANEL_MIN = 224  # px, a panel's shorter side at least: a 96 px input's map is unreadable at 96 px
MARGIN, GAP = 8, 8  # px around the picture, between panels
LABELS = 36  # px above a panel: the class (one line) and its probability
HEADING = 22  # px above the labels, when there is a title
BAR = 96  # px on the right: the colour bar, its ticks and its caption
FONT = 9  # points; at DPI 100 a character is about 7 px wide
CHAR_PX = 7
DPI = 100


def panel_size(width: int, height: int) -> tuple[int, int]:
    """A panel's size in pixels for an image of ``width`` × ``height``: the image's own, or scaled up (aspect ratio
    kept) until its shorter side is ``PANEL_MIN``."""
    scale = max(1.0, PANEL_MIN / min(width, height))
    return round(width * scale), round(height * scale)


def explanation_size(width: int, height: int, panels: int, title: bool = False) -> tuple[int, int]:
    """The picture's size in pixels (width, height) for ``panels`` panels of an image of ``width`` × ``height``."""
    pw, ph = panel_size(width, height)
    return (
        MARGIN + panels * pw + (panels - 1) * GAP + BAR + MARGIN,
        MARGIN + (HEADING if title else 0) + LABELS + ph + MARGIN,
    )


def fit(text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to what fits in ``width`` pixels on one line."""
    most = max(1, width // CHAR_PX)
    return text if len(text) <= most else text[: most - 1].rstrip() + "…"


def overlay_colours() -> Any:
    """The colour map :func:`effnetv2.cam.overlay` paints with: TorchCAM colours a map value ``v`` as jet(``v``²),
    so the colour bar shows the same (the map's 0.5 is jet's 0.25)."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["jet"](np.linspace(0.0, 1.0, 256) ** 2), name="effnetv2-cam")


def draw_explanation(
    image: Any,
    maps: Tensor,
    labels: Sequence[str],
    probs: Sequence[float],
    path: Union[str, os.PathLike],
    title: str = "",
) -> None:
    """Write a PNG to ``path`` atomically: ``image`` (a PIL image, as the network saw it) with each of ``maps``
    ((K, h, w) in [0, 1]) overlaid, side by side, each headed by its class ``labels[k]`` and probability
    ``probs[k]`` (in [0, 1]); a colour bar for the map's scale on the right, ``title`` above all."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from PIL import Image

    from effnetv2.cam import overlay

    if not len(maps) == len(labels) == len(probs) or not len(maps):
        counts = f"{len(maps)} maps, {len(labels)} labels, {len(probs)} probabilities"
        raise ValueError(f"{counts}: give one of each, for 1 class or more")
    pw, ph = panel_size(*image.size)
    width, height = explanation_size(*image.size, len(maps), title=bool(title))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    shown = image.convert("RGB").resize((pw, ph), Image.Resampling.BICUBIC) if (pw, ph) != image.size else image

    def box(left: float, bottom: float, w: float, h: float) -> list[float]:  # pixels → figure fractions
        return [left / width, bottom / height, w / width, h / height]

    for k, (heat_map, label, p) in enumerate(zip(maps, labels, probs, strict=True)):
        ax = fig.add_axes(box(MARGIN + k * (pw + GAP), MARGIN, pw, ph))
        ax.imshow(overlay(shown, heat_map), interpolation="nearest")  # the map is resized (bicubic) to the panel
        ax.set_axis_off()
        ax.set_title(f"{fit(label, pw)}\n{100 * p:.1f} %", fontsize=FONT, pad=4)
    bar = fig.add_axes(box(MARGIN + len(maps) * (pw + GAP), MARGIN, 14, ph))
    colour_bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), overlay_colours()), cax=bar, ticks=[0, 0.5, 1])
    colour_bar.ax.tick_params(labelsize=FONT)
    colour_bar.set_label("activation (1 = the map's peak)", fontsize=FONT)
    if title:
        fig.suptitle(fit(title, width - 2 * MARGIN), fontsize=FONT + 1, y=1 - MARGIN / height, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


__all__ = ["PANEL_MIN", "draw_explanation", "explanation_size", "panel_size"]
