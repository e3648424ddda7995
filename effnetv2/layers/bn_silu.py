"""BatchNorm + SiLU for training that keeps only its input for the backward pass.

Autograd through ``bn`` then an in-place ``silu_`` keeps three activation-sized tensors per layer: the BN
input (for BN's backward), a clone of the BN output (in-place SiLU must save its original input) and the
SiLU output (which the next conv keeps anyway). One Function here does both and keeps only the BN input,
re-running the normalisation in the backward pass: two tensors instead of three. The recomputation calls
the same kernel on the same data, so outputs, gradients and running statistics are bit-identical to the
unfused layers'.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _BatchNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        momentum: float,
        eps: float,
    ) -> Tensor:
        # Batch statistics, running-statistics update and normalisation exactly as F.batch_norm in training.
        out, save_mean, save_invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, bias, save_mean, save_invstd)
        ctx.eps = eps
        return F.silu(out, inplace=True)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight, bias, save_mean, save_invstd = ctx.saved_tensors
        # The same kernel on the same input gives the bit-identical BN output (running stats untouched).
        bn_out = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, ctx.eps)[0]
        grad_bn = torch.ops.aten.silu_backward(grad_out, bn_out)
        del bn_out
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]]
        mask.append(bias is not None and ctx.needs_input_grad[2])
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_bn, x, weight, None, None, save_mean, save_invstd, True, ctx.eps, mask
        )
        return grad_x, grad_w, grad_b, None, None, None, None


def batch_norm_silu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``silu(bn(x))`` for a BatchNorm in training mode, storing only ``x`` for the backward pass."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does it
            momentum = 1.0 / float(bn.num_batches_tracked)
    running_mean = bn.running_mean if bn.track_running_stats else None
    running_var = bn.running_var if bn.track_running_stats else None
    return _BatchNormSiLU.apply(x, bn.weight, bn.bias, running_mean, running_var, momentum, bn.eps)
