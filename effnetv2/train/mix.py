"""MixUp / CutMix from torchvision.transforms.v2.

They turn class indices into soft targets; ``torch.nn.CrossEntropyLoss`` takes those directly (with label
smoothing too), so no separate soft-target loss is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from torchvision.transforms import v2


def mixup_cutmix(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> Optional[Callable]:
    """A batch transform ``(images, labels) → (images, soft labels)``; ``None`` when both alphas are 0.

    With both enabled, each batch gets one of the two at random (timm's default switch probability 0.5).
    """
    ops = []
    if mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
