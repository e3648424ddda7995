"""save_pretrained writes exactly what timm's save_for_hf writes; folders round-trip with timm both ways; saving is
atomic; push_to_hub uploads such a folder; the conversion script converts and verifies."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from conftest import HANG_GUARD_S, image_batch, populate_hf_cache
from safetensors.torch import load_file
from test_hub import outputs_close
from timm.models import save_for_hf

import effnetv2

ROOT = Path(__file__).resolve().parent.parent


def test_save_pretrained_equals_timm_save_for_hf(model, hub_folder, tmp_path):
    """The session model holds the timm oracle's weights: saving it gives timm's very file contents."""
    effnetv2.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((hub_folder / "config.json").read_text())
    ours, theirs = load_file(tmp_path / "model.safetensors"), load_file(hub_folder / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("pair", ["ten_class_pair", "one_channel_pair"])
def test_saved_folder_loads_in_timm(request, tmp_path, pair):
    """num_classes=10 / in_chans=1 + max pooling: timm rebuilds the model from our config.json alone."""
    ours, _ = request.getfixturevalue(pair)
    effnetv2.save_pretrained(ours, tmp_path / "saved")
    populate_hf_cache(tmp_path / "hub", "me/finetuned", tmp_path / "saved")
    loaded = timm.create_model("hf-hub:me/finetuned", pretrained=True, cache_dir=tmp_path / "hub").eval()
    assert (loaded.num_classes, loaded.global_pool.pool_type) == (ours.num_classes, ours.global_pool.pool_type)
    x = image_batch(1, 64, 64, channels=ours.in_chans)
    outputs_close(loaded, ours, x)
    # timm saving what it loaded writes the same config.json: the format is timm's, field for field.
    save_for_hf(loaded, tmp_path / "timm", safe_serialization=True)
    assert json.loads((tmp_path / "timm" / "config.json").read_text()) == json.loads(
        (tmp_path / "saved" / "config.json").read_text()
    )
    if pair != "one_channel_pair":
        return  # each model build costs seconds: load timm's folder back here once, for the richer config
    # timm's folder loads back here by local-dir:, rebuilt from its config.json (in_chans=1, max pooling).
    again = effnetv2.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert (again.num_classes, again.in_chans, again.global_pool.pool_type) == (
        ours.num_classes,
        ours.in_chans,
        ours.global_pool.pool_type,
    )
    outputs_close(again, ours, x)


def test_features_only_model_cannot_be_saved(tmp_path):
    tiny = effnetv2.ModelSpec(8, (effnetv2.StageSpec("fused", 1, 3, 2, 1, 8),), 16)  # a full model is not needed
    features = effnetv2.EfficientNetV2Features(tiny, out_indices=(0,))
    with pytest.raises(TypeError, match="features_only"):
        effnetv2.save_pretrained(features, tmp_path)
    assert not any(tmp_path.iterdir())


def test_failure_mid_save_leaves_previous_files_intact(model, tmp_path, monkeypatch):
    effnetv2.save_pretrained(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(before["model.safetensors"][: len(before["model.safetensors"]) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    bias = model.classifier.bias.detach().clone()  # b + 1 - 1 is not b in float32: restore the exact value
    with torch.no_grad():
        model.classifier.bias.add_(1.0)  # something new to save
    try:
        with pytest.raises(OSError, match="No space left"):
            effnetv2.save_pretrained(model, tmp_path)
    finally:
        with torch.no_grad():
            model.classifier.bias.copy_(bias)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either


def test_push_to_hub_uploads_a_saved_folder(model, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/me/{repo_id}")

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            calls["upload"] = (repo_id, sorted(p.name for p in folder.iterdir()), kwargs)
            calls["config"] = json.loads((folder / "config.json").read_text())
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert effnetv2.push_to_hub(model, "my-model", token="t", private=True) == "commit-info"
    assert calls["create_repo"] == ("my-model", True, True)
    repo_id, files, kwargs = calls["upload"]
    assert (repo_id, files) == ("me/my-model", ["config.json", "model.safetensors"])
    assert kwargs["commit_message"] == "Add model"
    assert calls["config"]["architecture"] == "efficientnetv2_rw_m"


# --- scripts/convert_checkpoint.py --------------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", ROOT / "scripts" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script_both_ways(hub_folder, model, tmp_path):
    timm_file = hub_folder / "pytorch_model.bin"  # timm's keys, a weights-only pickle
    ours_file = tmp_path / "effnetv2.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_checkpoint.py"),
            str(timm_file),
            str(ours_file),
            "--to",
            "effnetv2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    converted = load_file(ours_file)
    assert converted.keys() == model.state_dict().keys()  # effnetv2's own keys
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())

    back = tmp_path / "timm.safetensors"
    assert load_script().main([str(ours_file), str(back), "--to", "timm"]) == 0
    original = torch.load(timm_file, weights_only=True)
    restored = load_file(back)
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[k], original[k]) for k in original)


def test_convert_script_rejects_another_architecture(tmp_path, capsys):
    resnet = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), resnet)
    out = tmp_path / "out.safetensors"
    assert load_script().main([str(resnet), str(out), "--to", "effnetv2"]) == 1
    assert "not an EfficientNetV2" in capsys.readouterr().err
    assert not out.exists()
