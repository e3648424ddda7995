"""Optimizer parameter groups: no weight decay on norms and biases, optional layer-wise LR decay (timm's rules)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from torch import nn

# timm's marker: a matcher whose suffix is this joins the group before it (e.g. the head joins the last block)
MATCH_PREV_GROUP = (99999,)


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float = 1e-5, no_weight_decay_list: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Two groups, as timm's ``param_groups_weight_decay``: 1-D params (norms, biases) get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in no_weight_decay_list else decay).append(param)
    return [dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=weight_decay)]


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name → layer index from ``model.group_matcher(coarse=False)`` (timm's ``group_parameters``).

    Names no regex matches (the classifier) land in the last layer; a ``MATCH_PREV_GROUP`` suffix merges a
    group into the one before it.
    """
    matchers = []
    for ordinal, spec in enumerate(model.group_matcher(coarse=False).values()):
        if spec is None:
            continue
        for regex, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            matchers.append((re.compile(regex), (ordinal,), suffix))

    def key(name: str) -> tuple[float, ...]:
        for regex, prefix, suffix in matchers:
            m = regex.match(name)
            if m:
                parts = [prefix, m.groups(), suffix]
                return tuple(float(v) for part in parts if part for v in part)
        return (float("inf"),)

    grouped: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        grouped[key(name)].append(name)
    result, layer = {}, -1
    for k in sorted(grouped):
        if layer < 0 or k[-1] != MATCH_PREV_GROUP[0]:
            layer += 1
        for name in grouped[k]:
            result[name] = layer
    return result


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    no_weight_decay_list: Collection[str] = (),
    layer_decay: float = 0.75,
) -> list[dict[str, Any]]:
    """timm's ``param_groups_layer_decay``: layer ``i`` of ``L`` gets ``lr_scale = layer_decay ** (L - 1 - i)``.

    Each group carries ``lr_scale``; :func:`apply_lr_scale` folds it into the group's ``lr`` so torch's
    optimizers and schedulers (which scale each group's initial LR) honour it.
    """
    ids = layer_ids(model)
    num_layers = max(ids.values()) + 1
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in no_weight_decay_list
        layer = ids.get(name, num_layers - 1)
        group_name = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if group_name not in groups:
            groups[group_name] = dict(
                lr_scale=layer_decay ** (num_layers - 1 - layer),
                weight_decay=0.0 if no_decay else weight_decay,
                params=[],
            )
        groups[group_name]["params"].append(param)
    return list(groups.values())


def apply_lr_scale(param_groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """Set each group's ``lr`` to ``lr * lr_scale`` (1 when absent); returns the same list."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return param_groups
