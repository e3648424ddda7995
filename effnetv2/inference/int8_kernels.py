"""What this CPU's oneDNN int8 convolution computes: exact sums, or pairs of products added in saturating int16.

Without VNNI (CPUs with AVX2 only, or oneDNN capped below ``AVX512_CORE_VNNI``) oneDNN multiplies uint8 activations
by int8 weights with ``vpmaddubsw``, which adds each pair of products into an int16 with saturation: 255 × 127 twice
(64770) comes out as 32767. VNNI and AMX sum in int32, exactly, as the quantized graph's reference ops do. So where
the kernels saturate, a compiled int8 model lands a little further from fp64 than the held-out check of its quantized
graph reports (rw_m at 320 px, 768 images: 98.7 % of the clear answers kept against the check's 99.4 %;
BENCHMARKS.md), and :class:`~effnetv2.inference.int8.Int8EfficientNetV2` says so (``kernel_caveat``).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

SUM_CHANNELS = 64  # input channels of the saturation probe: 32 pairs of products per output


def int8_conv_sum(x: int, w: int, channels: int = SUM_CHANNELS) -> Optional[float]:
    """What oneDNN's int8 convolution (the kernel compiled int8 models call) computes for a 1×1 conv of ``channels``
    inputs all ``x`` (uint8) and weights all ``w`` (int8), scales 1: ``channels * x * w`` where it sums exactly; None
    where this torch has no oneDNN quantized conv."""
    qx = torch.full((1, channels, 2, 2), x, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    qw = torch.full((8, channels, 1, 1), w, dtype=torch.int8)
    scales, zeros = torch.ones(8), torch.zeros(8, dtype=torch.long)
    try:
        packed = torch.ops.onednn.qconv_prepack(qw, scales, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, list(qx.shape))
        out = torch.ops.onednn.qconv_pointwise(
            qx, 1.0, 0, packed, scales, zeros, None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], ""
        )
    except (RuntimeError, AttributeError):
        return None
    return out.flatten()[0].item()


@functools.cache  # oneDNN picks its kernels once per process (ONEDNN_MAX_CPU_ISA is read at start)
def int8_pair_sums_saturate() -> Optional[bool]:
    """Whether this CPU's oneDNN int8 kernels add pairs of uint8 × int8 products in saturating int16 (no VNNI): the
    probe's 255 × 127 pairs sum to 32767 each instead of 64770. None: no oneDNN quantized conv in this torch."""
    total = int8_conv_sum(255, 127)
    return None if total is None else total != SUM_CHANNELS * 255 * 127


__all__ = ["SUM_CHANNELS", "int8_conv_sum", "int8_pair_sums_saturate"]
