"""Shared fixtures: a timm oracle with randomised BatchNorm statistics, saved as the hub repo stores it."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models import save_for_hf

import effnetv2

ARCH = "efficientnetv2_rw_m"


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
