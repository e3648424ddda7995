"""effnetv2: timm's EfficientNetV2 networks in plain PyTorch, with timm's numbers and API and no timm at run time.

The public names load on first use (PEP 562): ``import effnetv2`` costs no torch import, so the command line's
``--help`` and argument errors answer at once. ``from effnetv2 import create_model`` works as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from effnetv2.install_check import check_install
from effnetv2.version import __version__  # noqa: F401  (the package's version)

check_install()  # before anything imports torchvision: a mismatched torch/torchvision pair is one line (issue 27)

# Public name → the module that defines it.
_PUBLIC = {
    "EFFICIENTNETV2_RW_M": "effnetv2.spec",
    "SPECS": "effnetv2.spec",
    "ModelSpec": "effnetv2.spec",
    "StageSpec": "effnetv2.spec",
    "CheckpointError": "effnetv2.errors",
    "ExportError": "effnetv2.errors",
    "UnknownModelError": "effnetv2.errors",
    "EfficientNetV2": "effnetv2.model",
    "EfficientNetV2Features": "effnetv2.model",
    "Embeddings": "effnetv2.embeddings",
    "iter_embeddings": "effnetv2.embeddings",
    "load_embeddings": "effnetv2.embeddings",
    "Explanation": "effnetv2.cam",
    "explain": "effnetv2.cam",
    "export_model": "effnetv2.export",
    "optimize_for_inference": "effnetv2.inference",
    "create_model": "effnetv2.registry",
    "get_pretrained_cfg": "effnetv2.registry",
    "list_models": "effnetv2.registry",
    "KeyMap": "effnetv2.weights",
    "convert_checkpoint": "effnetv2.weights",
    "load_checkpoint": "effnetv2.weights",
    "push_to_hub": "effnetv2.weights",
    "save_pretrained": "effnetv2.weights",
}

# Literal, so that linters and IDEs read it (tests check it against _PUBLIC).
__all__ = [
    "EFFICIENTNETV2_RW_M",
    "SPECS",
    "CheckpointError",
    "EfficientNetV2",
    "EfficientNetV2Features",
    "Embeddings",
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
    "iter_embeddings",
    "list_models",
    "load_checkpoint",
    "load_embeddings",
    "optimize_for_inference",
    "push_to_hub",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (effnetv2.data, effnetv2.registry ...), as it was an attribute when the package imported it
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'effnetv2' has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from effnetv2 import data
    from effnetv2.cam import Explanation, explain
    from effnetv2.embeddings import Embeddings, iter_embeddings, load_embeddings
    from effnetv2.errors import CheckpointError, ExportError, UnknownModelError
    from effnetv2.export import export_model
    from effnetv2.inference import optimize_for_inference
    from effnetv2.model import EfficientNetV2, EfficientNetV2Features
    from effnetv2.registry import create_model, get_pretrained_cfg, list_models
    from effnetv2.spec import EFFICIENTNETV2_RW_M, SPECS, ModelSpec, StageSpec
    from effnetv2.weights import KeyMap, convert_checkpoint, load_checkpoint, push_to_hub, save_pretrained
