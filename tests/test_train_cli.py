"""`effnetv2 train`: resume equals an uninterrupted run, DDP under torchrun, saved model loads in timm, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import effnetv2
from effnetv2.cli import main
from effnetv2.cli.train import _weights_checksum

ROOT = Path(__file__).resolve().parents[1]
# tiny everything: the 53 M-parameter model on shared CPU cores
FAST = ["--img-size", "32", "--batch-size", "4", "--workers", "0", "--lr", "0.02", "--warmup-epochs", "0.5"]


def make_image_folder(root: Path, classes=("cat", "dog"), train: int = 4, val: int = 2, val_classes=None) -> Path:
    """``root/{train,val}/<class>/*.png``: small random images with a class-coloured channel."""
    rng = np.random.default_rng(0)
    for split, n, names in (("train", train, classes), ("val", val, val_classes or classes)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 128, (40, 48, 3), dtype=np.uint8)
                img[..., c % 3] += 120
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    # 4 training images: one step per epoch at batch 4 (one per process at 2 × batch 2) keeps the tests short
    return make_image_folder(tmp_path_factory.mktemp("images"), train=2, val=2)


def _state(folder: Path) -> dict:
    return torch.load(folder / "last_state.pt", map_location="cpu", weights_only=True)


def _assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_resume_equals_uninterrupted_run(image_root, checkpoint, tmp_path):
    # drop path, MixUp, EMA and random crops all draw random numbers: resume must restore every generator
    common = [
        str(image_root),
        "--checkpoint",
        str(checkpoint),
        "--epochs",
        "2",
        "--ema",
        "0.9",
        "--mixup",
        "0.2",
        "--drop-path",
        "0.1",
        *FAST,
    ]
    assert main(["train", *common, "--output", str(tmp_path / "full")]) == 0
    assert main(["train", *common, "--output", str(tmp_path / "split"), "--stop-after", "1"]) == 0
    assert _state(tmp_path / "split")["epoch"] == 1
    assert main(["train", *common, "--output", str(tmp_path / "split"), "--resume"]) == 0

    full, split = _state(tmp_path / "full"), _state(tmp_path / "split")
    assert full["epoch"] == split["epoch"] == 2
    for part in ("model", "ema", "optimizer", "scheduler"):
        _assert_same_tensors(full[part], split[part], part)
    first = _state(tmp_path / "full")["model"]["classifier.weight"]
    assert not torch.equal(first, effnetv2.create_model("efficientnetv2_rw_m", num_classes=2).classifier.weight)

    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    full_lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert set(lines[0]) >= {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"}
    for a, b in zip(lines, full_lines, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_top1"] == b["val_top1"]

    # the best model is saved in timm's hub format: timm and create_model(checkpoint_path=) load it alike
    out = tmp_path / "full"
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "efficientnetv2_rw_m" and config["num_classes"] == 2
    ours = effnetv2.create_model("efficientnetv2_rw_m", num_classes=2, checkpoint_path=out / "model.safetensors")
    theirs = timm.create_model(
        "efficientnetv2_rw_m",
        num_classes=2,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=2),
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-5)


def test_torchrun_two_processes_hold_identical_weights(image_root, checkpoint, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "effnetv2",
        "train",
        str(image_root),
        "--output",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--epochs",
        "1",
        "--debug-checksums",
        "--drop-path",
        "0",
        *FAST,
        "--batch-size",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ranks trained on different halves of the data: only gradient averaging keeps them equal
    rank0, rank1 = ((out / f"rank{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    saved = effnetv2.create_model("efficientnetv2_rw_m", num_classes=2, checkpoint_path=out / "model.safetensors")
    assert _weights_checksum(saved) == rank0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone writes


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "layout, message",
    [
        (dict(remove="val"), "val is not a folder"),
        (dict(classes=("only",)), "1 class folder(s)"),
        (dict(val_classes=("cat", "cow")), "only in train: ['dog'], only in val: ['cow']"),
    ],
)
def test_bad_data_layout_is_one_line(tmp_path, capsys, layout, message):
    remove = layout.pop("remove", None)
    root = make_image_folder(tmp_path / "data", train=1, val=1, **layout)
    if remove:
        for f in (root / remove).rglob("*.png"):
            f.unlink()
        for d in sorted((root / remove).rglob("*"), reverse=True):
            d.rmdir()
        (root / remove).rmdir()
    out = tmp_path / "out"
    assert message in _error(capsys, ["train", str(root), "--output", str(out), *FAST])
    assert not out.exists()  # nothing half-written


def test_resume_without_state_and_unreadable_image(image_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert "last_state.pt does not exist" in _error(
        capsys, ["train", str(image_root), "--output", str(out), "--resume"]
    )
    assert not out.exists()

    root = make_image_folder(tmp_path / "data", train=4, val=1)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not an image")
    err = _error(capsys, ["train", str(root), "--output", str(out), "--epochs", "1", *FAST, "--batch-size", "9"])
    assert f"cannot read image {bad}" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "saved, message",
    [
        (dict(classes=["cat", "dog"], args=dict(epochs=5)), "was started with --epochs 5; resume with the same value"),
        (dict(classes=["ant", "bee"], args=dict(epochs=1)), "differ from those of the run"),
    ],
)
def test_resume_refuses_a_different_run(image_root, tmp_path, capsys, saved, message):
    out = tmp_path / "out"
    out.mkdir()
    torch.save(saved, out / "last_state.pt")
    argv = ["train", str(image_root), "--output", str(out), "--resume", "--epochs", "1", *FAST]
    assert message in _error(capsys, argv)
