"""Pictures drawn with matplotlib (the ``plots`` extra): training curves and feature mosaics.

Class activation maps live in :mod:`effnetv2.cam`.
"""

from effnetv2.pictures.curves import curves_size, draw_curves
from effnetv2.pictures.mosaic import draw_mosaic, mosaic_size, strongest_channels

MATPLOTLIB_HINT = "pip install 'effnetv2[plots]' (matplotlib)"

__all__ = ["MATPLOTLIB_HINT", "curves_size", "draw_curves", "draw_mosaic", "mosaic_size", "strongest_channels"]
