"""The inference-only model from optimize_for_inference: same outputs, reduced precision that agrees, graphs.

Every number is judged by the project's one comparison (effnetv2.inference.compare): against an fp64 copy of the
model on natural-looking images, within 4x the eager model's own error in the same precision.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
import torch._inductor.config as inductor_config
from conftest import ARCH, Method
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import effnetv2
import effnetv2.inference.folded as optimize_module
from effnetv2 import testing as calibrated_model
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, judge, natural_images, reference, run_batched
from effnetv2.inference.compiled import FrozenCompiled, cpu_inductor_options

IMG = 96


@pytest.fixture(scope="module")
def calibrated(model, timm_model):
    """The shared well-conditioned oracle with a 10-class prototype classifier, its exemplars, and timm's copy.

    A raw random network is chaotic: eager fp32 itself is ~1e-4 from fp64, so 1e-5 comparisons would be
    meaningless there (see effnetv2/testing.py).
    """
    ours = copy.deepcopy(model)
    exemplars = calibrated_model.smooth_images(10, IMG, seed=2)
    calibrated_model.prototype_classifier(ours, exemplars)
    theirs = copy.deepcopy(timm_model)
    theirs.reset_classifier(10)
    theirs.classifier.load_state_dict(ours.classifier.state_dict())
    return ours.eval(), exemplars, theirs.eval()


def assert_accepted(model: nn.Module, candidate, images: torch.Tensor, precision=None) -> None:
    comparison = judge(model, candidate, images, precision)
    assert comparison.accepted, comparison.describe()


@contextlib.contextmanager
def fold_without_eps():
    """A planted bug: BatchNorm folded into the convs without its eps."""
    original = optimize_module.fuse_conv_bn_eval

    def wrong(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        bn = copy.deepcopy(bn)
        bn.eps = 0.0
        return original(conv, bn)

    optimize_module.fuse_conv_bn_eval = wrong
    try:
        yield
    finally:
        optimize_module.fuse_conv_bn_eval = original


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
        assert fast(x).dtype == torch.float32
    assert_accepted(model, fast, x)
    features = Method(fast, "forward_features")
    assert_accepted(Method(model, "forward_features"), features, x)
    head = Method(model, "forward_head", pre_logits=True)
    with torch.inference_mode():
        maps = model.forward_features(x)
    assert_accepted(head, Method(fast, "forward_head", pre_logits=True), maps)
    # BatchNorm is folded away and the caller's model is unchanged.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fast.num_classes == model.num_classes == 10 and fast.num_features == 2152
    assert fast.pretrained_cfg == model.pretrained_cfg and fast.pretrained_cfg is not model.pretrained_cfg


def test_channels_first_path_equals_too(calibrated, images):
    model = calibrated[0]
    assert_accepted(model, optimize_for_inference(model, channels_last=False), images[:2])


def test_a_fold_without_batchnorm_eps_is_refused(calibrated, images):
    """The comparison sees a planted bug in the fold (BatchNorm eps 1e-5 left out: ~1e-3 of the logits)."""
    with fold_without_eps():
        wrong = optimize_for_inference(calibrated[0])
    comparison = judge(calibrated[0], wrong, images[:4])
    assert not comparison.accepted and comparison.error > 100 * comparison.eager_error, comparison.describe()


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 3)])
def test_features_only(calibrated, images, out_indices):
    features = effnetv2.create_model(ARCH, features_only=True, out_indices=out_indices).eval()
    trunk = {k: v for k, v in calibrated[0].state_dict().items() if k.startswith(("stem.", "stages."))}
    features.load_state_dict(trunk)
    fast = optimize_for_inference(features)
    assert fast.feature_info.channels() == features.feature_info.channels()
    x = images[:2]
    with torch.inference_mode():
        out = fast(x)
    assert len(out) == len(out_indices) and all(a.dtype == torch.float32 for a in out)
    assert_accepted(features, fast, x)


def bf16_comparison(model: nn.Module, images: torch.Tensor):
    """The bfloat16 copy against fp64, held to the eager model cast to bfloat16 (its error depends on the CPU's
    kernels: fp32 emulation on AVX2, native bf16 dot products on AVX512-BF16/AMX; the yardstick runs on the same)."""
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    ref = reference(model, images, precisions=(torch.bfloat16,))
    with torch.inference_mode():
        out = run_batched(fast, images)
    assert out[0].dtype == torch.float32
    return compare(out, ref, torch.bfloat16), ref


@pytest.mark.filterwarnings("ignore:this CPU has no native bfloat16")
def test_bfloat16_within_bfloat16s_own_error_on_natural_images(calibrated, images):
    model = calibrated[0]
    comparison, ref = bf16_comparison(model, images)
    assert comparison.accepted, comparison.describe()
    assert comparison.error > 1e3 * ref.eager_error  # really bfloat16
    # The check is not vacuous: fp64 predicts many classes, some by a hair (mixed images).
    fp64 = ref.fp64[0]
    assert fp64.argmax(1).unique().numel() >= 6
    margins = fp64.topk(2, dim=1).values.diff(dim=1).abs()[:, 0]
    assert margins.min() < 0.1 * margins.max()
    with torch.inference_mode():  # outputs come back in the input's dtype
        assert optimize_for_inference(model, dtype=torch.bfloat16)(images[:1].bfloat16()).dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:this CPU has no native bfloat16")
@pytest.mark.parametrize("planted", [False, True])
def test_bfloat16_check_sees_a_fold_without_batchnorm_eps(planted):
    """On tf_efficientnetv2_b0 (BatchNorm eps 1e-3) dropping eps from the fold moves the logits ~10x bfloat16's own
    error: the bfloat16 check refuses it. (rw_m's eps 1e-5 is below bfloat16's resolution; the fp32 check sees it.)"""
    torch.manual_seed(0)
    model = calibrated_model.condition(
        effnetv2.create_model("tf_efficientnetv2_b0"), calibrated_model.smooth_images(16, 128, seed=1)
    )
    exemplars = calibrated_model.smooth_images(10, 128, seed=2)
    calibrated_model.prototype_classifier(model, exemplars)
    images = torch.cat([natural_images(4, 128), calibrated_model.mixed_images(exemplars, 4)])
    with fold_without_eps() if planted else contextlib.nullcontext():
        comparison, _ = bf16_comparison(model.eval(), images)
    assert comparison.accepted != planted, comparison.describe()


def test_scriptable_and_exportable_without_onednn_ops(calibrated, images):
    fast = optimize_for_inference(calibrated[0])
    x = images[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in recent torch
        scripted = torch.jit.script(fast)
    exported = torch.export.export(fast, (x,))
    # Graphs get plain aten ops (ONNX and other runtimes know them), not the fused oneDNN CPU kernels.
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets), targets
    assert "aten.conv2d.default" in targets
    assert_accepted(calibrated[0], scripted, x)
    assert_accepted(calibrated[0], exported.module(), x)


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
    assert_accepted(model, lambda x: out, x)
    assert fast._orig_mod.num_classes == fast.num_classes == 1000 and fast.pretrained_cfg == plain.pretrained_cfg
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_compile_takes_a_torch_compile_mode():
    """compile="max-autotune" reaches torch.compile (inductor times its own GEMM kernels: its autotune counter moves;
    the kernels are called from its C++ wrapper)
    and the result stays as close to fp64 as the eager module; a name that is no mode is refused before any work."""
    model = effnetv2.create_model("tf_efficientnetv2_b0").eval()
    tuned = optimize_for_inference(model, compile="max-autotune")
    assert isinstance(tuned, FrozenCompiled) and tuned.mode == "max-autotune" and "mode='max-autotune'" in repr(tuned)
    assert optimize_for_inference(model, compile=True).mode == "default"
    for bad, error in (("fastest", ValueError), (3, TypeError)):
        with pytest.raises(error, match="torch.compile mode"):
            optimize_for_inference(model, compile=bad)
    with pytest.raises(ValueError, match="FrozenCompiled compiles"):
        FrozenCompiled(model, False)
    # end to end on a small head (max-autotune on a whole network compiles for minutes on 2 cores)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(3 * 16 * 16, 96), nn.SiLU(), nn.Linear(96, 10)).eval()
    x = calibrated_model.smooth_images(8, 16, seed=3).flatten(1)
    before = counters["inductor"]["select_algorithm_autotune"]
    # inductor's on-disk caches would replay an earlier run's compile and timings without counting them
    with inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False), torch.inference_mode():
        out, code = run_and_get_code(FrozenCompiled(head, "max-autotune"), x)  # without autograd, as freezing needs
    assert_accepted(head, lambda x: out, x)
    assert counters["inductor"]["select_algorithm_autotune"] > before
    # the kernels are called from inductor's C++ wrapper, not from Python; no CUDA graphs asked for on the CPU
    assert len(code) == 1 and "CppWrapperCodeCache" in code[0] and "inductor_entry_impl" in code[0]
    assert cpu_inductor_options("max-autotune") == {
        "max_autotune": True,
        "coordinate_descent_tuning": True,
        "cpp_wrapper": True,
    }
    assert cpu_inductor_options("default") == {"cpp_wrapper": True}


def test_exported_from_package():
    assert effnetv2.optimize_for_inference is optimize_for_inference
