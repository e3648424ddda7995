"""Every registered EfficientNetV2 is timm's (issue 13): the same parameters under the key map, the same feature
levels, and the same outputs on well-conditioned weights, at a size that is a multiple of 32 and one that is not."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import HF_CACHE_DIR, assert_close, image_batch, populate_hf_cache
from test_train_cli import FAST, make_image_folder
from timm.models import save_for_hf

import effnetv2
from effnetv2 import testing as calibrated_model
from effnetv2.cli import main
from effnetv2.detection import FeatureBackbone
from effnetv2.inference.compare import judge, model_natural_images
from effnetv2.inference.folded import INFERENCE_BLOCKS
from effnetv2.layers import BLOCK_TYPES
from effnetv2.registry import PRETRAINED_CFGS, UNTRAINED_CFGS, get_pretrained_cfg
from effnetv2.spec import SPECS
from effnetv2.weights.convert import spec_for
from effnetv2.weights.key_map import KeyMap
from effnetv2.weights.loading import load_state_dict_into

FAMILY = sorted(SPECS)
# rw_m has the rest of the suite; the others are built here once each (XL: 208 M parameters).
OTHERS = [name for name in FAMILY if name != "efficientnetv2_rw_m"]


def test_registry_lists_the_family():
    assert effnetv2.list_models() == FAMILY
    assert effnetv2.list_models(pretrained=True) == sorted(PRETRAINED_CFGS)
    assert set(FAMILY) == {cfg["architecture"] for cfg in [*PRETRAINED_CFGS.values(), *UNTRAINED_CFGS.values()]}
    assert set(BLOCK_TYPES.values()) == set(INFERENCE_BLOCKS)  # every block kind has its inference form


def norm_eps(model: torch.nn.Module, to_timm) -> dict[str, float]:
    norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
    return {to_timm(f"{name}.weight"): m.eps for name, m in model.named_modules() if isinstance(m, norms)}


@pytest.mark.parametrize("name", FAMILY)
def test_parameters_keys_and_levels_are_timms(name):
    with torch.device("meta"):  # shapes only: nothing allocated, XL included
        ours, theirs = effnetv2.create_model(name), timm.create_model(name)
    key_map = KeyMap(ours.spec)
    assert {key_map.to_timm(k): v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # every norm's eps, by timm key: a GC LayerNorm eps off by 10x moves the outputs by only ~2e-7 relative
    assert norm_eps(ours, key_map.to_timm) == norm_eps(theirs, lambda key: key)
    timm_levels = [(f["num_chs"], f["reduction"], f["module"].replace("blocks", "stages")) for f in theirs.feature_info]
    assert [(f["num_chs"], f["reduction"], f["module"]) for f in ours.feature_info] == timm_levels
    # convert_checkpoint finds the architecture from a checkpoint's keys and shapes, in either key format
    # (a tf_ port has the tensors of its PyTorch-padded twin, registered first: same keys, same conversion)
    found = {spec_for(theirs.state_dict()).name, spec_for(ours.state_dict()).name}
    assert found == {name if name.removeprefix("tf_") not in SPECS else name.removeprefix("tf_")}


@pytest.mark.parametrize("name", OTHERS)
def test_outputs_equal_timms(name):
    torch.manual_seed(0)
    theirs = calibrated_model.condition(timm.create_model(name), calibrated_model.smooth_images(8, 96, seed=1)).eval()
    ours = effnetv2.create_model(name).eval()
    load_state_dict_into(ours, theirs.state_dict(), source=f"timm {name}")
    # The folded inference copy, on the smaller networks: they hold every block kind and both padding modes.
    fast = effnetv2.optimize_for_inference(ours) if sum(p.numel() for p in ours.parameters()) < 30e6 else None
    for size in (64, 72):  # 72: not a multiple of 32; TF "same" padding is asymmetric on the even sizes in between
        x = image_batch(2, size, size)
        with torch.no_grad():
            final, levels = ours.forward_intermediates(x)
            timm_final, timm_levels = theirs.forward_intermediates(x)
            assert_close(final, timm_final)  # forward_features
            for a, b in zip(levels, timm_levels, strict=True):
                assert_close(a, b)
            logits, timm_logits = ours.forward_head(final), theirs.forward_head(timm_final)
            assert logits.std() > 0.5  # conditioned: logits of a few units, not saturated or vanishing
            assert_close(logits, timm_logits)
            assert_close(ours(x), timm_logits)
            assert_close(ours.forward_head(final, pre_logits=True), theirs.forward_head(timm_final, pre_logits=True))
        if fast is not None:  # another rounding (BatchNorm folded in): judged against fp64, as every copy is
            comparison = judge(ours, fast, model_natural_images(ours, 4, size))
            assert comparison.accepted, comparison.describe()


# torch.export passes too (checked by hand: 35 s here, more than the suite's budget allows)
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_tf_same_padding_exports_with_dynamic_sizes(format, tmp_path):
    """TF "same" padding depends on the input size: exports keep it dynamic (verified at a second, non-square size,
    with odd and even feature-map sizes), as timm's padding does not always manage."""
    model = effnetv2.create_model("tf_efficientnetv2_b0").eval()
    suffix = {"onnx": ".onnx", "torchscript": ".pt"}[format]
    report = effnetv2.export_model(model, tmp_path / f"b0{suffix}", format, img_size=72, dynamic_size=True)
    assert report.checks and all(c.comparison.accepted for c in report.checks)  # within 4x eager's own error
    assert len(report.checks) >= 3, report.summary()  # batch 1, batch 3, another height and width


