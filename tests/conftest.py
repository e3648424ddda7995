"""Shared fixtures: a timm oracle with randomised BatchNorm statistics, saved as the hub repo stores it."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Tests never touch the network: huggingface_hub reads these when first imported (timm imports it below),
# so the whole session resolves hub files from a cache the `hf_cache` fixture builds.
HF_CACHE_DIR = Path(tempfile.mkdtemp(prefix="effnetv2-hf-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(HF_CACHE_DIR)
os.environ.pop("HF_HOME", None)

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models import save_for_hf  # noqa: E402

import effnetv2  # noqa: E402

ARCH = "efficientnetv2_rw_m"


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def import_script(name: str):
    """Import ``scripts/<name>.py`` (the scripts folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms (else BN is ~identity and hides bugs).

    Statistics are calibrated on one random batch in train mode, so activations keep a sane scale through
    60 blocks, then perturbed; the affine terms are random.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.momentum = 1.0
        model.train()
        model(torch.randn(8, 3, 64, 64, generator=g))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.num_features, generator=g))
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.2 + 0.9)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    model.eval()


def rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected tensor."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-12)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 2e-5) -> None:
    diff = rel_diff(actual, expected)
    assert diff <= tol, f"relative difference {diff:.3g} > {tol}"


@pytest.fixture(scope="session")
def timm_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    randomize_batchnorm(model)
    return model.eval()


@pytest.fixture(scope="session")
def hub_folder(tmp_path_factory, timm_model):
    """A folder exactly as timm publishes a hub repo: model.safetensors, pytorch_model.bin, config.json."""
    folder = tmp_path_factory.mktemp("hub_repo")
    save_for_hf(timm_model, folder, safe_serialization="both")
    return folder


HUB_REPO = "timm/efficientnetv2_rw_m.agc_in1k"
PRETRAINED = "efficientnetv2_rw_m.agc_in1k"  # the registered name whose weights live in HUB_REPO
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = HUB_COMMIT) -> Path:
    """Lay ``folder``'s files into ``cache`` in the hub's own layout (blobs, snapshots, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture(scope="session")
def hf_cache(hub_folder) -> Path:
    """HF_HUB_CACHE holding timm/efficientnetv2_rw_m.agc_in1k (the timm-made test weights), offline mode on."""
    populate_hf_cache(HF_CACHE_DIR, HUB_REPO, hub_folder)
    return HF_CACHE_DIR


@pytest.fixture(scope="session")
def ten_class_pair(hf_cache):
    """``pretrained=True, num_classes=10`` from the hub cache, ours and timm's; timm's fresh classifier copied in."""
    with pytest.warns(UserWarning, match="classifier not loaded"):
        ours = effnetv2.create_model(PRETRAINED, pretrained=True, num_classes=10).eval()
    theirs = timm.create_model(PRETRAINED, pretrained=True, num_classes=10).eval()
    ours.classifier.load_state_dict(theirs.classifier.state_dict())
    return ours, theirs


@pytest.fixture(scope="session")
def one_channel_pair(hf_cache):
    """``pretrained=True, in_chans=1, global_pool='max'`` from the hub cache (stem summed over RGB), ours and timm's."""
    kwargs = dict(pretrained=True, in_chans=1, global_pool="max")
    ours = effnetv2.create_model(PRETRAINED, **kwargs).eval()
    return ours, timm.create_model(PRETRAINED, **kwargs).eval()


@pytest.fixture(scope="session")
def checkpoint(hub_folder):
    return hub_folder / "model.safetensors"


@pytest.fixture(scope="session")
def model(checkpoint) -> torch.nn.Module:
    return effnetv2.create_model(ARCH, checkpoint_path=checkpoint).eval()


@pytest.fixture(scope="session")
def features_pair(checkpoint, timm_model):
    ours = effnetv2.create_model(ARCH, features_only=True, checkpoint_path=checkpoint).eval()
    theirs = timm.create_model(
        ARCH, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))
    ).eval()
    return ours, theirs


@pytest.fixture
def fresh_pair(model, timm_model):
    """Deep copies that a test may put in train mode or modify."""
    return copy.deepcopy(model), copy.deepcopy(timm_model)


def image_batch(batch: int = 2, height: int = 128, width: int = 128, channels: int = 3, seed: int = 0):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))
