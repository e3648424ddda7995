"""How a reduced-precision model's outputs agree with the float model's: top-1 and the largest relative difference.

An int8 model cannot match the float one to a tolerance, so its exports and its in-process copy report this
instead: top-1 agreement (classifiers), the same on the images whose float answer is clear (the top-1
probability at least :data:`CLEAR_MARGIN` above the second: issue 16's "clear fp32 margin"), and the largest
relative difference over all outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

CLEAR_MARGIN = 0.2  # a float top-1 probability this far above the second: an image with a clear answer
HOLDOUT_EVERY = 4  # every 4th calibration image checks the result instead of calibrating (when there are >= 8)


def split_holdout(images: Tensor) -> tuple[Tensor, Tensor]:
    """(calibrate, check) of a calibration batch: every 4th image checks when there are 8 or more; with fewer, none
    can be spared and all do both (the check is in-sample, and the reports say so)."""
    if images.shape[0] < 2 * HOLDOUT_EVERY:
        return images, images
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    keep[::HOLDOUT_EVERY] = False
    return images[keep], images[::HOLDOUT_EVERY]


@dataclass(frozen=True)
class Agreement:
    """Reduced-precision outputs against float outputs on the same images."""

    images: int
    top1: Optional[float]  # None unless the model has one 2-D output with more than one class
    clear: Optional[tuple[float, int]]  # top-1 agreement on the images with a clear float answer, and their count
    max_rel_diff: float

    def describe(self) -> str:
        """One line: ``top-1 agreement 97.0 % (55 with a clear answer: 100.0 %), max relative difference 0.03``."""
        text = ""
        if self.top1 is not None and self.clear is not None:
            share, count = self.clear
            text = f"top-1 agreement {100 * self.top1:.1f} % ({count} with a clear answer: " + (
                f"{100 * share:.1f} %), " if count else "none), "
            )
        return text + f"max relative difference {self.max_rel_diff:.3g}"


def output_agreement(ours: Sequence[Tensor], expected: Sequence[Tensor], logits: bool = True) -> Agreement:
    """Compare ``ours`` (a reduced-precision model's outputs) with ``expected`` (the float model's), output by output.

    ``logits=False`` (embeddings, feature maps) reports the relative difference only.

    Raises ``ValueError`` when the outputs differ in number or shape, or ``ours`` holds NaN or infinite values.
    """
    if len(ours) != len(expected) or any(o.shape != e.shape for o, e in zip(ours, expected, strict=True)):
        raise ValueError(
            f"outputs differ: {[tuple(o.shape) for o in ours]} against {[tuple(e.shape) for e in expected]}"
        )
    ours = [o.detach().float().cpu() for o in ours]
    expected = [e.detach().float().cpu() for e in expected]
    if not all(o.isfinite().all() for o in ours):
        raise ValueError("the reduced-precision model returns NaN or infinite values")
    pairs = zip(ours, expected, strict=True)
    rel = max(((o - e).abs().max() / e.abs().max().clamp_min(1e-12)).item() for o, e in pairs)
    top1 = clear = None
    if logits and len(expected) == 1 and expected[0].dim() == 2 and expected[0].shape[1] > 1:
        same = ours[0].argmax(1) == expected[0].argmax(1)
        top1 = same.float().mean().item()
        probs = expected[0].softmax(1).topk(2, dim=1).values
        margin = probs[:, 0] - probs[:, 1] >= CLEAR_MARGIN
        clear = (same[margin].float().mean().item(), int(margin.sum())) if margin.any() else (math.nan, 0)
    return Agreement(images=expected[0].shape[0], top1=top1, clear=clear, max_rel_diff=rel)


__all__ = ["CLEAR_MARGIN", "HOLDOUT_EVERY", "Agreement", "output_agreement", "split_holdout"]
