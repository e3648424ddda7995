"""Same weights in, same numbers out as timm (fp32, relative difference ≤ 2e-5)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import ARCH, assert_close, image_batch

import effnetv2


@pytest.mark.parametrize("size", [(128, 128), (97, 131), (320, 320)], ids=["128", "97x131", "320"])
def test_logits(model, timm_model, size):
    x = image_batch(2, *size)
    with torch.no_grad():
        assert_close(model(x), timm_model(x))


def test_forward_features_and_pre_logits(model, timm_model):
    x = image_batch(2, 112, 144)
    with torch.no_grad():
        ours, theirs = model.forward_features(x), timm_model.forward_features(x)
        assert ours.shape == (2, 2152, 4, 5)
        assert_close(ours, theirs)
        emb = model.forward_head(ours, pre_logits=True)
        assert emb.shape == (2, 2152)
        assert_close(emb, timm_model.forward_head(theirs, pre_logits=True))


def test_features_only_all_levels(features_pair):
    ours, theirs = features_pair
    x = image_batch(2, 96, 128)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert [t.shape[1] for t in a] == [32, 56, 80, 192, 328]
    assert [t.shape[-1] for t in a] == [64, 32, 16, 8, 4]
    assert len(a) == len(b) == 5
    for fa, fb in zip(a, b, strict=True):
        assert_close(fa, fb)


def test_features_only_subset(checkpoint):
    ours = effnetv2.create_model(ARCH, features_only=True, out_indices=(1, 3), checkpoint_path=checkpoint).eval()
    theirs = timm.create_model(
        ARCH, features_only=True, out_indices=(1, 3), pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))
    ).eval()
    assert ours.feature_info.channels() == theirs.feature_info.channels() == [56, 192]
    assert ours.feature_info.reduction() == theirs.feature_info.reduction() == [4, 16]
    assert ours.feature_info.module_name() == ["stages.1", "stages.4"]
    x = image_batch(1, 96, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert len(a) == len(b) == 2
    for fa, fb in zip(a, b, strict=True):
        assert_close(fa, fb)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(indices=2),
        dict(indices=[0, -1]),
        dict(indices=[1, 2], intermediates_only=True, stop_early=True),
    ],
    ids=["all", "last2", "first-last", "stop-early"],
)
def test_forward_intermediates(model, timm_model, kwargs):
    x = image_batch(1, 96, 96)
    with torch.no_grad():
        ours, theirs = model.forward_intermediates(x, **kwargs), timm_model.forward_intermediates(x, **kwargs)
    if kwargs.get("intermediates_only"):
        ours, theirs = (None, ours), (None, theirs)
    else:
        assert_close(ours[0], theirs[0])
    assert len(ours[1]) == len(theirs[1]) > 0
    for a, b in zip(ours[1], theirs[1], strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("num_classes", [10, 0])
def test_num_classes(checkpoint, num_classes):
    kwargs = dict(num_classes=num_classes)
    if num_classes:
        with pytest.warns(UserWarning, match="classifier not loaded"):
            ours = effnetv2.create_model(ARCH, checkpoint_path=checkpoint, **kwargs).eval()
    else:
        ours = effnetv2.create_model(ARCH, checkpoint_path=checkpoint, **kwargs).eval()
    theirs = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)), **kwargs)
    theirs.eval()
    if num_classes:  # both classifiers are fresh; compare the network with the same classifier weights
        ours.classifier.load_state_dict(theirs.classifier.state_dict())
    x = image_batch(2, 96, 96)
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (2, num_classes or 2152)
        assert_close(out, theirs(x))


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adaptation(checkpoint, in_chans):
    ours = effnetv2.create_model(ARCH, in_chans=in_chans, checkpoint_path=checkpoint).eval()
    theirs = timm.create_model(
        ARCH, in_chans=in_chans, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))
    ).eval()
    assert ours.stem[0].weight.shape[1] == in_chans
    assert_close(ours.stem[0].weight, theirs.conv_stem.weight)
    x = image_batch(2, 96, 96, channels=in_chans)
    with torch.no_grad():
        assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax", ""])
def test_global_pools(checkpoint, pool):
    kwargs = dict(global_pool=pool, num_classes=0 if pool == "" else 7)
    ours = effnetv2.create_model(ARCH, checkpoint_path=checkpoint, **kwargs).eval()
    theirs = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)), **kwargs)
    theirs.eval()
    if kwargs["num_classes"]:
        ours.classifier.load_state_dict(theirs.classifier.state_dict())
        assert ours.classifier.in_features == (4304 if pool == "catavgmax" else 2152)
    x = image_batch(2, 96, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        assert_close(a, b)
        assert_close(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            theirs.forward_head(theirs.forward_features(x), pre_logits=True),
        )
    if pool == "":
        assert a.shape == (2, 2152, 3, 3)


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, name_map=None):
    model.train()
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads


def test_train_mode_loss_gradients_and_bn_updates(fresh_pair, model):
    ours, theirs = fresh_pair
    before = model.state_dict()
    key_map = effnetv2.KeyMap(effnetv2.EFFICIENTNETV2_RW_M)
    x, target = image_batch(2, 96, 96), torch.tensor([3, 917])
    loss_a, grads_a = _train_step(ours, x, target)
    loss_b, grads_b = _train_step(theirs, x, target)
    assert_close(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) == 697
    for name, grad in grads_a.items():
        assert_close(grad, grads_b[key_map.to_timm(name)])
    theirs_state = theirs.state_dict()
    updated = 0
    for name, value in ours.state_dict().items():
        if "num_batches" in name:
            assert torch.equal(value, theirs_state[key_map.to_timm(name)]), name
        elif "running_" in name:
            assert_close(value, theirs_state[key_map.to_timm(name)])
            updated += not torch.equal(value, before[name])
    assert updated == 2 * 169  # every BatchNorm's mean and variance


def test_grad_checkpointing_same_gradients(model):
    plain, ckpt = copy.deepcopy(model), copy.deepcopy(model)
    ckpt.set_grad_checkpointing(True)
    x, target = image_batch(2, 96, 96), torch.tensor([1, 2])
    loss_a, grads_a = _train_step(plain, x, target)
    loss_b, grads_b = _train_step(ckpt, x, target)
    assert torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():
        assert_close(grads_b[name], grad, tol=1e-6)


def test_drop_path_identity_in_eval_and_matches_timm_in_train(checkpoint, model):
    dropping = effnetv2.create_model(ARCH, drop_path_rate=0.3, checkpoint_path=checkpoint).eval()
    x = image_batch(2, 96, 96)
    with torch.no_grad():
        assert torch.equal(dropping(x), model(x))
    # In train mode the per-block rates and the random draws are timm's: same seed, same output.
    theirs = timm.create_model(
        ARCH, drop_path_rate=0.3, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))
    )
    dropping.train()
    theirs.train()
    torch.manual_seed(123)
    a = dropping(x)
    torch.manual_seed(123)
    b = theirs(x)
    assert_close(a, b)
    torch.manual_seed(7)
    assert not torch.allclose(dropping(x), a)  # the draws really are random
