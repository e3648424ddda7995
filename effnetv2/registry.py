"""Model names, pretrained configs and ``create_model`` / ``list_models`` with timm's signatures."""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from effnetv2.data.config import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from effnetv2.errors import CheckpointError, UnknownModelError
from effnetv2.feature_nets import check_feature_cls, wrap_features
from effnetv2.model import EfficientNetV2, EfficientNetV2Features
from effnetv2.spec import SPECS, ModelSpec
from effnetv2.weights.hub import no_weights_message, pretrained_file
from effnetv2.weights.hub_config import (
    ModelSource,
    OpenedModelFiles,
    open_model_source,
    open_saved_model,
    parse_config,
    parse_model_name,
)
from effnetv2.weights.loading import load_state_dict_into
from effnetv2.weights.reading import PinnedFile, open_weights_file, read_pinned_state_dict

ARCHITECTURES: dict[str, ModelSpec] = SPECS

_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/"
_TF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # the tf_ ports' normalisation (timm's Inception mean/std)
_SQUASH = dict(crop_mode="squash")
_IN21K = dict(num_classes=21843)


def _cfg(name: str, file: str = "", hub: bool = True, **kwargs: Any) -> dict[str, Any]:
    """timm's ``_cfg`` defaults for EfficientNets, for ``architecture.tag`` (``file``: its release file, if any)."""
    architecture, _, tag = name.partition(".")
    cfg = dict(
        url=_RELEASES + file if file else "",
        hf_hub_id=f"timm/{name}" if hub else None,
        architecture=architecture,
        tag=tag,
        custom_load=False,
        input_size=(3, 224, 224),
        fixed_input_size=False,
        interpolation="bicubic",
        crop_pct=0.875,
        crop_mode="center",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=1000,
        pool_size=(7, 7),
        first_conv="stem.0",
        classifier="classifier",
        license="apache-2.0",
    )
    return {**cfg, **kwargs}


