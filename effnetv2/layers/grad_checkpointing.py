"""Activation (gradient) checkpointing for the trunk: which activations to keep, which to recompute.

Three granularities, from the least recomputation to the least memory:

- ``"bn_act"``: every BatchNorm + SiLU keeps only its input and recomputes its output in the backward
  pass (:mod:`effnetv2.layers.bn_silu`); no block is re-run.
- ``"block"`` (timm's scheme, plus ``"bn_act"``): the stem, every block and the head are one segment each;
  the forward pass keeps each segment's input, the backward pass re-runs one segment at a time.
- ``"nested"`` (default): as ``"block"``, except that the stem and stage 0 form one outer segment that is
  re-run block by block in the backward pass (two levels). At 224 px stage 0 works on 112×112 maps, the
  largest of the network, and the backward pass peaks in stage 1, while stage 0's block inputs would
  still be held: nesting the front removes them from the peak. Nesting later stages too was measured
  to cost a third more time for no lower peak (their inputs are freed before the peak).

Recomputation restores BatchNorm running statistics afterwards, so a checkpointed step updates them once,
exactly as a plain step does (plain ``torch.utils.checkpoint`` would update them twice). Dropout and
stochastic depth draw the same random numbers in the recomputation (torch's RNG-state preservation).
Outputs, gradients and BatchNorm statistics are bit-identical to the plain model's at every granularity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

GRANULARITIES = ("bn_act", "block", "nested")


@contextlib.contextmanager
def _restore_norm_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put BatchNorm running statistics back as they were once a recomputation is done."""
    buffers = [
        buf
        for module in modules
        for sub in module.modules()
        if sub.training and getattr(sub, "track_running_stats", False)  # BatchNorm, SyncBatchNorm, ...
        for buf in (sub.running_mean, sub.running_var, getattr(sub, "num_batches_tracked", None))
        if buf is not None
    ]
    saved = [buf.clone() for buf in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(buffers, saved, strict=True):
                buf.copy_(value)


def _run(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    for module in modules:
        x = module(x)
    return x


def set_bn_act_recompute(model: nn.Module, enable: bool) -> None:
    """Switch the memory-efficient BN + SiLU of every conv-BN-act layer in ``model``."""
    for module in model.modules():
        if hasattr(module, "recompute_bn_act"):
            module.recompute_bn_act = enable


def checkpoint_head(head: nn.Module, x: Tensor, granularity: str) -> Tensor:
    """The head as its own segment (``"bn_act"``: run as is)."""
    return head(x) if granularity == "bn_act" else checkpoint_modules([head], x)


def checkpoint_modules(modules: Sequence[nn.Module], x: Tensor, run: Callable[..., Tensor] = _run) -> Tensor:
    """``run(modules, x)`` as one checkpointed segment: only ``x`` is kept for the backward pass."""
    modules = list(modules)
    return checkpoint(
        run,
        modules,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _restore_norm_stats(modules)),
    )


def _run_each_checkpointed(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    for module in modules:
        x = checkpoint_modules([module], x)
    return x


def checkpoint_blocks(blocks: Sequence[nn.Module], x: Tensor, nested: bool = False) -> Tensor:
    """Run ``blocks`` with one checkpointed segment each; ``nested``: all inside one outer segment."""
    if nested:
        return checkpoint_modules(blocks, x, run=_run_each_checkpointed)
    return _run_each_checkpointed(blocks, x)


def checkpoint_stages(
    stem: nn.Module, stages: Sequence[nn.Sequential], x: Tensor, granularity: str = "nested"
) -> list[Tensor]:
    """Stem then ``stages`` (at least one) with checkpointing; returns every stage's output.

    Returning them costs nothing: each is a segment input, kept anyway. (``"bn_act"`` needs the layers'
    ``recompute_bn_act`` flags set, as ``set_grad_checkpointing`` does; here it runs the modules as they are.)
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown checkpointing granularity {granularity!r}; choose one of {GRANULARITIES}")
    outputs: list[Tensor] = []
    for i, stage in enumerate(stages):
        if granularity == "bn_act":
            x = stage(stem(x) if i == 0 else x)
        elif i == 0 and granularity == "nested":
            x = checkpoint_blocks([stem, *stage], x, nested=True)
        else:
            x = checkpoint_blocks([stem, *stage] if i == 0 else list(stage), x)
        outputs.append(x)
    return outputs
