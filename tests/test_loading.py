"""load_checkpoint: formats, adaptation, and errors that leave the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCH, assert_close, image_batch
from safetensors.torch import save_file

import effnetv2
from effnetv2.weights.loading import adapt_stem_weight


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snapshot) -> bool:
    return all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_pytorch_bin_and_our_format_load_identically(model, hub_folder, tmp_path):
    from_bin = effnetv2.create_model(ARCH, checkpoint_path=hub_folder / "pytorch_model.bin").eval()
    ours_file = tmp_path / "ours.safetensors"
    save_file(model.state_dict(), ours_file)
    from_ours = effnetv2.create_model(ARCH)
    effnetv2.load_checkpoint(from_ours, ours_file)
    bin_state, ours_state = from_bin.state_dict(), from_ours.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(bin_state[name], value)
        assert torch.equal(ours_state[name], value)


def test_training_checkpoint_wrappers_and_ddp_prefix(timm_model, model, tmp_path):
    path = tmp_path / "train.pth"
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in timm_model.state_dict().items()}}
    torch.save(wrapped, path)
    loaded = effnetv2.create_model(ARCH, checkpoint_path=path).eval()
    x = image_batch(1, 64, 64)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


def test_missing_num_batches_tracked_is_tolerated(timm_model, model, tmp_path):
    state = {k: v for k, v in timm_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.safetensors"
    save_file(state, path)
    loaded = effnetv2.create_model(ARCH, checkpoint_path=path).eval()
    x = image_batch(1, 64, 64)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


def test_mis_shaped_and_missing_keys_raise_and_leave_model_unchanged(timm_model, tmp_path):
    state = dict(timm_model.state_dict())
    state["blocks.3.0.conv_pw.weight"] = torch.zeros(10, 80, 1, 1)
    del state["blocks.5.23.bn3.bias"]
    state["blocks.9.0.conv.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    target = effnetv2.create_model(ARCH)
    before = _snapshot(target)
    with pytest.raises(effnetv2.CheckpointError) as info:
        effnetv2.load_checkpoint(target, path)
    message = str(info.value)
    assert "stages.3.0.expand.0.weight: checkpoint (10, 80, 1, 1) vs model (320, 80, 1, 1)" in message
    assert "stages.5.23.project.1.bias" in message  # missing
    assert "blocks.9.0.conv.weight" in message  # unexpected
    assert str(path) in message
    assert isinstance(info.value, RuntimeError)  # what torch's load_state_dict raises
    assert _unchanged(target, before)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        effnetv2.create_model(ARCH, checkpoint_path=tmp_path / "nope.safetensors")


def test_classifier_of_other_size_is_skipped_with_warning(checkpoint, model):
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match=r"classifier not loaded.*\(1000, 2152\).*\(10, 2152\)"):
        m = effnetv2.create_model(ARCH, num_classes=10, checkpoint_path=checkpoint)
    torch.manual_seed(5)
    fresh = effnetv2.create_model(ARCH, num_classes=10)
    assert torch.equal(m.classifier.weight, fresh.classifier.weight)  # the fresh initialisation is kept
    assert torch.equal(m.stem[0].weight, model.stem[0].weight)  # the rest did load


def test_stem_adaptation_rules():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert torch.equal(adapt_stem_weight(w, 1), w.sum(dim=1, keepdim=True))
    four = adapt_stem_weight(w, 4)
    assert torch.equal(four, torch.cat([w, w[:, :1]], dim=1) * 0.75)
    assert adapt_stem_weight(w.half(), 5).dtype == torch.float16


def test_strict_false_tolerates_missing_keys(timm_model, model, tmp_path):
    state = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "headless.safetensors"
    save_file(state, path)
    target = copy.deepcopy(model)
    with torch.no_grad():
        target.classifier.weight.zero_()
    with pytest.raises(effnetv2.CheckpointError, match="2 missing keys: classifier.weight, classifier.bias"):
        effnetv2.load_checkpoint(target, path)
    effnetv2.load_checkpoint(target, path, strict=False)
    assert torch.equal(target.stem[0].weight, model.stem[0].weight)
    assert target.classifier.weight.abs().max() == 0
