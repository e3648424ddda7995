"""timm's hub ``config.json`` format, both ways: read it for ``hf-hub:``/``local-dir:`` names, write it on save.

The format (timm 1.0, ``save_config_for_hf``)::

    {"architecture": "efficientnetv2_rw_m", "num_classes": 1000, "num_features": 2152, "global_pool": "avg",
     "model_args": {"in_chans": 3, "num_classes": 1000, "global_pool": "avg"},
     "pretrained_cfg": {"tag": ..., "input_size": [3, 320, 320], "mean": [...], "first_conv": "conv_stem", ...}}

``model_args`` rebuild the model; ``pretrained_cfg`` describes the weights and their preprocessing. Older files
are a single flat dict (the pretrained config with ``architecture`` in it); both are read, as timm reads them.
Module names inside (``first_conv``, ``classifier``) are timm's in the file and ours in ``model.pretrained_cfg``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from effnetv2.data.config import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from effnetv2.errors import CheckpointError, UnknownModelError
from effnetv2.weights.key_map import HEAD, STEM

CONFIG_NAME = "config.json"
MODEL_SOURCES = ("hf-hub", "local-dir")
_SOURCE_ALIASES = {"hf_hub": "hf-hub"}  # timm's deprecated spelling
_SOURCE_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-_]+")  # 2+ characters, so 'C:\...' is not a source
# Keys that locate weights; never written to a config (timm's filter_pretrained_cfg(remove_source=True)).
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "source", "state_dict")
_KEEP_NULL = ("pool_size", "first_conv", "classifier")

_TO_TIMM = {**STEM, **HEAD}
_TO_OURS = {theirs: ours for ours, theirs in _TO_TIMM.items()}


def parse_model_name(model_name: str) -> tuple[Optional[str], str]:
    """Split ``'hf-hub:org/repo'`` / ``'local-dir:/path'`` into (source, id); plain registry names give (None, name).

    As timm: a name without a prefix that looks like a repo id or a path is an error, not a registry lookup.
    """
    source, sep, model_id = model_name.partition(":")
    if not sep or not _SOURCE_PREFIX.fullmatch(source):
        if any(c in model_name for c in "/\\:"):
            raise UnknownModelError(
                f"model name {model_name!r} has no source prefix but looks like a Hugging Face Hub repo id or a "
                f"path: use 'hf-hub:{model_name}' for the Hub or 'local-dir:{model_name}' for a local folder"
            )
        return None, model_name
    source = _SOURCE_ALIASES.get(source.lower(), source.lower())
    if source not in MODEL_SOURCES:
        raise UnknownModelError(f"unknown model source {source!r} in {model_name!r}; use one of {MODEL_SOURCES}")
    if not model_id:
        raise UnknownModelError(f"model name {model_name!r} has nothing after {source + ':'!r}")
    return source, model_id


def parse_config(config: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A config.json's content → (architecture, pretrained config, model args), as timm's ``_parse_model_cfg``.

    ``extra`` (the weights' location: ``hf_hub_id``/``file`` and ``source``) is added to the pretrained config.
    Values of the wrong type or out of range are refused first (:mod:`effnetv2.weights.config_checks`):
    :class:`CheckpointError` naming the file and the key.
    """
    from effnetv2.weights.config_checks import check_config, config_origin

    check_config(config, config_origin(extra, CONFIG_NAME))
    config = copy.deepcopy(dict(config))
    if "pretrained_cfg" not in config:  # the older single-dict format
        pretrained = config
        if "architecture" not in pretrained:
            raise CheckpointError("config.json has no 'architecture'; is it a timm model config?")
        config = {
            "architecture": pretrained.pop("architecture"),
            "num_features": pretrained.pop("num_features", None),
            "pretrained_cfg": pretrained,
        }
        if "labels" in pretrained:
            pretrained["label_names"] = pretrained.pop("labels")
    if "architecture" not in config:
        raise CheckpointError("config.json has no 'architecture'; is it a timm model config?")
    pretrained = dict(config["pretrained_cfg"])
    pretrained.update(extra)
    for key in ("num_classes", "label_names", "label_descriptions"):
        if key in config:
            pretrained[key] = config[key]

    model_args = dict(config.get("model_args") or {})
    # timm reads only model_args; older files carry the pooling at the top level alone.
    if "global_pool" not in model_args and isinstance(config.get("global_pool"), str):
        model_args["global_pool"] = config["global_pool"]
    in_chans = model_args.get("in_chans")
    if in_chans is not None:
        for key in ("input_size", "test_input_size", "min_input_size"):
            if pretrained.get(key):
                pretrained[key] = (in_chans, *pretrained[key][1:])
    for key in ("input_size", "test_input_size", "min_input_size", "pool_size", "mean", "std"):
        if isinstance(pretrained.get(key), list):
            pretrained[key] = tuple(pretrained[key])
    for key in ("first_conv", "classifier"):
        if isinstance(pretrained.get(key), str):
            pretrained[key] = _TO_OURS.get(pretrained[key], pretrained[key])
    architecture = config["architecture"]
    pretrained["architecture"] = architecture
    return architecture, pretrained, model_args


def read_config_file(path: Union[str, os.PathLike]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); is it a timm config.json?") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # what timm's save_for_hf writes, preferred first


