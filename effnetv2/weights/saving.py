"""Saving a model in timm's Hugging Face format (``model.safetensors`` + ``config.json``), and sharing it.

Writes go through :mod:`effnetv2.atomic`: a file is written to a temp file beside it, flushed, then renamed over
the target; :func:`save_pretrained` writes both files into a new folder that replaces the old one in one step. A
crash or error mid-write leaves the previous files intact; temp files of a killed save are removed by the next.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import safetensors.torch
import torch
from torch import Tensor, nn

from effnetv2.atomic import atomic_folder, atomic_path
from effnetv2.spec import SPECS
from effnetv2.weights.hub_config import CONFIG_NAME, model_config
from effnetv2.weights.key_map import KeyMap

WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


def write_state_dict(
    state_dict: Mapping[str, Tensor], path: PathLike, suffix: str, metadata: Optional[dict[str, str]] = None
) -> None:
    """Write ``state_dict`` to ``path`` as ``suffix`` says: ``.safetensors``, or ``.pth``/``.bin`` (``torch.save``)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if suffix == ".safetensors":
        safetensors.torch.save_file(tensors, path, metadata=metadata or {"format": "pt"})
    elif suffix in (".pth", ".bin", ".pt"):
        torch.save(tensors, path)
    else:
        raise ValueError(f"unknown checkpoint extension {suffix!r}; use .safetensors (or .pth / .bin)")


def save_state_dict(
    state_dict: Mapping[str, Tensor], path: PathLike, metadata: Optional[dict[str, str]] = None
) -> None:
    """Write ``state_dict`` atomically; the extension picks the container (``.safetensors``, ``.pth``, ``.bin``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_state_dict(state_dict, tmp, path.suffix, metadata)


def _architecture(model: nn.Module) -> str:
    name = getattr(getattr(model, "spec", None), "name", "")
    if name in SPECS and SPECS[name] == model.spec:
        return name
    raise ValueError("the model's architecture is not a registered one; save its state_dict() instead")


def save_pretrained(
    model: nn.Module, save_directory: PathLike, model_config: Optional[Mapping[str, Any]] = None
) -> Path:
    """Save ``model`` as timm's ``save_for_hf`` does: ``model.safetensors`` (timm's keys) and ``config.json``.

    The folder loads with ``effnetv2.create_model('local-dir:DIR')`` and ``timm.create_model('local-dir:DIR')``,
    and, uploaded (:func:`push_to_hub`), with ``'hf-hub:ORG/REPO'`` in both. ``model_config`` adds entries such
    as ``label_names``. The folder changes as one step (:func:`effnetv2.atomic.atomic_folder`): a reader sees the
    old ``model.safetensors`` + ``config.json`` pair or the new one, never a mix; other files in the folder are
    kept (hard links, same inode). ``features_only`` models cannot be saved this way (timm's
    format describes a classifier; timm cannot save them either): save the classifier they came from, or their
    ``state_dict()`` for ``checkpoint_path=``. Returns the folder.
    """
    from effnetv2.model import EfficientNetV2

    if not isinstance(model, EfficientNetV2):
        raise TypeError(
            f"save_pretrained needs an EfficientNetV2 classifier, got {type(model).__name__}; a features_only model "
            "has no head for timm's format: save the full model (num_classes=0 keeps no classifier), or save "
            "model.state_dict() to a .safetensors file and load it with checkpoint_path="
        )
    folder = Path(save_directory)
    config = model_config_for(model, model_config)
    state_dict = KeyMap(model.spec).state_dict_to_timm(model.state_dict())
    with atomic_folder(folder) as tmp:
        write_state_dict(state_dict, tmp / WEIGHTS_NAME, ".safetensors")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def model_config_for(model: nn.Module, extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The ``config.json`` content :func:`save_pretrained` writes for ``model``."""
    return model_config(model, _architecture(model), extra)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    commit_message: str = "Add model",
    token: Optional[str] = None,
    revision: Optional[str] = None,
    private: bool = False,
    create_pr: bool = False,
    model_config: Optional[Mapping[str, Any]] = None,
) -> Any:
    """Upload ``model`` to the Hub repo ``repo_id`` (created if missing) in timm's format; returns the commit info.

    A thin wrapper: :func:`save_pretrained` into a temp folder, then huggingface_hub's ``create_repo`` and
    ``upload_folder``. Arguments as timm's ``push_to_hf_hub``. Loads with ``create_model('hf-hub:' + repo_id)``.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, model_config=model_config)
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr, commit_message=commit_message
        )
