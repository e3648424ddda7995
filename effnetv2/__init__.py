"""effnetv2: timm's EfficientNetV2 networks in plain PyTorch, with timm's numbers and API and no timm at run time."""

from effnetv2 import data
from effnetv2.cam import Explanation, explain
from effnetv2.errors import CheckpointError, ExportError, UnknownModelError
from effnetv2.export import export_model
from effnetv2.inference import optimize_for_inference
from effnetv2.model import EfficientNetV2, EfficientNetV2Features
from effnetv2.registry import create_model, get_pretrained_cfg, list_models
from effnetv2.spec import EFFICIENTNETV2_RW_M, SPECS, ModelSpec, StageSpec
from effnetv2.weights import KeyMap, convert_checkpoint, load_checkpoint, push_to_hub, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "EFFICIENTNETV2_RW_M",
    "SPECS",
    "CheckpointError",
    "EfficientNetV2",
    "EfficientNetV2Features",
    "Explanation",
    "ExportError",
    "KeyMap",
    "ModelSpec",
    "StageSpec",
    "UnknownModelError",
    "convert_checkpoint",
    "create_model",
    "data",
    "explain",
    "export_model",
    "get_pretrained_cfg",
    "list_models",
    "load_checkpoint",
    "optimize_for_inference",
    "push_to_hub",
    "save_pretrained",
]
