"""Data config and eval transforms equal timm's on PIL input."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

import effnetv2


def natural_image(width: int = 500, height: int = 375, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (low-frequency colour fields plus a little noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, size=(height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("use_test_size", [False, True])
def test_resolve_model_data_config_matches_timm(use_test_size):
    ours = effnetv2.create_model("efficientnetv2_rw_m.agc_in1k")
    theirs = timm.create_model("efficientnetv2_rw_m.agc_in1k")
    a = effnetv2.data.resolve_model_data_config(ours, use_test_size=use_test_size)
    b = timm.data.resolve_model_data_config(theirs, use_test_size=use_test_size)
    assert a == {k: tuple(v) if isinstance(v, list) else v for k, v in b.items()}
    assert a["input_size"] == ((3, 416, 416) if use_test_size else (3, 320, 320))
    assert a["interpolation"] == "bicubic" and a["crop_pct"] == 1.0


@pytest.mark.parametrize(
    "config",
    [
        dict(input_size=(3, 320, 320), interpolation="bicubic", crop_pct=1.0, crop_mode="center"),
        dict(input_size=(3, 96, 128), interpolation="bilinear", crop_pct=0.875, crop_mode="center"),
        dict(input_size=(3, 112, 112), interpolation="bicubic", crop_pct=0.9, crop_mode="squash"),
    ],
    ids=["rw_m", "non-square", "squash"],
)
@pytest.mark.parametrize("size", [(500, 375), (240, 360)], ids=["landscape", "portrait"])
def test_eval_transform_equals_timm(config, size):
    full = dict(config, mean=effnetv2.data.IMAGENET_DEFAULT_MEAN, std=effnetv2.data.IMAGENET_DEFAULT_STD)
    img = natural_image(*size)
    ours = effnetv2.data.create_transform(**full, is_training=False)(img)
    theirs = timm.data.create_transform(**full, is_training=False)(img)
    assert ours.shape == (3, *config["input_size"][1:])
    assert torch.equal(ours, theirs)


def test_training_transform_shape_and_bad_options():
    tf = effnetv2.data.create_transform(input_size=(3, 64, 64), is_training=True)
    assert tf(natural_image()).shape == (3, 64, 64)
    for policy, name in (("rand", "RandAugment"), ("trivial", "TrivialAugmentWide")):
        augmenting = effnetv2.data.create_transform(input_size=(3, 64, 64), is_training=True, auto_augment=policy)
        assert type(augmenting.transforms[2]).__name__ == name
        assert augmenting(natural_image()).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="unknown auto_augment 'auto'"):
        effnetv2.data.create_transform(input_size=64, is_training=True, auto_augment="auto")
    with pytest.raises(ValueError, match="unknown crop_mode 'border'"):
        effnetv2.data.create_transform(input_size=64, crop_mode="border")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        effnetv2.data.create_transform(input_size=64, interpolation="cubic")
