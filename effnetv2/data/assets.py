"""Files shipped with the package: the ImageNet-1k class names and synsets, and a sample photo (sources in README.md
here)."""

from __future__ import annotations

import functools
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def sample_image_path() -> Path:
    """A real photograph (a cat, CC0) to try the model on: ``effnetv2 predict`` uses it when given no path."""
    return _HERE / "sample.jpg"


def _thousand_lines(name: str) -> tuple[str, ...]:
    lines = tuple((_HERE / name).read_text(encoding="utf-8").splitlines())
    if len(lines) != 1000:  # a damaged install would otherwise label predictions wrongly
        raise RuntimeError(f"{_HERE / name} has {len(lines)} lines, expected 1000")
    return lines


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names; entry ``i`` names the classifier's output ``i``."""
    return _thousand_lines("imagenet_classes.txt")


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764``, ...), sorted; entry ``i`` is the classifier's class ``i``."""
    return _thousand_lines("imagenet_synsets.txt")