def saved_model_files(path: Union[str, os.PathLike]) -> tuple[Path, Optional[Path]]:
    """The weights file and the ``config.json`` describing it, for a ``checkpoint_path``.

    A folder (saved by ``save_pretrained``, ``effnetv2 train`` or timm's ``save_for_hf``) gives its
    ``model.safetensors`` (else ``pytorch_model.bin``) and its ``config.json``; a file gives itself and the
    ``config.json`` beside it when that is a timm model config (it has an ``architecture``), else ``None``.
    """
    path = Path(path)
    if path.is_dir():
        config = path / CONFIG_NAME
        weights = next((path / name for name in WEIGHTS_NAMES if (path / name).is_file()), None)
        if weights is None or not config.is_file():
            absent = [" or ".join(WEIGHTS_NAMES)] if weights is None else []
            absent += [] if config.is_file() else [CONFIG_NAME]
            raise CheckpointError(
                f"{path}: is a folder without {' and '.join(absent)}; a model folder is one written by "
                "effnetv2.save_pretrained, effnetv2 train or timm's save_for_hf (or pass the weights file itself)"
            )
        return weights, config
    config = path.parent / CONFIG_NAME
    if path.is_file() and config.is_file():
        try:
            content = read_config_file(config)
        except (CheckpointError, OSError, UnicodeDecodeError) as e:
            warnings.warn(f"{config} beside {path} is ignored: {e}", UserWarning, stacklevel=3)
            return path, None
        if "architecture" in content or "architecture" in (content.get("pretrained_cfg") or {}):
            return path, config
    return path, None


def load_model_config(
    source: str, model_id: str, cache_dir: Optional[Union[str, os.PathLike]] = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, pretrained config, model args) from a Hub repo (``source='hf-hub'``) or a local folder."""
    if source == "local-dir":
        folder = Path(model_id)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {folder}: a local-dir: model is a folder saved by "
                "effnetv2.save_pretrained or timm's save_for_hf"
            )
        return parse_config(read_config_file(folder / CONFIG_NAME), {"file": str(folder), "source": "local-dir"})

    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    from effnetv2.weights.hub import split_revision

    repo_id, revision = split_revision(model_id)
    try:
        path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"could not get {CONFIG_NAME} of {model_id} from the Hugging Face Hub: there is no network (or "
            "HF_HUB_OFFLINE is set) and no cached copy. Pre-populate the cache (`hf download "
            f"{repo_id}`) or save the repo to a folder and use 'local-dir:<folder>'"
        ) from e
    except (OSError, HfHubHTTPError) as e:
        raise CheckpointError(f"could not get {CONFIG_NAME} of {model_id} from the Hugging Face Hub: {e}") from e
    return parse_config(read_config_file(path), {"hf_hub_id": model_id, "source": "hf-hub"})


def _per_channel_stats(value: Any, in_chans: int) -> tuple[float, ...]:
    # timm's rule: statistics that do not match the channel count collapse to their mean.
    value = (value,) if isinstance(value, (int, float)) else tuple(value)
    return value if len(value) in (1, in_chans) else (sum(value) / len(value),)


def model_config(
    model: nn.Module, architecture: str, model_config: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """The config.json for a classifier ``model``, exactly as timm's ``save_config_for_hf`` writes it.

    ``model_config`` adds or overrides entries: ``label_names``, ``label_descriptions``, ``pretrained_cfg``
    updates, or any other top-level key.
    """
    extra = copy.deepcopy(dict(model_config or {}))
    source_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pretrained = {
        k: copy.deepcopy(v)
        for k, v in source_cfg.items()
        if k not in _SOURCE_KEYS and (v is not None or k in _KEEP_NULL)
    }
    pretrained.update(extra.pop("pretrained_cfg", {}))
    pretrained.pop("architecture", None)

    in_chans = model.in_chans
    size = tuple(pretrained.get("input_size") or (3, 224, 224))[1:]
    pretrained["input_size"] = (in_chans, *size)
    pretrained["interpolation"] = pretrained.get("interpolation") or "bicubic"
    pretrained["mean"] = _per_channel_stats(pretrained.get("mean") or IMAGENET_DEFAULT_MEAN, in_chans)
    pretrained["std"] = _per_channel_stats(pretrained.get("std") or IMAGENET_DEFAULT_STD, in_chans)
    pretrained["crop_pct"] = pretrained.get("crop_pct") or 0.875
    pretrained["crop_mode"] = pretrained.get("crop_mode") or "center"
    pretrained["fixed_input_size"] = bool(pretrained.get("fixed_input_size", False))
    pretrained["first_conv"] = _TO_TIMM["stem.0"]
    pretrained["custom_load"] = False  # the file holds a plain timm state dict
    pretrained.pop("label_offset", None)
    for key in ("test_input_size", "min_input_size"):
        if pretrained.get(key):
            pretrained[key] = (in_chans, *pretrained[key][1:])
    if model.num_classes != pretrained.get("num_classes"):
        for key in ("label_names", "label_descriptions"):
            pretrained.pop(key, None)  # they name the old classes
    pretrained["num_classes"] = model.num_classes
    if isinstance(pretrained.get("classifier"), str):
        pretrained["classifier"] = _TO_TIMM.get(pretrained["classifier"], pretrained["classifier"])

    num_classes = extra.pop("num_classes", model.num_classes)
    if num_classes != model.num_classes:
        raise ValueError(f"model_config num_classes={num_classes} differs from the model's {model.num_classes}")
    pool = model.global_pool.pool_type
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": extra.pop("num_features", model.num_features),
    }
    pool_name = extra.pop("global_pool", pool)
    if isinstance(pool_name, str) and pool_name:
        config["global_pool"] = pool_name
    for key in ("label_names", "label_descriptions"):
        value = extra.pop(key, None)
        if value:
            config[key] = value
    config["model_args"] = {"in_chans": in_chans, "num_classes": model.num_classes, "global_pool": pool}
    config["pretrained_cfg"] = pretrained
    config.update(extra)
    from effnetv2.weights.config_checks import check_config

    check_config(config, "model_config")  # what loading would refuse is not written
    return config