def _sizes(train: int, test: int, pool: int, crop_pct: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    sizes = dict(input_size=(3, train, train), test_input_size=(3, test, test), pool_size=(pool, pool))
    return dict(sizes, crop_pct=crop_pct, **kwargs)


_V1, _V2 = "v0.1-weights/", "v0.1-effv2-weights/"
# fmt: off
# Pretrained configs, keyed 'architecture.tag' as timm's, in timm's order (an architecture's first tag is its default).
PRETRAINED_CFGS: dict[str, dict[str, Any]] = {
    name: _cfg(name, file, **kwargs)
    for name, file, kwargs in (
        ("efficientnetv2_rw_t.ra2_in1k", _V1 + "efficientnetv2_t_agc-3620981a.pth", _sizes(224, 288, 7)),
        ("gc_efficientnetv2_rw_t.agc_in1k", _V1 + "gc_efficientnetv2_rw_t_agc-927a0bde.pth", _sizes(224, 288, 7)),
        ("efficientnetv2_rw_s.ra2_in1k", _V1 + "efficientnet_v2s_ra2_288-a6477665.pth", _sizes(288, 384, 9)),
        ("efficientnetv2_rw_m.agc_in1k", _V1 + "efficientnetv2_rw_m_agc-3d90cb1e.pth", _sizes(320, 416, 10)),
        # the official TensorFlow weights, as timm ports them
        ("tf_efficientnetv2_s.in21k_ft_in1k", _V2 + "tf_efficientnetv2_s_21ft1k-d7dafa41.pth",
         _sizes(300, 384, 10, **_TF)),
        ("tf_efficientnetv2_m.in21k_ft_in1k", _V2 + "tf_efficientnetv2_m_21ft1k-bf41664a.pth",
         _sizes(384, 480, 12, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_l.in21k_ft_in1k", _V2 + "tf_efficientnetv2_l_21ft1k-60127a9d.pth",
         _sizes(384, 480, 12, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_xl.in21k_ft_in1k", _V2 + "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth",
         _sizes(384, 512, 12, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_s.in1k", _V2 + "tf_efficientnetv2_s-eb54923e.pth", _sizes(300, 384, 10, **_TF)),
        ("tf_efficientnetv2_m.in1k", _V2 + "tf_efficientnetv2_m-cc09e0cd.pth", _sizes(384, 480, 12, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_l.in1k", _V2 + "tf_efficientnetv2_l-d664b728.pth", _sizes(384, 480, 12, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_s.in21k", _V2 + "tf_efficientnetv2_s_21k-6337ad01.pth",
         _sizes(300, 384, 10, **_TF, **_IN21K)),
        ("tf_efficientnetv2_m.in21k", _V2 + "tf_efficientnetv2_m_21k-361418a2.pth",
         _sizes(384, 480, 12, **_TF, **_IN21K, **_SQUASH)),
        ("tf_efficientnetv2_l.in21k", _V2 + "tf_efficientnetv2_l_21k-91a19ec9.pth",
         _sizes(384, 480, 12, **_TF, **_IN21K, **_SQUASH)),
        ("tf_efficientnetv2_xl.in21k", _V2 + "tf_efficientnetv2_xl_in21k-fd7e8abf.pth",
         _sizes(384, 512, 12, **_TF, **_IN21K, **_SQUASH)),
        ("tf_efficientnetv2_b0.in1k", _V2 + "tf_efficientnetv2_b0-c7cc451f.pth", _sizes(192, 224, 6, crop_pct=0.875)),
        ("tf_efficientnetv2_b1.in1k", _V2 + "tf_efficientnetv2_b1-be6e41b0.pth", _sizes(192, 240, 6, crop_pct=0.882)),
        ("tf_efficientnetv2_b2.in1k", _V2 + "tf_efficientnetv2_b2-847de54e.pth", _sizes(208, 260, 7, crop_pct=0.890)),
        ("tf_efficientnetv2_b3.in21k_ft_in1k", "", _sizes(240, 300, 8, crop_pct=0.9, **_TF, **_SQUASH)),
        ("tf_efficientnetv2_b3.in1k", _V2 + "tf_efficientnetv2_b3-57773f13.pth", _sizes(240, 300, 8, crop_pct=0.904)),
        ("tf_efficientnetv2_b3.in21k", "", _sizes(240, 300, 8, crop_pct=0.904, **_TF, **_IN21K)),
    )
}
# fmt: on

# Architectures without published weights: their data config, as timm's '.untrained' tags give it.
UNTRAINED_CFGS: dict[str, dict[str, Any]] = {
    name.partition(".")[0]: _cfg(name, hub=False, **_sizes(*sizes))
    for name, sizes in (
        ("efficientnetv2_s.untrained", (288, 384, 9)),
        ("efficientnetv2_m.untrained", (320, 416, 10)),
        ("efficientnetv2_l.untrained", (384, 480, 12)),
        ("efficientnetv2_xl.untrained", (384, 512, 12)),
    )
}

# The fields of timm's PretrainedCfg (timm/models/_pretrained.py), plus the Hub revision effnetv2 also reads.
PRETRAINED_CFG_KEYS = frozenset(
    {
        *("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag"),
        *("custom_load", "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation"),
        *("crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names"),
        *("label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier", "license"),
        *("description", "origin_url", "paper_name", "paper_ids", "notes", "hf_hub_revision"),
    }
)
# timm keys that select weights in a way effnetv2 does not support: the overlay would be silently ignored.
_UNSUPPORTED_CFG_KEYS = {
    "state_dict": "pass checkpoint_path=FILE, or effnetv2.weights.load_state_dict_into(model, state_dict, adapt=True)",
    "hf_hub_filename": "the Hub's model.safetensors (else pytorch_model.bin) is used; pass file=PATH for another",
}

_MODEL_KWARGS = ("num_classes", "in_chans", "drop_rate", "drop_path_rate", "global_pool")
_FEATURES_IGNORED_KWARGS = ("num_classes", "global_pool", "drop_rate")  # a features model has no head


def _all_names() -> list[str]:
    return sorted(set(ARCHITECTURES) | set(PRETRAINED_CFGS))


def list_models(
    filter: Union[str, list[str]] = "",
    pretrained: bool = False,
    exclude_filters: Union[str, list[str]] = "",
    include_tags: Optional[bool] = None,
) -> list[str]:
    """Model names matching the wildcard ``filter``, as timm's ``list_models``.

    ``pretrained=True`` lists only names with weights; ``include_tags`` (default: ``pretrained``) lists
    ``architecture.tag`` names rather than bare architectures.
    """
    include_tags = pretrained if include_tags is None else include_tags
    names = sorted(PRETRAINED_CFGS) if include_tags else sorted(ARCHITECTURES)
    if pretrained and not include_tags:
        names = sorted({PRETRAINED_CFGS[n]["architecture"] for n in PRETRAINED_CFGS})
    filters = [filter] if isinstance(filter, str) else list(filter)
    if any(filters):
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in filters if f)]
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    return [n for n in names if not any(fnmatch.fnmatch(n, f) for f in excludes if f)]


def _unknown(kind: str, name: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, _all_names(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModelError(f"unknown {kind} {name!r}.{hint} effnetv2.list_models() lists them all.")


def get_pretrained_cfg(model_name: str) -> tuple[str, dict[str, Any]]:
    """Split ``architecture[.tag]`` and return the architecture and its (default-tag) pretrained config."""
    architecture, _, tag = model_name.partition(".")
    if architecture not in ARCHITECTURES:
        raise _unknown("model", model_name)
    if tag:
        key = f"{architecture}.{tag}"
        if key not in PRETRAINED_CFGS:
            raise _unknown("pretrained tag", key)
    else:
        key = next((k for k in PRETRAINED_CFGS if k.partition(".")[0] == architecture), "")
    cfg = copy.deepcopy(PRETRAINED_CFGS.get(key) or UNTRAINED_CFGS.get(architecture, {"architecture": architecture}))
    return architecture, cfg


def _warn_unknown_overlay_keys(overlay: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in overlay if k not in PRETRAINED_CFG_KEYS)
    if unknown:
        close = {k: difflib.get_close_matches(k, PRETRAINED_CFG_KEYS, n=1, cutoff=0.6) for k in unknown}
        hints = [f"{k!r} (did you mean {c[0]!r}?)" if c else repr(k) for k, c in close.items()]
        warnings.warn(
            f"pretrained_cfg_overlay keys effnetv2 does not know (they have no effect): {', '.join(hints)}; "
            "known keys are timm's PretrainedCfg fields (file, hf_hub_id, hf_hub_revision, source, url, ...)",
            UserWarning,
            stacklevel=4,  # create_model's caller (through _resolve_config)
        )
    for key, why in _UNSUPPORTED_CFG_KEYS.items():
        if overlay.get(key) is not None:
            message = f"pretrained_cfg_overlay[{key!r}] is not supported by effnetv2 (it has no effect): {why}"
            warnings.warn(message, UserWarning, stacklevel=4)


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg: Optional[Mapping[str, Any]] = None,
    pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
    checkpoint_path: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    features_only: bool = False,
    out_indices: Union[int, tuple[int, ...]] = (0, 1, 2, 3, 4),
    feature_cls: Optional[str] = None,
    feature_cfg: Optional[Mapping[str, Any]] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create an EfficientNetV2 by name, as ``timm.create_model`` does.

    Args:
        model_name: ``'efficientnetv2_rw_m'`` or ``'efficientnetv2_rw_m.agc_in1k'``; or ``'hf-hub:ORG/REPO[@REV]'``
            / ``'local-dir:PATH'`` for a model saved in timm's format (architecture, ``num_classes``,
            ``global_pool``, ``in_chans`` and the pretrained config come from its ``config.json``).
        pretrained: load the published weights (Hugging Face Hub, else the original release file; see
            :mod:`effnetv2.weights.hub`), or ``pretrained_cfg_overlay['file']``.
        pretrained_cfg: replaces the pretrained config; ``pretrained_cfg_overlay`` updates it, e.g.
            ``dict(file=PATH)``, ``dict(hf_hub_revision=REV)`` or ``dict(source='url')`` (release file only).
            Keys that are not fields of timm's ``PretrainedCfg`` (nor ``hf_hub_revision``) give a UserWarning.
        checkpoint_path: a local timm- or effnetv2-format file, loaded after any pretrained weights, with the
            same adaptation (classifier skipped when ``num_classes`` differs, stem adapted to ``in_chans``): both
            load with ``load_checkpoint(..., adapt=True)``.
        cache_dir: overrides the Hugging Face cache and torch.hub's checkpoint folder (as timm's).
        features_only: return an :class:`EfficientNetV2Features` producing the ``out_indices`` levels (an int:
            the last n; a sequence of ints: those levels, negative from the end).
        feature_cls: with ``features_only``, timm's choice of features model (also as ``feature_cfg={"feature_cls":
            ...}``): ``None`` the native one, ``'getter'`` the classifier's ``forward_intermediates``, ``'fx'`` its
            torch.fx graph (see :mod:`effnetv2.feature_nets`); the same maps from each.
        device, dtype: where and in which floating-point type the model's parameters are made (as timm's; built
            on ``device`` directly, ``'meta'`` included; weights are cast to ``dtype`` after loading).
        **kwargs: ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``global_pool``.

    Each file is read through one open descriptor, and a model folder's ``config.json`` and weights through one
    descriptor of the folder, so a folder that ``save_pretrained`` replaces meanwhile gives one save's pair.
    ``model.source_files`` lists the files read (:class:`~effnetv2.weights.reading.SourceFile`: role, path and the
    version read); ``effnetv2.weights.reading.fingerprint(model.source_files)`` gives their sha256.
    """
    feature_cls = _check_arguments(kwargs, feature_cls, feature_cfg, features_only, dtype)
    # Every file is opened once and read through that descriptor, the two files of a model folder through one
    # descriptor of the folder (one save's pair, whatever replaces it meanwhile); they stay open until the weights
    # are in, and model.source_files remembers which versions were read.
    with contextlib.ExitStack() as opened:
        resolved = _resolve_config(
            model_name, pretrained, pretrained_cfg, pretrained_cfg_overlay, cache_dir, kwargs, opened
        )
        # The weights files are opened here, in the caller's frame: the warnings of pretrained_file (a release-file
        # fallback) and open_saved_model (an ignored config.json) name the line that called create_model.
        if pretrained:  # found and opened before building: fail fast when it is unavailable
            resolved.weights = _folder_weights(resolved) or opened.enter_context(
                open_weights_file(pretrained_file(resolved.cfg, cache_dir=cache_dir))
            )
        if checkpoint_path is not None:
            checkpoint = opened.enter_context(open_saved_model(checkpoint_path))
            _use_checkpoint(resolved, checkpoint, pretrained_cfg is None, pretrained_cfg_overlay)
        model = _build(resolved, features_only, feature_cls, out_indices, device)
        _load_weights(model, resolved)
        source_files = tuple(f.identity() for f in resolved.read if f is not None)
    if dtype is not None:
        model.to(dtype=dtype)
    if features_only and feature_cls is not None:  # timm too wraps the classifier once its weights are in
        model = wrap_features(model, feature_cls, out_indices)
    model.source_files = source_files
    return model


def _check_arguments(
    kwargs: Mapping[str, Any],
    feature_cls: Optional[str],
    feature_cfg: Optional[Mapping[str, Any]],
    features_only: bool,
    dtype: Optional[torch.dtype],
) -> Optional[str]:
    """Refuse what ``create_model`` does not take, before anything is read; returns the checked ``feature_cls``."""
    unexpected = sorted(set(kwargs) - set(_MODEL_KWARGS))
    if unexpected:
        raise TypeError(f"create_model() got unexpected keyword argument(s) {unexpected}; accepted: {_MODEL_KWARGS}")
    feature_cls = _feature_cls(feature_cls, feature_cfg, features_only)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return feature_cls


@dataclass
class _Resolved:
    """What ``create_model`` builds and loads: the architecture, its pretrained config and model arguments, and
    the weights files, opened."""

    architecture: str
    cfg: dict[str, Any]
    kwargs: dict[str, Any]  # the model's arguments: the caller's, filled in from a saved config.json
    source: str  # "hf-hub", "local-dir" or "" (a model name)
    model_id: str
    saved: Optional[ModelSource]  # the hf-hub:/local-dir: model's config.json (and a folder's weights), opened
    read: list[PinnedFile]  # the files read, in order (config files first): model.source_files
    weights: Optional[PinnedFile] = None  # the pretrained weights
    checkpoint: Optional[OpenedModelFiles] = None  # checkpoint_path's weights (and config.json)
    checkpoint_source: str = ""  # how loading messages name the checkpoint


def _resolve_config(
    model_name: str,
    pretrained: bool,
    pretrained_cfg: Optional[Mapping[str, Any]],
    pretrained_cfg_overlay: Optional[Mapping[str, Any]],
    cache_dir: Optional[Union[str, os.PathLike]],
    kwargs: dict[str, Any],
    opened: contextlib.ExitStack,
) -> _Resolved:
    """The architecture, pretrained config and model arguments that the name (a ``hf-hub:``/``local-dir:`` name's
    ``config.json``, kept open by ``opened``) and the arguments give."""
    source, model_id = parse_model_name(model_name)
    saved = None
    if source:
        if pretrained_cfg is not None:
            raise ValueError(f"pretrained_cfg cannot be combined with {source}: names (their config.json is used)")
        saved = _open_model_source(source, model_id, pretrained, cache_dir, kwargs, opened)
        model_name, pretrained_cfg = saved.architecture, saved.pretrained_cfg
    architecture, cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg is not None:
        cfg = copy.deepcopy(dict(pretrained_cfg))
    if pretrained_cfg_overlay:
        _warn_unknown_overlay_keys(pretrained_cfg_overlay)
        cfg.update(pretrained_cfg_overlay)
    read = [saved.files.config] if saved is not None else []
    return _Resolved(architecture, cfg, kwargs, source, model_id, saved, read)


def _open_model_source(
    source: str,
    model_id: str,
    pretrained: bool,
    cache_dir: Optional[Union[str, os.PathLike]],
    kwargs: dict[str, Any],
    opened: contextlib.ExitStack,
) -> ModelSource:
    """A ``hf-hub:``/``local-dir:`` model's ``config.json`` (and a folder's weights), opened; its model args fill
    the ``kwargs`` the caller left out."""
    saved = opened.enter_context(open_model_source(source, model_id, cache_dir, weights=pretrained))
    if saved.architecture not in ARCHITECTURES:
        raise _unknown(f"architecture (named by {model_id}'s config.json)", saved.architecture)
    _check_model_args(saved.model_args, f"{model_id}'s config.json")
    for key, value in saved.model_args.items():
        kwargs.setdefault(key, value)
    return saved


def _folder_weights(resolved: _Resolved) -> Optional[PinnedFile]:
    """A ``local-dir:`` model's own weights (opened with its config.json) when the config still names them; None:
    the Hub's or the release's are wanted."""
    saved = resolved.saved
    own = saved.files.weights if saved is not None else None
    if own is not None and resolved.cfg.get("file") == saved.pretrained_cfg.get("file"):
        return own
    if own is None and resolved.source == "local-dir" and resolved.cfg.get("file") == saved.pretrained_cfg["file"]:
        raise FileNotFoundError(no_weights_message(Path(resolved.model_id)))
    return None


def _use_checkpoint(
    resolved: _Resolved,
    checkpoint: OpenedModelFiles,
    replace_cfg: bool,
    pretrained_cfg_overlay: Optional[Mapping[str, Any]],
) -> None:
    """Add the opened ``checkpoint`` to what is loaded. A checkpoint saved with its config.json (a model folder, or a
    file beside one) describes the model it holds: its model args fill the caller's gaps and (``replace_cfg``: no
    ``pretrained_cfg`` was passed) its pretrained config, overlaid, is the model's."""
    resolved.checkpoint = checkpoint
    resolved.checkpoint_source = str(checkpoint.weights.path)
    if checkpoint.config is None or resolved.source:
        return
    saved_cfg, overridden = _apply_saved_config(checkpoint, resolved.architecture, resolved.kwargs)
    resolved.read.append(checkpoint.config)
    if overridden:
        resolved.checkpoint_source += f" ({overridden})"
    if replace_cfg:
        resolved.cfg = {**saved_cfg, **(pretrained_cfg_overlay or {})}


