"""Input pipelines: the model's data config and torchvision transforms equal to timm's."""

from effnetv2.data.assets import imagenet_class_names, sample_image_path
from effnetv2.data.config import (
    DEFAULT_CROP_MODE,
    DEFAULT_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    resolve_data_config,
    resolve_model_data_config,
)
from effnetv2.data.images import open_image
from effnetv2.data.transforms import ResizeKeepRatio, create_transform

__all__ = [
    "DEFAULT_CROP_MODE",
    "DEFAULT_CROP_PCT",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ResizeKeepRatio",
    "create_transform",
    "imagenet_class_names",
    "open_image",
    "resolve_data_config",
    "resolve_model_data_config",
    "sample_image_path",
]
