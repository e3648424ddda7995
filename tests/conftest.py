"""Shared fixtures: a well-conditioned timm oracle, saved as the hub repo stores it, and inputs like its own.

The oracle is a random timm network conditioned as a trained one is (:mod:`effnetv2.testing`: calibrated
BatchNorm statistics, small residual-branch gains, a tempered classifier), so that a wrong activation, bias or eps
in effnetv2 moves the outputs far beyond the parity tolerance (``tests/test_oracle.py`` plants such bugs).
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# Tests never touch the network: huggingface_hub reads these when first imported (timm imports it below),
# so the whole session resolves hub files from a cache the `hf_cache` fixture builds.
HF_CACHE_DIR = Path(tempfile.mkdtemp(prefix="effnetv2-hf-cache-"))
atexit.register(shutil.rmtree, HF_CACHE_DIR, ignore_errors=True)  # ~410 MB per test process
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(HF_CACHE_DIR)
os.environ.pop("HF_HOME", None)

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: N test processes share the cores
    from effnetv2.cli.options import available_cpus

    torch.set_num_threads(max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
from timm.models import save_for_hf  # noqa: E402

import effnetv2  # noqa: E402
from effnetv2 import testing as calibrated_model  # noqa: E402  (the well-conditioned stand-in)
from effnetv2.inference.compare import relative_difference  # noqa: E402

ARCH = "efficientnetv2_rw_m"


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def import_script(name: str):
    """Import ``scripts/<name>.py`` (the scripts folder is not a package).

    The scripts' shared library ``scripts/_bench.py`` is found as when a script runs: the folder goes on
    ``sys.path`` (last, so that it shadows nothing installed)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Method(torch.nn.Module):
    """``model.<method>(x, **kwargs)`` as a module, so the one comparison can copy it to fp64."""

    def __init__(self, model: torch.nn.Module, method: str, **kwargs) -> None:
        super().__init__()
        self.model, self.method, self.kwargs = model, method, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x, **self.kwargs)


class Embedder(torch.nn.Module):
    """A classifier's pooled embeddings of images (``forward_features``, then ``forward_head(pre_logits=True)``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


PARITY = 2e-5  # the fp32 parity contract with timm (tests/test_parity.py): the largest relative difference


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = PARITY) -> None:
    """``relative_difference(actual, expected) <= tol``, the parity contract unless told otherwise."""
    diff = relative_difference(actual, expected)
    assert diff <= tol, f"relative difference {diff:.3g} > {tol}"


CALIBRATION = dict(images=16, size=128, seed=1)  # 8 images or 96 px generalise worse to other inputs and sizes


def calibration_images() -> torch.Tensor:
    return calibrated_model.smooth_images(CALIBRATION["images"], CALIBRATION["size"], seed=CALIBRATION["seed"])


@pytest.fixture(scope="session")
def timm_model() -> torch.nn.Module:
    """The oracle: timm's random init made well-conditioned (BN calibrated on natural-looking images, residual
    gains 0.2, logits of std 2), 1000 classes as the hub repo has."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    return calibrated_model.condition(model, calibration_images(), residual_gain=0.2, logit_std=2.0)


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
    """Natural-looking inputs from the oracle's calibration distribution (smooth colour fields, ~unit variance)."""
    return calibrated_model.smooth_images(batch, (height, width), seed=seed + 100, channels=channels)


# A hang guard, not a speed requirement: the limit on any wait in a test (a subprocess, a child's line, a file
# appearing) is this generous, so a loaded or slow machine never misses it; only a hung process reaches it.
HANG_GUARD_S = 1800


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``effnetv2 ARGS`` in this process (each argument as a string): its exit status, stdout and stderr."""
    from effnetv2.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def save_sample_crops(folder: Path, count: int, step: tuple[int, int], size: tuple[int, int], name: str) -> list[Path]:
    """``count`` crops of the sample photo saved in ``folder`` as ``name.format(i)``: crop ``i`` is ``size`` (width,
    height) with its top-left corner at ``i * step`` (x, y)."""
    from PIL import Image

    from effnetv2.data import sample_image_path

    paths = []
    with Image.open(sample_image_path()) as img:
        for i in range(count):
            left, top = i * step[0], i * step[1]
            paths.append(folder / name.format(i))
            img.crop((left, top, left + size[0], top + size[1])).save(paths[-1])
    return paths


def photos_and_a_broken_file(folder: Path) -> Path:
    """``folder`` with seven crops of the sample photo (photo0.png ...) and one file that is not an image (sorted
    first: broken.png): what the extraction commands' tests read."""
    save_sample_crops(folder, 7, step=(30, 10), size=(220, 200), name="photo{}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def torchrun(args: Sequence, processes: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """``effnetv2 ARGS`` in ``processes`` torchrun processes (standalone, one thread each, this checkout's package),
    text output captured; limited by the hang guard only."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*launcher, "-m", "effnetv2", *map(str, args)], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
