#!/usr/bin/env python
"""Eager bf16 with prepacked conv weights and fused epilogues, against the eager bf16 copy (issue 30, item 1).

    python scripts/bf16_prepack_ab.py [--model efficientnetv2_rw_m] [--img-size 320] [--batch-size 8] [--rounds 8]

Without prepacking, oneDNN reorders each bf16 conv weight into its blocked layout on every call. This script
builds two ``optimize_for_inference(model, torch.bfloat16)`` copies and, in the second, replaces every folded
conv's forward with oneDNN's fused kernel on a weight reordered once for the batch's input size
(``torch.ops.mkldnn._reorder_convolution_weight`` + ``_convolution_pointwise``, SiLU or the residual add as its
epilogue). It prints both copies' error from fp64 (the project's one comparison) and their paired timing against
timm eager fp32 channels_last. The library does not use this path (it is not plain aten: no scripting or export);
``compile=True`` gets the same kernels from inductor. Results: BENCHMARKS.md, the AMX section.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types

import torch
from _bench import ARCH, channels_last, log, paired_ratio, paired_rounds, stand_in_pair
from torch import Tensor

from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, reference, run_batched
from effnetv2.inference.folded import FoldedConv
from effnetv2.testing import mixed_images

mkldnn = torch.ops.mkldnn


def _fused_forward(self: FoldedConv, x: Tensor, residual: Tensor | None = None) -> Tensor:
    c = self.conv
    geometry = (c.padding, c.stride, c.dilation, c.groups)
    if residual is not None and not self.act:
        return mkldnn._convolution_pointwise.binary(
            x, residual, self.packed, c.bias, *geometry, "add", 1.0, None, [], None
        )
    y = mkldnn._convolution_pointwise(x, self.packed, c.bias, *geometry, "swish" if self.act else "none", [], "")
    return y if residual is None else y.add_(residual)


def prepack(model: torch.nn.Module, x: Tensor) -> int:
    """Give every folded conv of ``model`` a weight reordered for its input at ``x``'s size and the fused forward."""
    shapes: dict[FoldedConv, tuple[int, ...]] = {}

    def note(module, args):
        shapes.setdefault(module, tuple(args[0].shape))  # returns None: the inputs stay as they are

    hooks = [m.register_forward_pre_hook(note) for m in model.modules() if isinstance(m, FoldedConv)]
    model(x)
    for hook in hooks:
        hook.remove()
    for module, shape in shapes.items():
        c = module.conv
        if not isinstance(c.padding, tuple):
            raise ValueError(f"{module}: string padding {c.padding!r} is not supported here")
        module.packed = mkldnn._reorder_convolution_weight(
            c.weight, c.padding, c.stride, c.dilation, c.groups, list(shape)
        )
        module.forward = types.MethodType(_fused_forward, module)
    return len(shapes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=ARCH)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ours, exemplars, theirs = stand_in_pair(args.model, args.img_size)
    eager = optimize_for_inference(ours, torch.bfloat16)
    packed = optimize_for_inference(ours, torch.bfloat16)
    x = mixed_images(exemplars, args.batch_size, seed=3).contiguous(memory_format=torch.channels_last)
    log(f"prepacked {prepack(packed, x)} convs for batch {args.batch_size}")
    test = mixed_images(exemplars, 4 * args.batch_size, seed=5)
    ref = reference(ours, test, precisions=(torch.bfloat16,))
    for name, model in (("eager bf16", eager), ("prepacked + fused", packed)):
        log(f"{name}: {compare(run_batched(model, test, batch=args.batch_size), ref, torch.bfloat16)}")
    timm_cl = channels_last(theirs)
    runs = {"timm eager fp32 channels_last": lambda: timm_cl(x), "eager bf16": lambda: eager(x)}
    runs["prepacked + fused"] = lambda: packed(x)
    times = paired_rounds(runs, args.rounds, warmup=2)
    base = times["timm eager fp32 channels_last"]
    for name, t in times.items():
        log(
            f"batch {args.batch_size} {name}: {1e3 * statistics.median(t):.0f} ms (range {1e3 * min(t):.0f}–"
            f"{1e3 * max(t):.0f}), {paired_ratio(base, t):.2f}× timm"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
