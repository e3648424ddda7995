"""Pictures drawn with matplotlib (the ``plots`` extra): training curves, feature mosaics, class activation maps.

The maps themselves are computed in :mod:`effnetv2.cam`; :mod:`effnetv2.pictures.explanation` draws them.
"""

from effnetv2.pictures.curves import curves_figure, curves_size, draw_curves
from effnetv2.pictures.explanation import draw_explanation, explanation_size
from effnetv2.pictures.mosaic import draw_mosaic, mosaic_size, strongest_channels

MATPLOTLIB_HINT = "pip install 'effnetv2[plots]' (matplotlib)"

__all__ = [
    "MATPLOTLIB_HINT",
    "curves_figure",
    "curves_size",
    "draw_curves",
    "draw_explanation",
    "draw_mosaic",
    "explanation_size",
    "mosaic_size",
    "strongest_channels",
]
