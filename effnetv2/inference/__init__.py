"""Inference copies of a model, and the one comparison that judges them (and exports) against an fp64 reference.

- :mod:`~effnetv2.inference.folded`: the float copy (BatchNorm folded, channels_last, in-place epilogues; bf16/fp16);
- :mod:`~effnetv2.inference.compiled`: ``torch.compile`` with weight freezing that really freezes;
- :mod:`~effnetv2.inference.int8`: post-training static int8 (PT2E, x86 inductor quantizer) of the fp32 copy;
- :mod:`~effnetv2.inference.calibration`: calibration images and the held-out split of both int8 paths;
- :mod:`~effnetv2.inference.compare`: the one numeric comparison (against fp64, relative to the eager model).

:func:`optimize_for_inference` dispatches on ``dtype`` to the float copy or int8.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from effnetv2.inference.folded import fold_for_inference
from effnetv2.inference.int8 import Calibration, quantize_int8
from effnetv2.model import EfficientNetV2, EfficientNetV2Features


def optimize_for_inference(
    model: Union[EfficientNetV2, EfficientNetV2Features],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    compile: Union[bool, str, None] = None,
    calibration: Optional[Calibration] = None,
) -> nn.Module:
    """An eval-only copy of ``model``: BatchNorm folded into the convs, channels_last, in-place epilogues.

    The caller's model is not changed. In fp32 the outputs equal the model's to rounding (rel ≤ 1e-5 on a
    well-conditioned network). The copy is for inference: call it under ``torch.inference_mode()``;
    ``train()`` raises. It keeps ``forward``, ``forward_features`` and ``forward_head`` (classifier) or
    returns the feature list (``features_only``), and ``pretrained_cfg``, ``feature_info``,
    ``num_classes`` and ``num_features``. It scripts and exports (``torch.jit.script``, ``torch.export``,
    ONNX) like the model itself.

    Args:
        model: an :class:`EfficientNetV2` or :class:`EfficientNetV2Features` (``features_only=True``).
        dtype: ``torch.float32``, ``torch.bfloat16``, ``torch.float16`` (CUDA only), or ``torch.int8`` (CPU:
            post-training static quantization, which needs ``calibration``; see :mod:`effnetv2.inference.int8`). Float
            weights are folded in fp32, then cast; inputs are cast inside ``forward``; outputs come back in the
            input's dtype (float32 for int8).
        channels_last: store weights and run activations in NHWC (what oneDNN and cuDNN prefer).
        compile: return ``torch.compile`` of the result, whose ``forward`` is compiled; the uncompiled module
            is its ``_orig_mod``. On the CPU with weight freezing (:class:`effnetv2.inference.compiled.FrozenCompiled`:
            weights prepacked for oneDNN, conv + SiLU/add fused); call it without autograd. The first call
            at each batch size compiles (about a minute for rw_m on 2 CPU cores; less with inductor's cache
            warm). Default: ``False`` for float dtypes, ``True`` for int8 (whose uncompiled graph runs
            reference float ops, slower than fp32). A ``torch.compile`` mode name compiles in that mode:
            ``"max-autotune"`` times inductor's own GEMM kernels for the linear layers against oneDNN's (three runs
            on an AMX Xeon: up to 24 % more images per second in bf16 and int8, 1.6-3.5 times the compile time).
        calibration: int8 only: normalised images (N, C, H, W), a DataLoader of them, or a folder of image files;
            the int8 model takes inputs of their size (:func:`effnetv2.inference.int8.quantize_int8`).

    Reduced precision: on CPUs without native bfloat16 (no AVX512-BF16 or AMX) oneDNN emulates it and
    bfloat16 is slower than float32; a warning says so.
    """
    if not isinstance(model, (EfficientNetV2, EfficientNetV2Features)):
        raise TypeError(f"expected an effnetv2 EfficientNetV2 or EfficientNetV2Features, got {type(model).__name__}")
    if dtype == torch.int8:
        if calibration is None:
            raise ValueError("dtype=torch.int8 needs calibration images: an (N, C, H, W) batch, a DataLoader, a folder")
        if not channels_last:
            raise ValueError("int8 inference runs channels_last (oneDNN's int8 convolutions); leave channels_last=True")
        return quantize_int8(model, calibration, compile=True if compile is None else compile)
    if calibration is not None:
        raise ValueError(f"calibration is for dtype=torch.int8; {dtype} needs none")
    return fold_for_inference(model, dtype, channels_last, False if compile is None else compile)


__all__ = ["optimize_for_inference"]
