"""Leaner training: the memory-efficient BN+SiLU and two-level checkpointing change memory, never the numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCH, image_batch, import_script
from torch import nn
from torchvision.ops import Conv2dNormActivation, StochasticDepth

import effnetv2
from effnetv2.layers.blocks import conv_bn_act


def _step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(("momentum", "recompute"), [(0.1, True), (None, True), (0.1, False)])
def test_bn_silu_bit_identical_to_torchvision_layers(momentum, recompute):
    torch.manual_seed(0)
    ours = conv_bn_act(8, 16, 3, stride=2)
    ours.recompute_bn_act = recompute
    ours[1].momentum = momentum
    with torch.no_grad():
        ours[1].weight.uniform_(0.5, 1.5)
        ours[1].bias.uniform_(-0.5, 0.5)
    reference = Conv2dNormActivation(8, 16, 3, stride=2, activation_layer=nn.SiLU, bias=False)  # in-place SiLU
    reference.load_state_dict(ours.state_dict())
    reference[1].momentum = momentum
    x = torch.randn(4, 8, 10, 10) * 3 + 1
    for _ in range(2):  # two steps: running statistics and num_batches_tracked accumulate alike
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_a, out_b = ours(xa), reference(xb)
        assert torch.equal(out_a, out_b)
        grad = torch.randn_like(out_a)
        out_a.backward(grad)
        out_b.backward(grad)
        assert torch.equal(xa.grad, xb.grad)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(ours.named_buffers(), reference.buffers(), strict=True):
        assert torch.equal(a, b), name


def _saved_activations(layer: nn.Module, x: torch.Tensor, numel: int) -> int:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        layer(x)
    return saved.count(numel)


def test_bn_silu_saves_one_activation_instead_of_two():
    layer = conv_bn_act(8, 32, 1)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    mid = 2 * 32 * 16 * 16
    assert _saved_activations(layer, x, mid) == 2  # off by default: BN input + SiLU input, as torchvision
    layer.recompute_bn_act = True
    assert _saved_activations(layer, x, mid) == 1  # only the BN input
    layer.eval()  # eval mode (e.g. frozen BN) takes the plain path
    assert _saved_activations(layer, x, mid) == 2


@pytest.mark.parametrize("granularity", ["nested", "block", "bn_act"])
def test_checkpointed_step_bit_identical_with_one_bn_update(model, granularity):
    plain = copy.deepcopy(model).train()
    ckpt = copy.deepcopy(model).train()
    ckpt.set_grad_checkpointing(True, granularity=granularity)
    for m in (plain, ckpt):  # stochastic depth on: the recomputation must redraw the same masks
        for block in m.modules():
            if isinstance(block, StochasticDepth):
                block.p = 0.2
    x, target = image_batch(2, 64, 64), torch.tensor([1, 2])
    torch.manual_seed(5)
    loss_a, grads_a = _step(plain, x, target)
    torch.manual_seed(5)
    loss_b, grads_b = _step(ckpt, x, target)
    assert torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():
        assert torch.equal(grads_b[name], grad), name
    # Recomputation does not update BatchNorm statistics a second time.
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.equal(a, b), name


def test_checkpointed_features_and_intermediates(model):
    features = effnetv2.create_model(ARCH, features_only=True, out_indices=(1, 3))
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("stem.", "stages."))})
    ckpt = copy.deepcopy(features)
    ckpt.set_grad_checkpointing(True)
    x = image_batch(1, 64, 64)
    outs_a, outs_b = features(x), ckpt(x)
    for a, b in zip(outs_a, outs_b, strict=True):
        assert torch.equal(a, b)
    sum(o.sum() for o in outs_a).backward()
    sum(o.sum() for o in outs_b).backward()
    for (name, a), b in zip(features.named_parameters(), ckpt.parameters(), strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad), name

    clf = copy.deepcopy(model).train()
    clf.set_grad_checkpointing(True, granularity="block")
    final, inter = clf.forward_intermediates(x, indices=[0, 2])
    plain = copy.deepcopy(model).train()
    final_p, inter_p = plain.forward_intermediates(x, indices=[0, 2])
    assert torch.equal(final, final_p)
    assert [t.shape for t in inter] == [t.shape for t in inter_p] == [(1, 32, 32, 32), (1, 80, 8, 8)]


def test_granularity_is_checked(model):
    m = copy.deepcopy(model)
    with pytest.raises(ValueError, match="granularity"):
        m.set_grad_checkpointing(True, granularity="layer")
    m.set_grad_checkpointing(True, granularity="bn_act")
    assert m.stem.recompute_bn_act and m.stages[5][0].depthwise.recompute_bn_act
    m.set_grad_checkpointing(False)
    assert not m.grad_checkpointing and not m.stem.recompute_bn_act


def test_checkpointing_stores_less(model):
    """Peak live tensor bytes of a training step: nested < block (timm's scheme) < bn_act < plain."""
    bench = import_script("benchmark")
    x, target = image_batch(2, 96, 96), torch.tensor([1, 2])
    peaks = {}
    for granularity in ("plain", "bn_act", "block", "nested"):
        m = copy.deepcopy(model).train()
        if granularity != "plain":
            m.set_grad_checkpointing(True, granularity=granularity)
        peaks[granularity] = bench.peak_bytes(lambda m=m: _step(m, x, target), torch.device("cpu"))
    assert peaks["nested"] < peaks["block"] < peaks["bn_act"] < peaks["plain"], peaks
