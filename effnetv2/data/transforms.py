"""torchvision transform pipelines equal to timm's ``create_transform`` for eval (and a basic train one)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from effnetv2.data.config import DEFAULT_CROP_MODE, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CROP_MODES = ("center", "squash")
AUTO_AUGMENTS = ("rand", "trivial")


def _interpolation(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; choose one of {valid}") from None


def _image_size(input_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(input_size)[-2:]
    if len(size) == 1:
        return size[0], size[0]
    return size[0], size[1]


class ResizeKeepRatio(torch.nn.Module):
    """Resize so the image covers ``size`` (H, W) while keeping its aspect ratio (timm's, ``longest=0``)."""

    def __init__(self, size: tuple[int, int], interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> None:
        super().__init__()
        self.size = size
        self.interpolation = interpolation

    def forward(self, img):
        width, height = TF.get_image_size(img)
        ratio = min(height / self.size[0], width / self.size[1])
        return TF.resize(img, [round(height / ratio), round(width / ratio)], interpolation=self.interpolation)


def create_transform(
    input_size: Union[int, Sequence[int]] = 224,
    is_training: bool = False,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = DEFAULT_CROP_PCT,
    crop_mode: str = DEFAULT_CROP_MODE,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: Optional[str] = None,
    randaug_magnitude: int = 9,
) -> transforms.Compose:
    """A PIL-image → normalised tensor pipeline; ``create_transform(**data_config)`` as in timm.

    Eval: resize to ``size / crop_pct`` (shorter side for ``center``, both sides for ``squash``), center crop
    to ``input_size``, to tensor, normalise. Training: random resized crop, horizontal flip and, with
    ``auto_augment='rand'`` or ``'trivial'``, torchvision's RandAugment (at ``randaug_magnitude``, 0 to 30: its
    default 31 bins) or TrivialAugmentWide.
    """
    height, width = _image_size(input_size)
    interp = _interpolation(interpolation)
    normalize = [transforms.ToTensor(), transforms.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))]
    if is_training:
        steps = [
            transforms.RandomResizedCrop((height, width), scale=tuple(scale), ratio=tuple(ratio), interpolation=interp)
        ]
        if hflip > 0:
            steps.append(transforms.RandomHorizontalFlip(p=hflip))
        if auto_augment == "rand":
            steps.append(transforms.RandAugment(magnitude=randaug_magnitude, interpolation=interp))
        elif auto_augment == "trivial":
            steps.append(transforms.TrivialAugmentWide(interpolation=interp))
        elif auto_augment is not None:
            raise ValueError(f"unknown auto_augment {auto_augment!r}; choose one of {AUTO_AUGMENTS}")
        return transforms.Compose(steps + normalize)

    if crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop_mode {crop_mode!r}; choose one of {CROP_MODES}")
    if crop_pct <= 0:
        raise ValueError(f"crop_pct must be positive, got {crop_pct}")
    scale_size = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if crop_mode == "squash":
        steps = [transforms.Resize(scale_size, interpolation=interp)]
    elif scale_size[0] == scale_size[1]:
        steps = [transforms.Resize(scale_size[0], interpolation=interp)]  # shorter side, keeps aspect ratio
    else:
        steps = [ResizeKeepRatio(scale_size, interpolation=interp)]
    steps.append(transforms.CenterCrop((height, width)))
    return transforms.Compose(steps + normalize)
