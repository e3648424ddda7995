"""torch.fx (issue 17): every model traces (torch.fx, torchvision's feature extraction), runs as it does eagerly,
scripts once traced and keeps its input errors; and the checks timm's tests/test_models.py makes of a model,
in this project's words, for rw_m and a TF-padded network."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import assert_close
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import effnetv2
from effnetv2.inference.compare import natural_images

TRACER = dict(param_shapes_constant=True)  # as timm's tests trace


def fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """What timm's tests build: a feature extractor returning the graph's output node(s), in eval or train mode."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**TRACER).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes]
    return create_feature_extractor(
        model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER
    )


@pytest.mark.parametrize("name", effnetv2.list_models())
def test_every_architecture_traces_as_it_runs(name):
    """Feature levels and logits taken from the FX graph equal the eager model's, at a size that is not a multiple
    of 32 (TF "same" padding computes its padding from the traced shape); the features model traces too."""
    torch.manual_seed(0)
    model = effnetv2.create_model(name).eval()
    levels = [lvl["module"] for lvl in model.feature_info]
    extractor = create_feature_extractor(model, return_nodes={**{m: m for m in levels}, "classifier": "logits"})
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        traced = extractor(x)
        logits, maps = model(x), model.forward_intermediates(x, intermediates_only=True)
    assert torch.equal(traced["logits"], logits)
    for level, expected in zip(levels, maps, strict=True):
        assert torch.equal(traced[level], expected), level
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert all(any(n.startswith(f"{level}.") for n in eval_nodes) for level in levels)  # the levels' nodes
    assert eval_nodes[-1] == train_nodes[-1] == "classifier"

    features = effnetv2.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    features.load_state_dict(model.state_dict(), strict=False)  # the same weights (no head)
    with torch.no_grad():
        ours = torch.fx.symbolic_trace(features)(x)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, (maps[1], maps[3]), strict=True))


@pytest.mark.parametrize("name", ["efficientnetv2_rw_t", "tf_efficientnetv2_b0", "gc_efficientnetv2_rw_t"])
def test_traced_models_script_and_keep_their_input_errors(name):
    torch.manual_seed(0)
    model = effnetv2.create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    scripted = torch.jit.script(traced)
    x = natural_images(2, (64, 80))
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        assert_close(scripted(x), model(x))  # the fp32 parity contract: TorchScript's runtime, the same model
    for bad, message in (
        (torch.randn(3, 64, 64), "expected a 4-D image batch (N, C, H, W), got a 3-D tensor of shape [3, 64, 64]"),
        (torch.randn(1, 4, 64, 64), "expected 3 input channels, got 4"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "expected a floating-point image tensor"),
    ):
        for runner in (model, traced):  # the traced module checks as the eager one does, with the same words
            with pytest.raises((ValueError, TypeError), match=re.escape(message)):
                runner(bad)
        with pytest.raises(torch.jit.Error, match="expected"):  # TorchScript raises its own type, same text
            scripted(bad)


@pytest.mark.parametrize("name", ["efficientnetv2_rw_m", "tf_efficientnetv2_b0"])
def test_the_checks_of_timms_model_tests(name):
    """timm's tests/test_models.py for one model: forward, backward, default cfg, TorchScript, features (native
    and getter), forward_intermediates, FX forward, FX backward, FX + TorchScript, fx features scripted."""
    torch.manual_seed(0)
    model = effnetv2.create_model(name).eval()
    cfg = model.default_cfg
    x = natural_images(1, 96)

    # forward, and gradient checkpointing gives the same output
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        assert_close(model(x), out)
        model.set_grad_checkpointing(False)
    assert out.shape == (1, cfg["num_classes"]) and not out.isnan().any()

    # default cfg: pool size at the cfg's input size, head sizes, classifier and first conv names
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    full = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        unpooled = model.forward_features(full)
        pre = model.forward_head(unpooled, pre_logits=True)
        assert unpooled.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre.shape == (1, model.head_hidden_size)
        state = model.state_dict()
        assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(full).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(full).shape == unpooled.shape
        bare = effnetv2.create_model(name, num_classes=0, global_pool="").eval()
        assert bare(full).shape == unpooled.shape

    # backward: every parameter gets a gradient
    model = effnetv2.create_model(name, num_classes=42).train()
    model(torch.randn(2, 3, 96, 96)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())

    # TorchScript
    with torch.no_grad():
        assert torch.jit.script(model.eval())(x).shape == (1, 42)

    # features: native and 'getter', channel counts and spatial sizes
    for feature_cls in (None, "getter"):
        features = effnetv2.create_model(name, features_only=True, feature_cls=feature_cls).eval()
        with torch.no_grad():
            maps = features(x)
        channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
        assert len(maps) == len(channels) >= 3
        for c, r, m in zip(channels, reductions, maps, strict=True):
            assert m.shape[:2] == (1, c) and max(m.shape[2:]) <= math.ceil(96 / r) + 1 and not m.isnan().any()

    # forward_intermediates: final features equal forward_features, with and without checkpointing
    model = effnetv2.create_model(name).eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert len(intermediates) == len(model.feature_info)
        assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        assert_close(model.forward_intermediates(x)[0], final)
        model.set_grad_checkpointing(False)

    # FX forward (exact), FX backward (every parameter), FX + TorchScript
    with torch.inference_mode():
        assert torch.equal(torch.cat(tuple(fx_model(model)(x).values())), model(x))
    train_model = effnetv2.create_model(name, num_classes=42).train()
    traced = fx_model(train_model, train=True)
    outputs = torch.cat(tuple(traced(torch.randn(2, 3, 96, 96)).values()))
    outputs.mean().backward()
    assert outputs.shape[-1] == 42 and all(p.grad is not None for p in traced.parameters())
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in train_model.parameters())
    with torch.inference_mode():
        assert torch.jit.script(fx_model(model))(x)["classifier"].shape == out.shape
        fx_features = torch.jit.script(effnetv2.create_model(name, features_only=True, feature_cls="fx").eval())
        assert [m.shape for m in fx_features(x)] == [m.shape for m in maps]


def test_feature_classes_give_the_same_maps():
    torch.manual_seed(0)
    native = effnetv2.create_model("tf_efficientnetv2_b0", features_only=True, out_indices=(1, 3, 4)).eval()
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        expected = native(x)
    for feature_cls, prefix in (("getter", "model."), ("fx", "graph_module.")):
        model = effnetv2.create_model(
            "tf_efficientnetv2_b0", features_only=True, out_indices=(1, 3, 4), feature_cfg={"feature_cls": feature_cls}
        ).eval()
        inner = model.model if feature_cls == "getter" else model.graph_module
        inner.load_state_dict(native.state_dict(), strict=False)
        assert all(k.startswith(prefix) for k in model.state_dict())  # timm's key layout for the wrapper
        assert "model.head.0.weight" not in model.state_dict()  # pruned: no level needs the head
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(model(x), expected, strict=True))
        assert model.feature_info.channels() == native.feature_info.channels()
        with pytest.raises(ValueError, match="expected 3 input channels, got 4"):  # the checks are in the graph
            model(torch.randn(1, 4, 64, 64))
    for kwargs, error, message in (
        (dict(features_only=True, feature_cls="hook"), ValueError, "feature_cls='hook' is not supported by effnetv2"),
        (dict(feature_cls="getter"), ValueError, "needs features_only=True"),
        (dict(features_only=True, feature_cfg={"flatten_sequential": True}), TypeError, "takes 'feature_cls' only"),
    ):
        with pytest.raises(error, match=message):
            effnetv2.create_model("tf_efficientnetv2_b0", **kwargs)