def _build(
    resolved: _Resolved,
    features_only: bool,
    feature_cls: Optional[str],
    out_indices: Union[int, tuple[int, ...]],
    device: Optional[Union[str, torch.device]],
) -> nn.Module:
    """The model, built on ``device``, with its pretrained config (less what does not apply to it)."""
    spec, cfg, kwargs = ARCHITECTURES[resolved.architecture], resolved.cfg, resolved.kwargs
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if features_only and feature_cls is None:
            model_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURES_IGNORED_KWARGS}
            model: nn.Module = EfficientNetV2Features(spec, out_indices=out_indices, **model_kwargs)
            cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
        else:
            if features_only:  # a wrapped classifier: its head goes, so its head options do not matter
                kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURES_IGNORED_KWARGS}
            kwargs.setdefault("num_classes", cfg.get("num_classes", 1000))
            model = EfficientNetV2(spec, **kwargs)
    if isinstance(model, EfficientNetV2) and model.num_classes != cfg.get("num_classes", model.num_classes):
        for key in ("label_names", "label_descriptions"):
            cfg.pop(key, None)  # they name the classes of another head
    model.pretrained_cfg = cfg
    return model


def _load_weights(model: nn.Module, resolved: _Resolved) -> None:
    """Pretrained weights, then the checkpoint, loaded pretrained-style: a classifier of another size stays fresh
    (with a warning), the stem follows in_chans."""
    if resolved.weights is not None:
        weights = resolved.weights
        load_state_dict_into(model, read_pinned_state_dict(weights), source=str(weights.path), adapt=True)
        resolved.read.append(weights)
    if resolved.checkpoint is not None:
        state_dict = read_pinned_state_dict(resolved.checkpoint.weights)
        load_state_dict_into(model, state_dict, source=resolved.checkpoint_source, adapt=True)
        resolved.read.append(resolved.checkpoint.weights)


