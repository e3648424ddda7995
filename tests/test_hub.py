"""Pretrained weights through huggingface_hub's real cache lookup (offline), hf-hub:/local-dir: names, the release
file as a second source, and the model card's snippets: all against timm loading the same files."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HUB_COMMIT, HUB_REPO, assert_close, image_batch, populate_hf_cache
from PIL import Image

import effnetv2
from effnetv2.registry import PRETRAINED_CFGS
from effnetv2.weights.hub import pretrained_file

NAME = "efficientnetv2_rw_m.agc_in1k"
RELEASE_NAME = "efficientnetv2_rw_m_agc-3d90cb1e.pth"


def outputs_close(ours, theirs, x):
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    if isinstance(a, torch.Tensor):
        a, b = [a], [b]
    assert len(a) == len(b) > 0
    for fa, fb in zip(a, b, strict=True):
        assert_close(fa, fb)


# --- pretrained=True from an offline Hugging Face cache, against timm reading the same cache -------------------
# The plain, features_only=True and num_classes=0 cases are the model card's snippets, at the bottom; the
# num_classes=10 and in_chans=1 pairs are conftest fixtures (the saving tests reuse them).


def test_pretrained_num_classes_10_equals_timm(ten_class_pair):
    ours, theirs = ten_class_pair
    assert ours.num_classes == 10 and ours.pretrained_cfg["num_classes"] == 1000
    outputs_close(ours, theirs, image_batch(1, 64, 64))


def test_pretrained_in_chans_1_equals_timm(one_channel_pair):
    ours, theirs = one_channel_pair
    assert ours.stem[0].weight.shape[1] == 1
    outputs_close(ours, theirs, image_batch(1, 64, 64, channels=1))


# --- where the weights come from ---------------------------------------------------------------------------------


def test_hub_prefers_safetensors(hf_cache):
    path = pretrained_file(dict(hf_hub_id=HUB_REPO))
    assert path.name == "model.safetensors"
    assert path.parent == hf_cache / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / HUB_COMMIT


def test_bin_fallback_cache_dir_and_revision(hub_folder, tmp_path, timm_model):
    """A repo with only pytorch_model.bin, in a cache given by cache_dir, at a pinned revision."""
    (tmp_path / "repo").mkdir()
    shutil.copyfile(hub_folder / "pytorch_model.bin", tmp_path / "repo" / "pytorch_model.bin")
    cache = tmp_path / "hub"
    populate_hf_cache(cache, "someone/moved", tmp_path / "repo")
    overlay = dict(hf_hub_id="someone/moved", hf_hub_revision=HUB_COMMIT)
    ours = effnetv2.create_model(NAME, pretrained=True, cache_dir=cache, pretrained_cfg_overlay=overlay).eval()
    outputs_close(ours, timm_model, image_batch(1, 64, 64))
    # A revision the cache lacks is an error, and never falls back to the release file.
    with pytest.raises(effnetv2.CheckpointError, match="no cached copy"):
        effnetv2.create_model(
            NAME, pretrained=True, cache_dir=cache, pretrained_cfg_overlay=dict(overlay, hf_hub_revision="f" * 40)
        )


def test_pretrained_cfg_overlay_file(hub_folder, timm_model):
    path = hub_folder / "model.safetensors"
    ours = effnetv2.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    outputs_close(ours, timm_model, image_batch(1, 64, 64))
    assert pretrained_file(dict(file=str(hub_folder))) == path  # a folder: its preferred file


def release_copy(folder):
    """A stand-in release file (its content does not matter here), named after its SHA-256 as releases are."""
    data = b"weights of a release"
    path = folder / f"efficientnetv2_rw_m_agc-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_release_file_from_torch_hub_cache(hf_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = release_copy(Path(torch.hub.get_dir()) / "checkpoints")
    cfg = dict(PRETRAINED_CFGS[NAME], url=f"https://example.invalid/releases/{path.name}")
    assert pretrained_file(cfg) != path  # the hub comes first
    assert pretrained_file(dict(cfg, source="url")) == path


def test_release_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / RELEASE_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the released bytes")
    assert PRETRAINED_CFGS[NAME]["url"].endswith(RELEASE_NAME)
    with pytest.raises(effnetv2.CheckpointError, match=r"promises 3d90cb1e.*corrupt") as err:
        effnetv2.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(source="url"))
    assert str(cached) in str(err.value)


def test_release_file_is_the_fallback_when_the_hub_fails(tmp_path):
    cache_dir = tmp_path / "cache"  # an empty Hugging Face cache; with cache_dir, release files live there too
    path = release_copy(cache_dir)
    cfg = dict(PRETRAINED_CFGS[NAME], url=f"https://example.invalid/{path.name}")
    with pytest.warns(UserWarning, match="no cached copy.*using the original release file"):
        assert pretrained_file(cfg, cache_dir=cache_dir) == path


def test_no_network_and_no_cache_says_how_to_proceed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(effnetv2.CheckpointError) as err:
        effnetv2.create_model(NAME, pretrained=True, cache_dir=tmp_path / "empty")
    message = str(err.value)
    for expected in ("no network", "HF_HUB_OFFLINE", "no cached copy", RELEASE_NAME, "checkpoint_path", "pre-populate"):
        assert expected in message, (expected, message)


# --- hf-hub: and local-dir: names --------------------------------------------------------------------------------


def test_timm_published_repo_loads_by_hf_hub_name(hf_cache, timm_model):
    """timm's save_for_hf output (conftest's hub_folder) as a Hub repo, at a pinned revision; local-dir: loading of
    timm's output is in test_saving."""
    ours = effnetv2.create_model(f"hf-hub:{HUB_REPO}@{HUB_COMMIT}", pretrained=True).eval()
    assert ours.num_classes == 1000 and ours.global_pool.pool_type == "avg"
    assert ours.pretrained_cfg["input_size"] == (3, 320, 320)
    assert ours.pretrained_cfg["first_conv"] == "stem.0"  # our module name, translated from timm's conv_stem
    outputs_close(ours, timm_model, image_batch(1, 64, 64))


