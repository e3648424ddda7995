"""The inference-only model from optimize_for_inference: same outputs, reduced precision that agrees, graphs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import ARCH, assert_close, import_script, rel_diff

import effnetv2
from effnetv2.optimize import optimize_for_inference

calibrated_model = import_script("calibrated_model")
IMG = 96


@pytest.fixture(scope="module")
def calibrated(model, timm_model):
    """The shared well-conditioned oracle with a 10-class prototype classifier, its exemplars, and timm's copy.

    A raw random network is chaotic: eager fp32 itself is ~1e-4 from fp64, so 1e-5 comparisons would be
    meaningless there (see scripts/calibrated_model.py).
    """
    ours = copy.deepcopy(model)
    exemplars = calibrated_model.smooth_images(10, IMG, seed=2)
    calibrated_model.prototype_classifier(ours, exemplars)
    theirs = copy.deepcopy(timm_model)
    theirs.reset_classifier(10)
    theirs.classifier.load_state_dict(ours.classifier.state_dict())
    return ours.eval(), exemplars, theirs.eval()


@pytest.fixture(scope="module")
def images(calibrated):
    return calibrated_model.mixed_images(calibrated[1], 24, seed=1)


def test_fp32_equals_the_model_and_leaves_it_untouched(calibrated, images):
    model = calibrated[0]
    before = copy.deepcopy(model.state_dict())
    model.train()  # the copy is eval-only; the caller's model keeps its mode
    fast = optimize_for_inference(model)
    assert model.training and not fast.training
    model.eval()
    x = images[:4]
    with torch.inference_mode():
        expected = model(x)
        out = fast(x)
        assert out.dtype == torch.float32
        assert_close(out, expected, tol=1e-5)
        features = fast.forward_features(x)
        assert_close(features, model.forward_features(x), tol=1e-5)
        assert_close(fast.forward_head(features, pre_logits=True), model.forward_head(features, pre_logits=True), 1e-5)
    # BatchNorm is folded away and the caller's model is unchanged.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fast.num_classes == model.num_classes == 10 and fast.num_features == 2152
    assert fast.pretrained_cfg == model.pretrained_cfg and fast.pretrained_cfg is not model.pretrained_cfg


def test_channels_first_path_equals_too(calibrated, images):
    model = calibrated[0]
    fast = optimize_for_inference(model, channels_last=False)
    with torch.inference_mode():
        assert_close(fast(images[:2]), model(images[:2]), tol=1e-5)


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 3)])
def test_features_only(calibrated, images, out_indices):
    features = effnetv2.create_model(ARCH, features_only=True, out_indices=out_indices).eval()
    trunk = {k: v for k, v in calibrated[0].state_dict().items() if k.startswith(("stem.", "stages."))}
    features.load_state_dict(trunk)
    fast = optimize_for_inference(features)
    assert fast.feature_info.channels() == features.feature_info.channels()
    x = images[:2]
    with torch.inference_mode():
        expected, out = features(x), fast(x)
    assert len(out) == len(expected) == len(out_indices)
    for a, b in zip(out, expected, strict=True):
        assert a.dtype == torch.float32
        assert_close(a, b, tol=1e-5)


@pytest.mark.filterwarnings("ignore:this CPU has no native bfloat16")
def test_bfloat16_agrees_with_fp32_on_natural_images(calibrated, images):
    """Judged against timm's model cast to bfloat16 on the same inputs, not a fixed tolerance: how far bf16 lands
    from fp32 depends on the CPU's kernels (fp32 emulation on AVX2, native bf16 dot products on AVX512-BF16/AMX)."""
    model, _, theirs = calibrated
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    with torch.inference_mode():
        expected = model(images)
        out = fast(images)
        assert fast(images[:1].bfloat16()).dtype == torch.bfloat16  # outputs come back in the input's dtype
        timm_bf16 = copy.deepcopy(theirs).bfloat16()(images.bfloat16()).float()
    assert out.dtype == torch.float32
    preds = expected.argmax(1)
    # The check is not vacuous: fp32 predicts many classes, some by a hair (mixed images).
    assert preds.unique().numel() >= 6
    margins = expected.topk(2, dim=1).values.diff(dim=1).abs()[:, 0]
    assert margins.min() < 0.1 * margins.max()
    # Ours is no farther from fp32 than timm's all-bf16 model (BatchNorm folded into the convs rounds less)...
    ours_err, timm_err = rel_diff(out, expected), rel_diff(timm_bf16, expected)
    assert 1e-4 < ours_err < 2 * timm_err, (ours_err, timm_err)
    # ...and predicts as fp32 does on every image whose fp32 top-2 margin is beyond twice timm's bf16 error there.
    clear = margins > 2 * (timm_bf16 - expected).abs().amax(1)
    assert clear.sum() >= len(images) // 3, (margins, timm_err)
    assert torch.equal(out.argmax(1)[clear], preds[clear])


def test_scriptable_and_exportable_without_onednn_ops(calibrated, images):
    fast = optimize_for_inference(calibrated[0])
    x = images[:2]
    with torch.inference_mode():
        expected = fast(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in recent torch
        scripted = torch.jit.script(fast)
    exported = torch.export.export(fast, (x,))
    # Graphs get plain aten ops (ONNX and other runtimes know them), not the fused oneDNN CPU kernels.
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets), targets
    assert "aten.conv2d.default" in targets
    with torch.inference_mode():
        assert_close(scripted(x), expected, tol=1e-5)
        assert_close(exported.module()(x), expected, tol=1e-5)


def test_features_only_exportable():
    fast = optimize_for_inference(effnetv2.create_model(ARCH, features_only=True, out_indices=(2, 4)).eval())
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(fast)
    exported = torch.export.export(fast, (x,))
    with torch.inference_mode():
        shapes = [tuple(f.shape) for f in scripted(x)]
        assert shapes == [tuple(f.shape) for f in exported.module()(x)] == [(1, 80, 8, 8), (1, 328, 2, 2)]


def test_bad_use_gives_clear_errors(calibrated):
    model = calibrated[0]
    with pytest.raises(TypeError, match="EfficientNetV2"):
        optimize_for_inference(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        optimize_for_inference(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="CUDA"):
        optimize_for_inference(model, dtype=torch.float16)
    fast = optimize_for_inference(model)
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
    fast.eval()  # allowed
    with pytest.raises(ValueError, match="input channels"):
        fast(torch.randn(1, 4, 64, 64))


def test_compiled_copy_freezes_its_weights_into_fused_onednn_kernels():
    """compile=True on the CPU freezes the weights, so inductor prepacks them for oneDNN and fuses conv + SiLU/add:
    torch.compile(options={"freezing": True}) would leave them as graph inputs and run plain convolutions."""
    torch.manual_seed(0)
    model = calibrated_model.condition(
        effnetv2.create_model("tf_efficientnetv2_b0"), calibrated_model.smooth_images(4, 64, seed=1)
    ).eval()
    plain = optimize_for_inference(model)
    fast = optimize_for_inference(model, compile=True)
    x = calibrated_model.smooth_images(2, 64, seed=2)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        out = fast(x)
    kernels = {e.name for e in prof.events()}
    assert any("_convolution_pointwise" in k for k in kernels), sorted(kernels)
    with torch.inference_mode():
        assert_close(out, plain(x), tol=1e-4)
    assert fast._orig_mod.num_classes == fast.num_classes == 1000 and fast.pretrained_cfg == plain.pretrained_cfg
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_exported_from_package():
    assert effnetv2.optimize_for_inference is optimize_for_inference
