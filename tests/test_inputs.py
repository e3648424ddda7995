"""Bad input to forward raises the type a Python user expects; the checks don't block scripting or export."""

from __future__ import annotations

import pytest
import torch

import effnetv2
from effnetv2.inference.compare import natural_images


@pytest.fixture(scope="module")
def small_models():
    return (
        effnetv2.create_model("efficientnetv2_rw_m").eval(),
        effnetv2.create_model("efficientnetv2_rw_m", features_only=True, in_chans=1).eval(),
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


def test_scripted_and_exported_models_keep_working(small_models):
    model, features = small_models
    x = natural_images(2, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(torch.jit.Error, match="expected 3 input channels, got 4"):
            scripted(torch.randn(1, 4, 64, 64))
        scripted_features = torch.jit.script(features)
        assert [f.shape[1] for f in scripted_features(torch.randn(1, 1, 64, 64))] == [32, 56, 80, 192, 328]
        batch = torch.export.Dim("batch", min=1, max=64)
        exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
        x3 = natural_images(3, 64, seed=1)
        torch.testing.assert_close(exported(x3), model(x3), rtol=1e-5, atol=1e-5)
