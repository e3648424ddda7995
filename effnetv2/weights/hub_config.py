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

import contextlib
import copy
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from effnetv2.data.config import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from effnetv2.errors import CheckpointError, UnknownModelError
from effnetv2.weights.key_map import HEAD, STEM
from effnetv2.weights.reading import PinnedFile

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


def read_config(f: PinnedFile) -> dict[str, Any]:
    """The JSON object in an opened ``config.json`` (:class:`CheckpointError` when it is not one)."""
    try:
        config = json.loads(f.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f.path}: not valid JSON ({e}); is it a timm config.json?") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{f.path}: expected a JSON object, found {type(config).__name__}")
    return config


def read_config_file(path: Union[str, os.PathLike]) -> dict[str, Any]:
    with PinnedFile.open(path, "config") as f:
        return read_config(f)


def _is_model_config(content: Mapping[str, Any]) -> bool:
    return "architecture" in content or "architecture" in (content.get("pretrained_cfg") or {})


WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # what timm's save_for_hf writes, preferred first


@dataclass
class OpenedModelFiles:
    """The files of one saved model, each opened once: ``config`` (parsed into ``content``) and ``weights``.

    Reading through these descriptors gives one version of each file, whatever replaces them meanwhile. Close it
    (or use it as a context manager) once the weights are read.
    """

    config: Optional[PinnedFile] = None
    content: Optional[dict[str, Any]] = None
    weights: Optional[PinnedFile] = None
    extra: list[PinnedFile] = field(default_factory=list)  # opened but not used (closed with the rest)

    def close(self) -> None:
        for f in (self.config, self.weights, *self.extra):
            if f is not None:
                f.close()

    def __enter__(self) -> OpenedModelFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_first(folder: Path, dir_fd: int, names: Sequence[str], role: str) -> Optional[PinnedFile]:
    for name in names:
        try:
            return PinnedFile.open(folder / name, role, dir_fd=dir_fd)
        except (FileNotFoundError, IsADirectoryError):
            continue
    return None


def _still_at(folder: Path, dir_fd: int) -> bool:
    """Whether ``folder`` still names the folder open as ``dir_fd`` (not swapped by a save since)."""
    try:
        now, held = os.stat(folder), os.fstat(dir_fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def open_model_folder(
    folder: Union[str, os.PathLike], weights_names: Sequence[str] = WEIGHTS_NAMES, weights: bool = True
) -> OpenedModelFiles:
    """Open a saved model folder's ``config.json`` and (``weights``) its first weights file among
    ``weights_names``, both through one descriptor of the folder: they come from the same save.

    :func:`~effnetv2.weights.saving.save_pretrained` swaps the whole folder in one step and then deletes the old
    one; a file found missing in a folder that was swapped out meanwhile is looked for again in the folder now at
    that path. A file the folder really lacks is ``None`` in the result. Raises ``FileNotFoundError`` /
    ``NotADirectoryError`` when ``folder`` is not a folder.
    """
    folder = Path(folder)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):  # one retry per save that swapped the folder while it was opened: a bound, not a timer
        dir_fd = os.open(folder, flags)
        opened = OpenedModelFiles()
        try:
            opened.config = _open_first(folder, dir_fd, (CONFIG_NAME,), "config")
            opened.weights = _open_first(folder, dir_fd, weights_names, "weights") if weights else None
            complete = opened.config is not None and (opened.weights is not None or not weights)
            if complete or _still_at(folder, dir_fd):
                if opened.config is not None:
                    opened.content = read_config(opened.config)
                return opened
        except BaseException:
            opened.close()
            raise
        finally:
            os.close(dir_fd)
        opened.close()
    raise CheckpointError(f"{folder}: replaced faster than it could be read; run again once nothing writes it")