def test_hub_name_errors(hf_cache, tmp_path):
    with pytest.raises(effnetv2.CheckpointError, match=r"no network .* no cached copy"):
        effnetv2.create_model("hf-hub:someone/missing")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        effnetv2.create_model(f"local-dir:{tmp_path}")
    with pytest.raises(effnetv2.UnknownModelError, match="hf-hub:timm/efficientnetv2_rw_m"):
        effnetv2.create_model("timm/efficientnetv2_rw_m")
    (tmp_path / "config.json").write_text('{"architecture": "resnet18", "num_classes": 10, "pretrained_cfg": {}}')
    with pytest.raises(effnetv2.UnknownModelError, match="resnet18"):
        effnetv2.create_model(f"local-dir:{tmp_path}")


# --- the model card's snippets, verbatim but for timm -> effnetv2 and a local image -----------------------------

URL_OPEN = """Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
))"""
HEADER = f"""from urllib.request import urlopen
from PIL import Image
import timm

img = {URL_OPEN}
"""
SNIPPETS = {
    "classification": HEADER
    + """
model = timm.create_model('efficientnetv2_rw_m.agc_in1k', pretrained=True)
model = model.eval()

# get model specific transforms (normalization, resize)
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

top5_probabilities, top5_class_indices = torch.topk(output.softmax(dim=1) * 100, k=5)
""",
    "feature_maps": HEADER
    + """
model = timm.create_model(
    'efficientnetv2_rw_m.agc_in1k',
    pretrained=True,
    features_only=True,
)
model = model.eval()

# get model specific transforms (normalization, resize)
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

for o in output:
    # print shape of each feature map in output
    # e.g.:
    #  torch.Size([1, 32, 160, 160])
    #  torch.Size([1, 56, 80, 80])
    #  torch.Size([1, 80, 40, 40])
    #  torch.Size([1, 192, 20, 20])
    #  torch.Size([1, 328, 10, 10])

    print(o.shape)
""",
    "embeddings": HEADER
    + """
model = timm.create_model(
    'efficientnetv2_rw_m.agc_in1k',
    pretrained=True,
    num_classes=0,  # remove classifier nn.Linear
)
model = model.eval()

# get model specific transforms (normalization, resize)
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

output = model(transforms(img).unsqueeze(0))  # output is (batch_size, num_features) shaped tensor

# or equivalently (without needing to set num_classes=0)

output = model.forward_features(transforms(img).unsqueeze(0))
# output is unpooled, a (1, 2152, 10, 10) shaped tensor

output = model.forward_head(output, pre_logits=True)
# output is a (1, num_features) shaped tensor
""",
}


@pytest.fixture(scope="module")
def beignets(tmp_path_factory):
    """A smooth random-colour 500x375 PNG standing in for the card's photo."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    path = tmp_path_factory.mktemp("image") / "beignets.png"
    coarse.resize((500, 375), Image.BICUBIC).save(path)
    return path


def run_snippet(code: str, image_path, capsys) -> tuple[dict, str]:
    assert URL_OPEN in code
    namespace = {"torch": torch}  # snippet 1 uses torch without importing it
    with torch.no_grad():
        exec(code.replace(URL_OPEN, f"Image.open({str(image_path)!r})"), namespace)
    return namespace, capsys.readouterr().out


@pytest.mark.parametrize("snippet", list(SNIPPETS))
def test_model_card_snippet(hf_cache, beignets, capsys, snippet):
    code = SNIPPETS[snippet]
    ours, printed = run_snippet(re.sub(r"\btimm\b", "effnetv2", code), beignets, capsys)
    theirs, printed_by_timm = run_snippet(code, beignets, capsys)
    assert isinstance(ours["model"], torch.nn.Module) and type(ours["model"]).__module__.startswith("effnetv2")
    assert printed == printed_by_timm
    if snippet == "feature_maps":
        shapes = ["[1, 32, 160, 160]", "[1, 56, 80, 80]", "[1, 80, 40, 40]", "[1, 192, 20, 20]", "[1, 328, 10, 10]"]
        assert printed.splitlines() == [f"torch.Size({s})" for s in shapes]
        for a, b in zip(ours["output"], theirs["output"], strict=True):
            assert_close(a, b)
        return
    assert_close(ours["output"], theirs["output"])
    if snippet == "classification":
        assert ours["output"].shape == (1, 1000)
        assert torch.equal(ours["top5_class_indices"], theirs["top5_class_indices"])
        assert_close(ours["top5_probabilities"], theirs["top5_probabilities"])
    else:
        assert ours["output"].shape == (1, 2152)
