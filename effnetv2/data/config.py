"""Resolve input size, interpolation, normalisation and crop from a model's pretrained config (timm's rules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from torch import nn

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"


def _per_channel(name: str, value: Any, in_chans: int) -> tuple[float, ...]:
    value = tuple(value)
    if len(value) == 1:
        return value * in_chans
    if len(value) != in_chans:
        raise ValueError(f"{name} has {len(value)} values but the input has {in_chans} channels")
    return value


def resolve_data_config(
    args: Optional[Mapping[str, Any]] = None,
    pretrained_cfg: Optional[Mapping[str, Any]] = None,
    model: Optional[nn.Module] = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Data config from explicit ``args`` (highest priority), else the pretrained config, else defaults.

    Returns ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct`` and ``crop_mode``;
    ``use_test_size`` prefers the config's ``test_input_size`` (416 for rw_m) over its train size.
    """
    args = dict(args or {})
    cfg = dict(pretrained_cfg or {})
    if not cfg and model is not None:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})

    in_chans = args.get("in_chans") or args.get("chans") or 3
    if args.get("input_size") is not None:
        input_size = tuple(args["input_size"])
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {input_size}")
        in_chans = input_size[0]
    elif args.get("img_size") is not None:
        input_size = (in_chans, int(args["img_size"]), int(args["img_size"]))
    elif use_test_size and cfg.get("test_input_size") is not None:
        input_size = tuple(cfg["test_input_size"])
    elif cfg.get("input_size") is not None:
        input_size = tuple(cfg["input_size"])
    else:
        input_size = (in_chans, 224, 224)

    config: dict[str, Any] = {"input_size": input_size}
    config["interpolation"] = args.get("interpolation") or cfg.get("interpolation") or "bicubic"
    for name, default in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
        if args.get(name) is not None:
            config[name] = _per_channel(name, args[name], in_chans)
        else:
            config[name] = tuple(cfg.get(name) or default)
    if args.get("crop_pct"):
        config["crop_pct"] = args["crop_pct"]
    elif use_test_size and cfg.get("test_crop_pct"):
        config["crop_pct"] = cfg["test_crop_pct"]
    else:
        config["crop_pct"] = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    config["crop_mode"] = args.get("crop_mode") or cfg.get("crop_mode") or DEFAULT_CROP_MODE
    if verbose:
        print("Data processing configuration:", ", ".join(f"{k}: {v}" for k, v in config.items()))
    return config


def resolve_model_data_config(
    model: nn.Module,
    args: Optional[Mapping[str, Any]] = None,
    pretrained_cfg: Optional[Mapping[str, Any]] = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """:func:`resolve_data_config` for a model (reads ``model.pretrained_cfg``)."""
    return resolve_data_config(
        args, pretrained_cfg=pretrained_cfg, model=model, use_test_size=use_test_size, verbose=verbose
    )