def _feature_cls(
    feature_cls: Optional[str], feature_cfg: Optional[Mapping[str, Any]], features_only: bool
) -> Optional[str]:
    """timm's ``feature_cls`` argument, given directly or in ``feature_cfg``; checked."""
    cfg = dict(feature_cfg or {})
    other = sorted(set(cfg) - {"feature_cls"})
    if other:
        raise TypeError(f"feature_cfg keys {other} are not supported by effnetv2; it takes 'feature_cls' only")
    if feature_cls is not None and cfg.get("feature_cls") not in (None, feature_cls):
        raise ValueError(f"feature_cls={feature_cls!r} and feature_cfg's {cfg['feature_cls']!r} disagree")
    feature_cls = check_feature_cls(feature_cls if feature_cls is not None else cfg.get("feature_cls"))
    if feature_cls is not None and not features_only:
        raise ValueError(f"feature_cls={feature_cls!r} needs features_only=True")
    return feature_cls


def _check_model_args(model_args: Mapping[str, Any], where: str) -> None:
    unsupported = sorted(set(model_args) - set(_MODEL_KWARGS))
    if unsupported:
        raise ValueError(f"{where} has model_args effnetv2 does not support: {unsupported}")


def _apply_saved_config(
    checkpoint: OpenedModelFiles, architecture: str, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Read the ``config.json`` saved with a checkpoint: its model args fill ``kwargs`` the caller left out.

    Returns its pretrained config (data config, label names) and, when the caller's arguments differ from the
    saved ones, a note saying so (it explains the adaptation warning that follows).
    """
    checkpoint_path, config_path = checkpoint.weights.path, checkpoint.config.path
    saved_arch, saved_cfg, model_args = parse_config(
        checkpoint.content, {"file": str(checkpoint_path), "source": "local-dir"}
    )
    if saved_arch != architecture:
        raise CheckpointError(
            f"{checkpoint_path}: its {config_path.name} is for {saved_arch!r}, not {architecture!r}; "
            f"create the model it describes ({saved_arch!r}, or 'local-dir:{config_path.parent}')"
        )
    _check_model_args(model_args, str(config_path))
    model_args.setdefault("num_classes", saved_cfg.get("num_classes"))
    differ = [
        f"{key}={kwargs[key]!r} was passed, its {config_path.name} says {value!r}"
        for key, value in model_args.items()
        if key in ("num_classes", "in_chans") and key in kwargs and value is not None and kwargs[key] != value
    ]
    for key, value in model_args.items():
        if value is not None:
            kwargs.setdefault(key, value)
    return saved_cfg, "; ".join(differ)
