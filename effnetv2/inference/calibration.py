"""Calibration images for int8: which of them calibrate and which are held out to check the result."""

from __future__ import annotations

import torch
from torch import Tensor

HOLDOUT_EVERY = 4  # every 4th calibration image checks the result instead of calibrating (when there are >= 8)


def split_holdout(images: Tensor) -> tuple[Tensor, Tensor]:
    """(calibrate, check) of a calibration batch: every 4th image checks when there are 8 or more; with fewer, none
    can be spared and all do both (the check is in-sample, and the reports say so)."""
    if images.shape[0] < 2 * HOLDOUT_EVERY:
        return images, images
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    keep[::HOLDOUT_EVERY] = False
    return images[keep], images[::HOLDOUT_EVERY]


__all__ = ["HOLDOUT_EVERY", "split_holdout"]