def open_saved_model(path: Union[str, os.PathLike]) -> OpenedModelFiles:
    """The weights file and the ``config.json`` describing it, opened, for a ``checkpoint_path``.

    A folder (saved by ``save_pretrained``, ``effnetv2 train`` or timm's ``save_for_hf``) gives its
    ``model.safetensors`` (else ``pytorch_model.bin``) and its ``config.json``, from one save; a file gives itself
    and the ``config.json`` beside it when that is a timm model config (it has an ``architecture``), else none.
    """
    from effnetv2.weights.reading import open_weights_file

    path = Path(path)
    if path.is_dir():
        try:
            opened = open_model_folder(path)
        except (FileNotFoundError, NotADirectoryError):  # removed since: read_state_dict says so
            return OpenedModelFiles(weights=open_weights_file(path))
        if opened.weights is None or opened.config is None:
            opened.close()
            absent = [" or ".join(WEIGHTS_NAMES)] if opened.weights is None else []
            absent += [] if opened.config is not None else [CONFIG_NAME]
            raise CheckpointError(
                f"{path}: is a folder without {' and '.join(absent)}; a model folder is one written by "
                "effnetv2.save_pretrained, effnetv2 train or timm's save_for_hf (or pass the weights file itself)"
            )
        return opened
    opened = OpenedModelFiles(weights=open_weights_file(path))
    beside = path.parent / CONFIG_NAME
    try:
        with contextlib.ExitStack() as keep:
            config = PinnedFile.open(beside, "config")
            keep.callback(config.close)
            content = read_config(config)
            if _is_model_config(content):
                keep.pop_all()
                opened.config, opened.content = config, content
    except FileNotFoundError:
        pass
    except (CheckpointError, OSError, UnicodeDecodeError) as e:
        warnings.warn(f"{beside} beside {path} is ignored: {e}", UserWarning, stacklevel=3)
    return opened


def saved_model_files(path: Union[str, os.PathLike]) -> tuple[Path, Optional[Path]]:
    """The weights file and the ``config.json`` describing it, for a ``checkpoint_path`` (see
    :func:`open_saved_model`, which opens them: what a reader should use, so that both come from one save)."""
    with open_saved_model(path) as opened:
        assert opened.weights is not None
        return opened.weights.path, (opened.config.path if opened.config is not None else None)


@dataclass
class ModelSource:
    """What a ``hf-hub:``/``local-dir:`` name describes: the architecture, pretrained config and model args of its
    ``config.json``, and its opened ``files`` (``files.weights``: a local folder's weights, when asked for)."""

    architecture: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any]
    files: OpenedModelFiles

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_model_source(
    source: str, model_id: str, cache_dir: Optional[Union[str, os.PathLike]] = None, weights: bool = False
) -> ModelSource:
    """Read the ``config.json`` of a Hub repo (``source='hf-hub'``) or a local folder; for a folder, ``weights``
    also opens its weights file from the same save (a Hub repo's weights are found by ``pretrained_file``)."""
    if source == "local-dir":
        from effnetv2.weights.hub import FOLDER_FILES

        folder = Path(model_id)
        missing = FileNotFoundError(
            f"no {CONFIG_NAME} in {folder}: a local-dir: model is a folder saved by "
            "effnetv2.save_pretrained or timm's save_for_hf"
        )
        try:
            files = open_model_folder(folder, FOLDER_FILES, weights=weights)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        if files.content is None:
            files.close()
            raise missing
        try:
            parsed = parse_config(files.content, {"file": str(folder), "source": "local-dir"})
        except BaseException:
            files.close()
            raise
        return ModelSource(*parsed, files)

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
    files = OpenedModelFiles(config=PinnedFile.open(path, "config"))
    try:
        files.content = read_config(files.config)
        parsed = parse_config(files.content, {"hf_hub_id": model_id, "source": "hf-hub"})
    except BaseException:
        files.close()
        raise
    return ModelSource(*parsed, files)


def load_model_config(
    source: str, model_id: str, cache_dir: Optional[Union[str, os.PathLike]] = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, pretrained config, model args) from a Hub repo (``source='hf-hub'``) or a local folder."""
    with open_model_source(source, model_id, cache_dir) as opened:
        return opened.architecture, opened.pretrained_cfg, opened.model_args


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
