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
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def unpadded(self) -> nn.Conv2d:
        """This convolution without its padding, as a plain ``nn.Conv2d`` sharing its parameters: for code that
        pads with :func:`pad_same` itself and finds convolutions by type (PT2E quantizers match ``nn.Conv2d``
        exactly, so they leave a ``Conv2dSame`` in float)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            0,
            self.dilation,
            self.groups,
            self.bias is not None,
            device="meta",
        )
        conv.weight, conv.bias = self.weight, self.bias
        return conv


def pad_same(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """``x`` padded with zeros as TensorFlow's "SAME" padding does before a convolution of these sizes (height,
    width); integer arithmetic only, so it scripts and exports with dynamic sizes."""
    pad_h = _same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pad_w = _same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding so that ``ceil(size / stride)`` windows fit; never negative when (k - 1)·d + 1 >= stride."""
    return ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size
