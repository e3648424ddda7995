"""Type and range checks of a ``config.json`` (timm's hub format) before anything is built from it.

A config file comes from a folder or a Hub repo the user may not control: a value of the wrong type or out of any
sensible range would otherwise surface far away (``num_classes: 10**10`` allocates terabytes for the classifier,
``mean: "abc"`` fails inside torchvision, ``input_size: [3, 0, 0]`` fails every image on its own). Each check
raises :class:`~effnetv2.errors.CheckpointError` naming the file and the key, as the file spells it
(``pretrained_cfg.mean``, ``model_args.num_classes``).

Bounds (generous for any real model of this family, small enough to refuse what could not run):

- ``num_classes``: an integer from 0 (no classifier) to :data:`MAX_NUM_CLASSES` (100,000; ImageNet-22k has 21,843);
- ``in_chans``: an integer from 1 to :data:`MAX_IN_CHANS` (1,024);
- ``input_size``, ``test_input_size``, ``min_input_size``: ``[channels, height, width]``, positive integers, height
  and width at most :data:`~effnetv2.defaults.MAX_IMAGE_SIZE` (4,096, the command line's ``--img-size`` limit);
- ``mean``, ``std``: a number or a list of 1 or ``in_chans`` finite numbers; ``std`` above 0;
- ``crop_pct``, ``test_crop_pct``: a number in (0, 1];
- ``label_names``: a list of ``num_classes`` strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from effnetv2.defaults import MAX_IMAGE_SIZE
from effnetv2.errors import CheckpointError

MAX_NUM_CLASSES = 100_000
MAX_IN_CHANS = 1024
DEFAULT_NUM_CLASSES = 1000  # what a config without num_classes builds (the architecture's ImageNet head)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")  # timm's; effnetv2's transforms run the first two
_SIZE_KEYS = ("input_size", "test_input_size", "min_input_size")


class _Checker:
    """The checks of one file; ``where`` names it in every message."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str, value: Any) -> CheckpointError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CheckpointError(f"{self.where}: {key} {problem}, got {shown}; correct the value or remove the key")

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise self.fail(key, f"must be an integer from {low:,} to {high:,}", value)
        return value

    def number(self, key: str, value: Any, what: str, ok: Any) -> None:
        if not _is_number(value) or not math.isfinite(value) or not ok(value):
            raise self.fail(key, f"must be {what}", value)

    def text(self, key: str, value: Any, choices: Optional[tuple[str, ...]] = None) -> None:
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.fail(key, "must be " + (f"one of {', '.join(choices)}" if choices else "a string"), value)

    def mapping(self, key: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be a JSON object", value)
        return value

    def size(self, key: str, value: Any) -> None:
        ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and v > 0 for v in value)
        if not ok or max(value[1:]) > MAX_IMAGE_SIZE:
            what = f"[channels, height, width]: positive integers, height and width <= {MAX_IMAGE_SIZE}"
            raise self.fail(key, f"must be {what}", value)

    def stats(self, key: str, value: Any, in_chans: int, positive: bool) -> None:
        values = [value] if _is_number(value) else value
        counts = "1" if in_chans == 1 else f"1 or {in_chans}"
        what = f"{counts} finite numbers" + (" above 0" if positive else "") + f" (the input has {in_chans} channels)"
        if not isinstance(values, (list, tuple)) or len(values) not in (1, in_chans):
            raise self.fail(key, f"must be {what}", value)
        if not all(_is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise self.fail(key, f"must be {what}", value)

    def labels(self, key: str, value: Any, num_classes: int, counted_by: str) -> None:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings, one per class", value)
        if len(value) != num_classes:
            raise CheckpointError(
                f"{self.where}: {key} has {len(value):,} names but {counted_by} is {num_classes:,}; give one name "
                "per class, or remove label_names"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(config: Mapping[str, Any], where: str) -> None:
    """Check the content of a ``config.json`` (either format: timm 1.0's nested one, or the older flat one).

    ``where`` names the file in the messages. Raises :class:`~effnetv2.errors.CheckpointError` on the first value
    of the wrong type or out of range (see the module docstring); unknown keys are left alone.
    """
    check = _Checker(where)
    flat = "pretrained_cfg" not in config
    check.text("architecture", config.get("architecture", ""))
    if flat:
        pretrained, prefix, model_args = config, "", {}
    else:
        pretrained, prefix = check.mapping("pretrained_cfg", config["pretrained_cfg"]), "pretrained_cfg."
        model_args = config.get("model_args") or {}
        model_args = check.mapping("model_args", model_args)

    # Where both are given, the top level wins over pretrained_cfg (parse_config merges them so).
    def effective(key: str) -> tuple[str, Any]:
        if not flat and key in config:
            return key, config[key]
        return prefix + key, pretrained.get(key)

    if not flat and "num_classes" in config:
        check.integer("num_classes", config["num_classes"], 0, MAX_NUM_CLASSES)
    if "num_classes" in pretrained:
        check.integer(prefix + "num_classes", pretrained["num_classes"], 0, MAX_NUM_CLASSES)
    if "num_classes" in model_args:
        check.integer("model_args.num_classes", model_args["num_classes"], 0, MAX_NUM_CLASSES)
    in_chans = 3
    if "in_chans" in model_args:
        in_chans = check.integer("model_args.in_chans", model_args["in_chans"], 1, MAX_IN_CHANS)
    for key in _SIZE_KEYS:
        if pretrained.get(key) is not None:
            check.size(prefix + key, pretrained[key])
    if "in_chans" not in model_args and pretrained.get("input_size") is not None:
        in_chans = pretrained["input_size"][0]
    if in_chans > MAX_IN_CHANS:
        check.integer(prefix + "input_size[0]", in_chans, 1, MAX_IN_CHANS)

    for key, positive in (("mean", False), ("std", True)):
        if pretrained.get(key) is not None:
            check.stats(prefix + key, pretrained[key], in_chans, positive)
    for key in ("crop_pct", "test_crop_pct"):
        if pretrained.get(key) is not None:
            check.number(prefix + key, pretrained[key], "a number in (0, 1]", lambda x: 0 < x <= 1)
    if pretrained.get("interpolation") is not None:
        check.text(prefix + "interpolation", pretrained["interpolation"], INTERPOLATIONS)
    if pretrained.get("crop_mode") is not None:
        check.text(prefix + "crop_mode", pretrained["crop_mode"], CROP_MODES)
    if model_args.get("global_pool") is not None:
        check.text("model_args.global_pool", model_args["global_pool"])
    for key in ("drop_rate", "drop_path_rate"):
        if model_args.get(key) is not None:
            check.number(f"model_args.{key}", model_args[key], "a number in [0, 1)", lambda x: 0 <= x < 1)

    classes_key, num_classes = effective("num_classes")
    if num_classes is None:
        classes_key, num_classes = "model_args.num_classes", model_args.get("num_classes")
    if num_classes is None:
        classes_key, num_classes = "the default class count", DEFAULT_NUM_CLASSES
    labels_key, labels = effective("label_names")
    if labels is None and flat and "labels" in config:  # the older format's name for them
        labels_key, labels = "labels", config["labels"]
    if labels:  # [] or null: no names, as when the key is absent
        check.labels(labels_key, labels, num_classes, classes_key)


def config_origin(extra: Mapping[str, Any], name: str = "config.json") -> str:
    """How messages name a config file, from what ``parse_config`` knows of it (its ``extra``): a folder's or a
    weights file's ``config.json``, or a Hub repo's."""
    if extra.get("hf_hub_id"):
        return f"{name} of hf-hub:{extra['hf_hub_id']}"
    file = extra.get("file")
    if not file:
        return name
    path = Path(file)
    return str(path / name if path.is_dir() else path.parent / name)
