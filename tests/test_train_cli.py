"""`effnetv2 train`: resume equals an uninterrupted run, DDP under torchrun, saved model loads in timm, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import HANG_GUARD_S
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_validate import RANKED, RANKS_BY_HAND, make_ranked_model, ranked_probs
from torch.utils.tensorboard import SummaryWriter

import effnetv2
from effnetv2.cli import main
from effnetv2.distributed import DistEnv
from effnetv2.inference.compare import natural_images, relative_difference
from effnetv2.pictures import curves_size
from effnetv2.train.engine import NonFiniteLossError, StepConfig, evaluate
from effnetv2.train.run_folder import RunFolder
from effnetv2.train.runner import CHECKSUMS_ENV, STOP_AFTER_ENV, weights_checksum

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


def test_resume_equals_uninterrupted_run(image_root, checkpoint, tmp_path, monkeypatch):
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
        "--tensorboard",
        *FAST,
    ]
    assert main(["train", *common, "--output", str(tmp_path / "full")]) == 0
    monkeypatch.setenv(STOP_AFTER_ENV, "1")  # interrupted after one epoch
    assert main(["train", *common, "--output", str(tmp_path / "split")]) == 0
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert _state(tmp_path / "split")["epoch"] == 1
    with SummaryWriter(tmp_path / "split" / "tensorboard") as writer:  # as if killed during epoch 2, after a step
        writer.add_scalar("train/loss", 123.0, 2)
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
    assert set(lines[0]) >= {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"}
    for a, b in zip(lines, full_lines, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_top1"] == b["val_top1"] and a["train_top1"] == b["train_top1"]

    # TensorBoard: one step per epoch here; the resumed run hid the killed run's step 2 (purge_step)
    for run in ("full", "split"):
        events = EventAccumulator(str(tmp_path / run / "tensorboard"))
        events.Reload()
        scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        assert [step for step, _ in scalars["train/loss"]] == [1, 2], run
        for (_, loss), row in zip(scalars["train/loss"], full_lines, strict=True):  # one step: the epoch's mean
            assert loss == pytest.approx(row["train_loss"], rel=1e-5)
        # per epoch, at its last step (a resume writes the last saved epoch's point again: same step, same value)
        val_top1, val_loss = dict(scalars["epoch/val_top1"]), dict(scalars["epoch/val_loss"])
        assert list(val_top1) == [1, 2] and len(scalars["epoch/val_top1"]) == (3 if run == "split" else 2)
        assert list(val_top1.values()) == pytest.approx([r["val_top1"] for r in full_lines])
        assert list(val_loss.values()) == pytest.approx([r["val_loss"] for r in full_lines], 1e-5)
        assert all(v > 0 and np.isfinite(v) for _, v in scalars["train/grad_norm"])
        assert {"train/lr", "epoch/val_top5", "epoch/images_per_s", "epoch/train_top1"} <= scalars.keys()
        with Image.open(tmp_path / run / "curves.png") as curves:  # redrawn after every epoch
            pixels = np.asarray(curves.convert("RGB"), dtype=np.float32)
            assert curves.size == curves_size() and pixels.std() > 20

    # the best model is saved in timm's hub format: timm and create_model(checkpoint_path=) load it alike
    out = tmp_path / "full"
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "efficientnetv2_rw_m" and config["num_classes"] == 2
    assert config["label_names"] == ["cat", "dog"]
    ours = effnetv2.create_model("efficientnetv2_rw_m", checkpoint_path=out)  # the folder's config: 2 classes
    n = config["num_classes"]  # timm's reload, as README shows it
    theirs = timm.create_model(
        "efficientnetv2_rw_m",
        num_classes=n,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=n),
    )
    assert ours.pretrained_cfg["label_names"] == config["label_names"]
    x = natural_images(2, 64)
    with torch.no_grad():
        assert relative_difference(ours.eval()(x), theirs.eval()(x)) <= 2e-5  # the fp32 parity contract


def test_torchrun_two_processes_hold_identical_weights(image_root, checkpoint, tmp_path):
    out, sums = tmp_path / "ddp", tmp_path / "sums"
    sums.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", CHECKSUMS_ENV: str(sums)}
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
        "--ema",
        "0.9",
        "--drop-path",
        "0",
        *FAST,
        "--batch-size",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ranks trained on different halves of the data: only gradient averaging keeps them equal
    rank0, rank1 = ((sums / f"rank{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    # the EMA (weights and BatchNorm statistics) is the same model on both ranks, and it is what was saved
    ema0, ema1 = ((sums / f"rank{r}.ema.sha256").read_text() for r in (0, 1))
    assert ema0 == ema1
    saved = effnetv2.create_model("efficientnetv2_rw_m", num_classes=2, checkpoint_path=out / "model.safetensors")
    assert weights_checksum(saved) == ema0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone writes


def _error(capsys, argv, status: int = 2) -> str:
    assert main(argv) == status
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
    assert not out.exists() or [p.name for p in out.iterdir()] == [".lock"]


def _rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_extend_an_interrupted_run(image_root, checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", str(image_root), "--output", str(out), *FAST]
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    assert main([*argv, "--checkpoint", str(checkpoint), "--epochs", "2"]) == 0  # 1 of 2 epochs, then "killed"
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert "pass --resume" in _error(capsys, [*argv, "--epochs", "2"])  # a plain restart would start over
    assert "--batch-size: the run in" in _error(capsys, [*argv, "--epochs", "3", "--resume", "--batch-size", "2"])
    assert "started with 4, this one has 2" in _error(capsys, [*argv, "--epochs", "3", "--resume", "--batch-size", "2"])
    assert main([*argv, "--epochs", "3", "--resume"]) == 0  # extends the 2-epoch plan to 3
    capsys.readouterr()

    state = _state(out)
    assert (state["epoch"], state["epochs"]) == (3, 3)
    # one step per epoch, no warmup: the LR after step 1 is 0.02·½(1 + cos(π/2)) = 0.01; the cosine is re-planned
    # from there to 0 at the new end: 0.01·½(1 + cos(π/2)) = 0.005 after step 2, 0 after step 3
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.005, 0.0], abs=1e-12)

    assert main([*argv, "--epochs", "3", "--resume"]) == 0
    assert "all 3 epochs of this run are done; nothing to do" in capsys.readouterr().err
    assert "can extend a run, not shorten it" in _error(capsys, [*argv, "--epochs", "2", "--resume"])
    assert _rows(out) == rows


def test_a_trained_run_validates_as_it_did_and_fine_tunes_further(image_root, checkpoint, tmp_path, capsys):
    run, more = tmp_path / "pets", tmp_path / "more"
    assert (
        main(["train", str(image_root), "--checkpoint", str(checkpoint), "--output", str(run), "--epochs", "1", *FAST])
        == 0
    )
    (last,) = _rows(run)
    capsys.readouterr()
    # validate on the run folder: the val split, its transform and label names come from the saved config
    assert main(["validate", str(image_root), "--checkpoint", str(run), "--format", "json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_folders_matched_by"] == "label_names" and result["img_size"] == 32
    assert (result["top1"], result["top5"], result["num_images"]) == (last["val_top1"], last["val_top5"], 4)
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-5)

    # continue fine-tuning from the run folder: its trained head is the starting point (no --num-classes needed)
    trained = _state(run)["model"]["classifier.weight"]
    argv = ["train", str(image_root), "--checkpoint", str(run), "--output", str(more), "--epochs", "1", *FAST]
    assert main([*argv, "--lr", "1e-9"]) == 0  # a negligible step: the head must still be the trained one
    kept = _state(more)["model"]["classifier.weight"]
    torch.testing.assert_close(kept, trained, rtol=0, atol=1e-6)
    assert json.loads((more / "config.json").read_text())["label_names"] == ["cat", "dog"]


def test_full_disk_then_nan_loss_keep_the_last_good_state(image_root, checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", str(image_root), "--output", str(out), "--epochs", "3", *FAST]
    real_save, saves = torch.save, []

    def disk_full_at_second_state(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"PK partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", disk_full_at_second_state)
    err = _error(capsys, [*argv, "--checkpoint", str(checkpoint)], status=1)  # a fault of the machine
    monkeypatch.undo()
    assert f"cannot write {out / 'last_state.pt'}: No space left on device" in err
    assert _state(out)["epoch"] == 1 and [r["epoch"] for r in _rows(out)] == [1]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a torn line (an older writer, a crash): rebuilt from the state

    def nan_images(images, cfg):  # every training batch (grad enabled) turns to NaN; evaluation stays clean
        images = images.to(cfg.device)
        return torch.full_like(images, float("nan")) if torch.is_grad_enabled() else images

    monkeypatch.setattr("effnetv2.train.engine._to_device", nan_images)
    err = _error(capsys, [*argv, "--resume"])
    assert "the training loss became nan at step 1 of epoch 2 (step 2 of the run)" in err
    assert f"{out / 'last_state.pt'} still holds epoch 1" in err
    assert _state(out)["epoch"] == 1 and [r["epoch"] for r in _rows(out)] == [1]
    saved = effnetv2.create_model("efficientnetv2_rw_m", num_classes=2, checkpoint_path=out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.state_dict().values() if t.is_floating_point())


def test_diverging_run_stops_and_saves_no_model(image_root, checkpoint, tmp_path, capsys):
    # --lr 1e30 is finite and accepted, and blows the weights up at once: nothing may be saved
    out = tmp_path / "run"
    argv = ["train", str(image_root), "--output", str(out), "--epochs", "1", *FAST, "--lr", "1e30", "--agc", "0"]
    err = _error(capsys, [*argv, "--checkpoint", str(checkpoint)])
    assert "in epoch 1" in err or "of epoch 1" in err or "after epoch 1" in err, err
    assert "no epoch was saved" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_validation_top1_top5_and_loss_at_ranks_1_5_and_6_are_the_counts_made_by_hand():
    """train's per-epoch validation (engine.evaluate) on test_validate's ranked model, whose logits are its bias:
    true classes at ranks 1, 5 and 6 (and others) give the top-1, top-5 and loss counted by hand. The CLI's tests
    train 2-class models, where top-5 is everything."""
    ranks = RANKS_BY_HAND  # top-1: 3 of 10; top-5: 7 of 10 (a top-6 counts 9, a top-4 5)
    targets = torch.tensor([RANKED[rank - 1] for rank in ranks])
    images = torch.randn(len(ranks), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = [(images[i : i + 4], targets[i : i + 4]) for i in range(0, len(ranks), 4)]  # batches of 4, 4, 2
    metrics = evaluate(make_ranked_model(), loader, StepConfig(torch.device("cpu")), DistEnv())
    assert metrics["val_top1"] == pytest.approx(100 * sum(rank == 1 for rank in ranks) / len(ranks))  # 30 %
    assert metrics["val_top5"] == pytest.approx(100 * sum(rank <= 5 for rank in ranks) / len(ranks))  # 70 %
    expected_loss = sum(-math.log(ranked_probs()[t]) for t in targets.tolist()) / len(ranks)
    assert metrics["val_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_engine_names_the_step_of_a_nan_loss():
    from effnetv2.distributed import DistEnv
    from effnetv2.train.engine import StepConfig, train_one_epoch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    batches = [(torch.ones(2, 4), torch.tensor([0, 1]))] * 2 + [
        (torch.full((2, 4), float("inf")), torch.tensor([0, 1]))
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="at step 3") as info:
        train_one_epoch(
            model, batches, torch.nn.CrossEntropyLoss(), opt, None, StepConfig(torch.device("cpu")), DistEnv()
        )
    assert info.value.step == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "option, message",
    [
        (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
        (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
        (["--lr", "0"], "argument --lr: must be a finite number > 0"),
        (["--momentum", "1"], "argument --momentum: must be a finite number in [0, 1)"),
        (["--weight-decay=-1e-5"], "argument --weight-decay: must be a finite number >= 0"),
        (["--warmup-epochs", "nan"], "argument --warmup-epochs"),
        (["--agc=-0.1"], "argument --agc"),
        (["--drop", "1"], "argument --drop"),
        (["--drop-path=-0.1"], "argument --drop-path"),
        (["--mixup=-1"], "argument --mixup"),
        (["--layer-decay", "0"], "argument --layer-decay: must be a finite number in (0, 1]"),
        (["--layer-decay", "1.5"], "argument --layer-decay"),
        (["--label-smoothing", "1"], "argument --label-smoothing"),
        (["--ema", "1"], "argument --ema"),
        (["--workers=-1"], "argument --workers: must be an integer >= 0, got -1"),
        (["--img-size", "16"], "argument --img-size: must be an integer >= 32"),
        (["--epochs", "0"], "argument --epochs"),
        (["--seed=-1"], "argument --seed"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, capsys, option, message):
    out = tmp_path / "out"
    assert message in _error(capsys, ["train", str(tmp_path), "--output", str(out), *option])
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(image_root, tmp_path, capsys):
    err = _error(capsys, ["train", str(image_root), "--output", str(tmp_path / "o"), "--device", "cuda", *FAST])
    assert "--device cuda: this machine or this torch build" in err


def test_help_shows_every_default_and_no_test_flags(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 10)", "(default: 32)", "(default: 0.01)", "(default: 0.9)", "(default: 1e-05)"):
        assert default in text
    assert "(default: auto)" in text and "{auto,cpu,cuda,mps}" in text
    options = [w for w in text.split() if w.startswith("--") and w[2:3].isalpha()]
    documented = text.count("(default:")
    assert documented >= len({o.rstrip(",") for o in options}) - 2  # all but --help/--output's required value
    assert "stop-after" not in text and "debug-checksums" not in text


def test_second_writer_is_refused(image_root, tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(out):  # another train process holds the folder
        err = _error(capsys, ["train", str(image_root), "--output", str(out), *FAST])
    assert err == f"effnetv2: error: {out} is in use by another effnetv2 train process (pid {os.getpid()})"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_bad_checkpoint_and_state_files_are_one_line(image_root, tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(__import__("pickle").dumps({"state_dict": _Evil()}, protocol=2))
    err = _error(capsys, ["train", str(image_root), "--output", str(tmp_path / "a"), "--checkpoint", str(evil), *FAST])
    assert str(evil) in err

    folder = tmp_path / "folder"
    folder.mkdir()
    err = _error(capsys, ["train", str(image_root), "--output", str(tmp_path / "b"), "--checkpoint", str(folder)])
    assert f"{folder}: is a folder without model.safetensors or pytorch_model.bin and config.json" in err
    err = _error(
        capsys, ["train", str(image_root), "--output", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "x")]
    )
    assert f"--checkpoint {tmp_path / 'x'}: no such file or folder" in err

    out = tmp_path / "c"
    out.mkdir()
    (out / "last_state.pt").write_bytes(b"PK\x03\x04 truncated")
    err = _error(capsys, ["train", str(image_root), "--output", str(out), "--resume", *FAST])
    assert f"cannot read {out / 'last_state.pt'}" in err

    torch.save({"classes": ["cat", "dog"], "args": {"epochs": 1}}, out / "last_state.pt")  # an older or foreign file
    err = _error(capsys, ["train", str(image_root), "--output", str(out), "--resume", *FAST])
    assert "is not an effnetv2 training state" in err
