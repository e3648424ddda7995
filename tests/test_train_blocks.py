"""Training building blocks: AGC, parameter groups, LR schedule, EMA, and a few real optimisation steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from timm.optim import param_groups_layer_decay as timm_layer_decay
from timm.optim import param_groups_weight_decay as timm_weight_decay
from timm.utils.agc import adaptive_clip_grad as timm_agc

import effnetv2
from effnetv2.train import (
    adaptive_clip_grad_,
    apply_lr_scale,
    clip_model_grads_,
    cosine_with_warmup,
    create_ema,
    param_groups_layer_decay,
    param_groups_weight_decay,
)


def _param(value, grad) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def test_agc_hand_made_case():
    # unit 0: ‖w‖=5 → max 0.05, ‖g‖=0.5 → scaled by 0.1; unit 1: ‖w‖=0 → eps·λ=1e-5 > ‖g‖=5e-6, kept;
    # unit 2: ‖w‖=1 → max 0.01 > ‖g‖=1e-3, kept. Bias (1-D, whole tensor): ‖w‖=1 → 0.01, ‖g‖=0.5 → × 0.02.
    weight = _param([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], [[0.3, 0.4], [3e-6, 4e-6], [0.0, 1e-3]])
    bias = _param([0.6, 0.8], [0.3, 0.4])
    conv = _param([[[[3.0]], [[4.0]]]], [[[[6.0]], [[8.0]]]])  # (1, 2, 1, 1): one unit, ‖w‖=5, ‖g‖=10 → × 0.005
    no_grad = torch.nn.Parameter(torch.ones(2))
    adaptive_clip_grad_([weight, bias, conv, no_grad], clip_factor=0.01, eps=1e-3)
    torch.testing.assert_close(
        weight.grad, torch.tensor([[0.03, 0.04], [3e-6, 4e-6], [0.0, 1e-3]], dtype=torch.float64)
    )
    torch.testing.assert_close(bias.grad, torch.tensor([0.006, 0.008], dtype=torch.float64))
    torch.testing.assert_close(conv.grad, torch.tensor([[[[0.03]], [[0.04]]]], dtype=torch.float64))
    assert no_grad.grad is None


def test_agc_matches_timm_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (8, 1, 3, 3), (16, 8), (8,), (5, 3, 1, 1)]
    ours = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g) * 0.1)
        unit_scale = 10 ** (-5 * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g))  # 1e-5 .. 1
        p.grad = torch.randn(shape, generator=g) * unit_scale
        ours.append(p)
    theirs = [copy.deepcopy(p) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        b.grad = a.grad.clone()
    original = [p.grad.clone() for p in ours]
    adaptive_clip_grad_(ours, clip_factor=0.02)
    timm_agc(theirs, clip_factor=0.02)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    # the case must clip some units and leave others, or the comparison proves little
    changed = torch.cat(
        [
            (a.grad != o).flatten(1).any(1) if a.ndim > 1 else (a.grad != o).any()[None]
            for a, o in zip(ours, original, strict=True)
        ]
    )
    assert changed.any() and not changed.all(), changed


def test_clip_model_grads_skips_classifier():
    model = torch.nn.Module()
    model.body = torch.nn.Linear(3, 3)
    model.fc = torch.nn.Linear(3, 2)
    model.get_classifier = lambda: model.fc
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    clip_model_grads_(model, clip_factor=0.01)
    assert (model.fc.weight.grad == 100.0).all() and (model.fc.bias.grad == 100.0).all()
    assert (model.body.weight.grad < 1.0).all()


def _group_summary(groups) -> list[tuple[float, float, frozenset]]:
    return sorted(
        (round(g.get("lr_scale", 1.0), 12), g["weight_decay"], frozenset(id(p) for p in g["params"])) for g in groups
    )


def test_param_groups_match_timm(model):
    ours = param_groups_weight_decay(model, 1e-5)
    assert _group_summary(ours) == _group_summary(timm_weight_decay(model, 1e-5))
    no_decay = next(g for g in ours if g["weight_decay"] == 0.0)
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) > 100

    ours = param_groups_layer_decay(model, 0.05, layer_decay=0.8)
    theirs = timm_layer_decay(model, 0.05, layer_decay=0.8)
    assert _group_summary(ours) == _group_summary(theirs)
    scales = sorted({g["lr_scale"] for g in ours})
    assert scales[-1] == 1.0 and scales[0] < 1e-3  # 60 blocks + stem + head: many distinct layers
    apply_lr_scale(ours, 0.1)
    assert all(g["lr"] == pytest.approx(0.1 * g["lr_scale"]) for g in ours)


def test_cosine_with_warmup_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([dict(params=[p], lr=0.1)], lr=0.1)
    sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2, warmup_factor=0.01)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup: 0.001 → 0.1 linearly over 2 steps; then cosine over the remaining 8 steps
    expected = [0.001, 0.0505] + [0.05 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_ema_follows_formula():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = create_ema(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    ema.update_parameters(model)  # the first update copies; start averaging from the second
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * (before["0.weight"] + 1) + 0.1 * (before["0.weight"] + 2))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 0.9 * 2 + 0.1 * 4))


def test_loss_falls_from_checkpoint(checkpoint):
    """A few RW-recipe steps (SGD-Nesterov, AGC, no decay on norms/biases) on one fixed batch lower its loss."""
    torch.manual_seed(0)
    model = effnetv2.create_model("efficientnetv2_rw_m", checkpoint_path=checkpoint, num_classes=3).train()
    groups = apply_lr_scale(param_groups_weight_decay(model, 1e-5), 0.05)
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    x = torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        clip_model_grads_(model, 0.01)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses
