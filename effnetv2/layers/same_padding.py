"""TensorFlow's "SAME" padding for strided convolutions, as timm's ``tf_`` networks (ported TF weights) use it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Conv2dSame(nn.Conv2d):
    """A convolution that pads its input as TensorFlow's ``padding="SAME"`` does: the output has
    ``ceil(size / stride)`` pixels per side, and an odd total padding puts the extra pixel at the bottom and right.

    The padding depends on the input size, so it is computed in ``forward``, in integer arithmetic only: the module
    scripts, and exports (``torch.export``, ONNX) with dynamic height and width.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        for k, s, d in zip(self.kernel_size, self.stride, self.dilation, strict=True):
            if (k - 1) * d + 1 < s:  # the padding formula below assumes a kernel at least as wide as its stride
                raise ValueError(f"SAME padding needs (kernel - 1) * dilation + 1 >= stride, got {k}, {d}, {s}")

    def forward(self, x: Tensor) -> Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding so that ``ceil(size / stride)`` windows fit; never negative when (k - 1)·d + 1 >= stride."""
    return ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size
