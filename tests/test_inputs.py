"""What a user passes: a bad batch to forward (another rank, channel count or dtype, not a tensor) or a bad
create_model argument raises the type a Python user expects and says what to do; the checks don't block scripting
or export."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import ARCH, assert_close

import effnetv2
from effnetv2.inference.compare import natural_images


@pytest.fixture(scope="module")
def small_models():
    return (
        effnetv2.create_model(ARCH).eval(),
        effnetv2.create_model(ARCH, features_only=True, in_chans=1).eval(),
    )


def test_wrong_rank_wrong_channels_wrong_dtype(small_models):
    model, features = small_models
    with pytest.raises(ValueError, match=r"expected a 4-D image batch \(N, C, H, W\), got a 3-D tensor"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        features(torch.randn(2, 3, 64, 64))
    with pytest.raises(TypeError, match=r"floating-point.*torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="5-D"):
        model.forward_intermediates(torch.randn(1, 1, 3, 64, 64))
    with pytest.raises(ValueError, match="stop_early=True needs intermediates_only=True"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), stop_early=True)


@pytest.fixture(scope="module")
def tiny_inputs():
    return natural_images(1, 64)  # the sample photo, normalised


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_batch_of_another_float_dtype_says_what_to_do(small_models, tiny_inputs, dtype):
    model = small_models[0]
    expected = (
        rf"expected a float32 batch \(the model's dtype\); got {dtype}: convert with x.float\(\) or use torch.autocast"
    )
    with pytest.raises(TypeError, match=expected):
        model(tiny_inputs.to(dtype))
    with pytest.raises(TypeError, match=expected):
        model.forward_intermediates(tiny_inputs.to(dtype))


def test_a_float64_model_names_its_own_dtype(tiny_inputs):
    model = effnetv2.create_model(ARCH, features_only=True, out_indices=(0,)).double().eval()
    with pytest.raises(
        TypeError, match=r"expected a float64 batch .* got torch.float32: convert with x.to\(torch.float64\)"
    ):
        model(tiny_inputs)
    with torch.no_grad():
        assert model(tiny_inputs.double())[0].dtype == torch.float64


def test_autocast_still_accepts_other_dtypes(small_models, tiny_inputs):
    model = small_models[0]
    with torch.no_grad():
        reference = model(tiny_inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out32 = model(tiny_inputs)  # the CLI's --amp bf16: float32 model, float32 inputs
            out16 = model(tiny_inputs.bfloat16())
    assert out32.dtype == out16.dtype == torch.bfloat16
    assert torch.equal(out32, out16)  # the first conv sees the same bfloat16 input either way
    assert bool(torch.isfinite(out32).all()) and reference.shape == out32.shape


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda x: x.tolist(), "list"),
        (lambda x: x.numpy(), "numpy.ndarray"),
        (lambda x: [x[0]], "list"),
        (lambda x: (x,), "tuple"),
    ],
)
def test_a_non_tensor_batch_says_what_to_pass(small_models, tiny_inputs, make, name):
    model = small_models[0]
    expected = rf"expected a torch.Tensor of shape \(B, C, H, W\); got {name}: use torch.as_tensor / torch.stack"
    with pytest.raises(TypeError, match=expected):
        model(make(tiny_inputs))


def test_a_numpy_array_message_is_not_an_attribute_error(small_models):
    model = small_models[0]
    with pytest.raises(TypeError) as info:
        model(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert not isinstance(info.value, AttributeError)


@pytest.mark.parametrize(
    ("out_indices", "expected"),
    [
        ("01", r"out_indices must be an int .* or a sequence of ints .*got str '01'"),
        (2.0, r"out_indices must be an int .*got float 2.0"),
        (["0", "1"], r"out_indices must hold ints .*got str '0', str '1'"),
        ((1, 2.5), r"out_indices must hold ints .*got float 2.5"),
        (True, r"out_indices must be an int .*got bool True"),
    ],
)
def test_out_indices_of_the_wrong_type(out_indices, expected):
    with pytest.raises(TypeError, match=expected):
        effnetv2.create_model(ARCH, features_only=True, out_indices=out_indices)


def test_out_indices_accepts_numpy_ints():
    f = effnetv2.create_model(ARCH, features_only=True, out_indices=[np.int64(1), 3])
    assert f.feature_info.out_indices == (1, 3)


def test_unknown_pretrained_cfg_overlay_keys_warn():
    with pytest.warns(UserWarning, match=r"does not know .*'fiel' \(did you mean 'file'\?\), 'zoom'") as record:
        model = effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(fiel="x.safetensors", zoom=2, crop_pct=0.9))
    assert len(record) == 1
    assert model.pretrained_cfg["crop_pct"] == 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known keys: no warning
        effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(hf_hub_revision="abc", test_crop_pct=1.0, notes=()))
    with pytest.warns(UserWarning, match=r"pretrained_cfg_overlay\['state_dict'\] is not supported"):
        effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(state_dict={}))


def test_scripted_and_exported_models_keep_working(small_models):
    model, features = small_models
    x = natural_images(2, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert_close(scripted(x), expected)  # the fp32 parity contract: another runtime, the same model
        with pytest.raises(torch.jit.Error, match="expected 3 input channels, got 4"):
            scripted(torch.randn(1, 4, 64, 64))
        scripted_features = torch.jit.script(features)
        assert [f.shape[1] for f in scripted_features(torch.randn(1, 1, 64, 64))] == [32, 56, 80, 192, 328]
        batch = torch.export.Dim("batch", min=1, max=64)
        exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
        x3 = natural_images(3, 64, seed=1)
        assert_close(exported(x3), model(x3))
