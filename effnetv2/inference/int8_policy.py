"""What int8 leaves in float: one table, read by both int8 paths.

PyTorch's PT2E path (:mod:`effnetv2.inference.int8`) and ONNX Runtime's static quantization
(:mod:`effnetv2.export.onnx_int8`) quantize the convolutions and keep the parts in :data:`KEPT_FLOAT_PARTS` in
float. A part is named by the module that holds it; the names are the same in the model, in its BatchNorm-folded
inference copy (:func:`effnetv2.inference.folded.fold_for_inference`) and in the scopes of its ONNX graph, so each
path finds the same parts from the same pattern. Besides these, both keep the activations in float (SiLU and the
squeeze-excite gates' sigmoid and product): PT2E's x86 quantizer annotates none of them, and ONNX int8 quantizes
:data:`effnetv2.export.onnx_int8.QUANTIZED_OPS` only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FloatPart:
    """A part of the network that int8 leaves in float, and why."""

    role: str  # in words, for reports
    modules: str  # fnmatch pattern of a module name: that module and every module inside it
    why: str


# Where quantization cost the most agreement with the float model: the first convolution reads the raw pixels,
# the last one and the classifier write what the user reads.
KEPT_FLOAT_PARTS: tuple[FloatPart, ...] = (
    FloatPart("the stem convolution", "stem", "reads the raw pixels, whose range calibration fits worst"),
    FloatPart(
        "squeeze-excite",
        "*.se",
        "a channel gate on a pooled vector: no time to win, and its error scales whole feature maps",
    ),
    FloatPart("the last convolution", "head", "its output is the embedding and feeds the classifier"),
    FloatPart("the classifier", "classifier", "the logits themselves"),
)
KEPT_FLOAT_MODULES: tuple[str, ...] = tuple(part.modules for part in KEPT_FLOAT_PARTS)
FLOAT_ACTIVATIONS = "SiLU and the squeeze-excite gates"


def is_kept_float(module_name: str, patterns: Sequence[str] = KEPT_FLOAT_MODULES) -> bool:
    """Whether the module ``module_name`` (``"stages.3.0.se.fc1"``) is, or sits inside, a module named like one
    of ``patterns``."""
    parts = module_name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def describe_kept_float() -> str:
    """What stays float, in words: ``"SiLU and the squeeze-excite gates, the stem convolution, ..."``."""
    return ", ".join([FLOAT_ACTIVATIONS, *(part.role for part in KEPT_FLOAT_PARTS)])


__all__ = [
    "FLOAT_ACTIVATIONS",
    "KEPT_FLOAT_MODULES",
    "KEPT_FLOAT_PARTS",
    "FloatPart",
    "describe_kept_float",
    "is_kept_float",
]