@pytest.mark.parametrize("name", ["gc_efficientnetv2_rw_t", "tf_efficientnetv2_b0"])
def test_fresh_models_are_initialised(name):
    """Layers are built on the meta device and allocated uninitialised: every parameter and buffer must be set."""
    model = effnetv2.create_model(name)
    for key, value in model.state_dict().items():
        assert torch.isfinite(value.float()).all(), key
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
    bns = [m for m in norms if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.running_var.eq(1).all() and m.running_mean.eq(0).all() and m.num_batches_tracked == 0 for m in bns)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(image_batch(1, 64, 64))).all()


@pytest.mark.parametrize("tag", ["gc_efficientnetv2_rw_t.agc_in1k", "tf_efficientnetv2_b0.in1k"])
def test_the_library_follows_the_registry(tag, tmp_path, capsys):
    """Beyond the forward pass: the Hub (published repo and hf-hub: name, read by timm and by us from one offline
    cache), saving in timm's format (timm reloads it), gradient checkpointing, the detection backbone, ONNX
    export, and the CLI's info and train work for other architectures than rw_m."""
    name = tag.split(".")[0]
    torch.manual_seed(0)
    timm_made = timm.create_model(name)
    timm_made = calibrated_model.condition(timm_made, calibrated_model.smooth_images(8, 96, seed=1)).eval()
    save_for_hf(timm_made, tmp_path / "published", safe_serialization=True)
    repo = get_pretrained_cfg(tag)[1]["hf_hub_id"]
    assert repo == f"timm/{tag}"
    populate_hf_cache(HF_CACHE_DIR, repo, tmp_path / "published")
    x = image_batch(2, 64, 64)
    with torch.no_grad():
        expected = timm.create_model(tag, pretrained=True).eval()(x)
        assert_close(timm_made(x), expected)  # timm read the cache
        for source in (tag, name, f"hf-hub:{repo}"):  # `name`: the architecture's default tag
            assert_close(effnetv2.create_model(source, pretrained=True).eval()(x), expected)

    model = effnetv2.create_model(tag, pretrained=True)
    effnetv2.save_pretrained(model, tmp_path / "saved")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True).eval()
    with torch.no_grad():
        assert_close(model.eval()(x), theirs(x))

    model.train()
    plain = torch.autograd.grad(model(x).logsumexp(1).sum(), list(model.parameters()))
    model.set_grad_checkpointing(True)
    checkpointed = torch.autograd.grad(model(x).logsumexp(1).sum(), list(model.parameters()))
    for a, b in zip(checkpointed, plain, strict=True):
        assert_close(a, b)  # the same gradients, recomputed in the backward pass

    backbone = FeatureBackbone.from_name(name, fpn_channels=64).eval()  # levels 1-4 and an FPN over them
    with torch.no_grad():
        maps = backbone(x)
    assert list(maps) == ["0", "1", "2", "3", "pool"] and all(m.shape[1] == 64 for m in maps.values())
    assert [m.shape[-1] for m in maps.values()] == [16, 8, 4, 2, 1]  # strides 4..32 of 64 px, and the pooled level

    report = effnetv2.export_model(model.eval(), tmp_path / "model.onnx", "onnx", img_size=64)
    assert report.checks and all(c.comparison.accepted for c in report.checks)  # within 4x eager's own error

    assert main(["info", "--model", name, "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in model.parameters())

    # train --model from the published weights; the run folder is a timm model of that architecture, 2 classes
    data, run = make_image_folder(tmp_path / "images", train=2, val=2), tmp_path / "run"
    assert (
        main(["train", str(data), "--model", name, "--pretrained", "--output", str(run), "--epochs", "1", *FAST]) == 0
    )
    assert json.loads((run / "config.json").read_text())["architecture"] == name
    trained = effnetv2.create_model(f"local-dir:{run}", pretrained=True).eval()
    theirs = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    with torch.no_grad():
        assert_close(trained(x), theirs(x))
    assert trained(x).shape == (2, 2)
