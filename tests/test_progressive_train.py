"""`effnetv2 train --progressive`: the schedule printed and recorded, resume mid-stage equals an uninterrupted run
(with and without --progressive-batch), extension recomputes the stages, a changed schedule is refused, AGC, AMP and
gradient checkpointing compose with it, DDP under torchrun; a tiny model (b0, 32-48 px, 4 training images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import torchrun
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train_cli import _assert_same_tensors, _state, make_image_folder

from effnetv2.cli import main
from effnetv2.train.runner import CHECKSUMS_ENV, STOP_AFTER_ENV

TINY = ["--model", "tf_efficientnetv2_b0", "--batch-size", "4", "--workers", "0", "--lr", "0.02"]
PROGRESSIVE = ["--progressive", "2", "--img-size", "48", "--min-img-size", "32", "--randaug-magnitude", "9"]
PROGRESSIVE += ["--mixup", "0.2", "--drop", "0.3", "--drop-path", "0.1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), train=2, val=2)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


# --progressive-batch at --batch-size 2: stage 1 (32 px) takes 2·(48/32)² = 4.5 → 4 images, one step worth the two
# of the run's batch, at twice the LR; the schedule (warmup 2 steps, cosine to step 6) ends each epoch at the same
# place with or without it: LRs 0.02·2, 0.01, 0 against 0.02, 0.01, 0
BATCHES = {
    "fixed": ([], "batch 4", "batch 4", [0.02, 0.01, 0.0]),
    "progressive-batch": (
        ["--progressive-batch", "--batch-size", "2"],
        "batch 4 (lr x2.00)",
        "batch 2",
        [0.04, 0.01, 0],
    ),
}


@pytest.mark.parametrize("batches", list(BATCHES))
def test_resume_mid_stage_equals_an_uninterrupted_run(images, tmp_path, monkeypatch, capsys, batches):
    extra, batch1, batch2, lrs = BATCHES[batches]
    common = ["train", str(images), *TINY, *PROGRESSIVE, *extra, "--epochs", "3", "--ema", "0.9", "--tensorboard"]
    assert main([*common, "--output", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "effnetv2: progressive learning in 2 stage(s), evaluated at 48 px:" in out
    assert f"  stage 1/2: epochs 1, 32 px, {batch1}, randaug 5, mixup 0, cutmix 0, drop 0.1" in out
    assert f"  stage 2/2: epochs 2-3, 48 px, {batch2}, randaug 9, mixup 0.2, cutmix 0, drop 0.3" in out
    monkeypatch.setenv(STOP_AFTER_ENV, "2")  # stopped in the middle of stage 2
    assert main([*common, "--output", str(tmp_path / "split")]) == 0
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert main([*common, "--output", str(tmp_path / "split"), "--resume"]) == 0
    full, split = _state(tmp_path / "full"), _state(tmp_path / "split")
    for part in ("model", "ema", "optimizer", "scheduler"):
        _assert_same_tensors(full[part], split[part], part)
    rows = _rows(tmp_path / "full")
    assert _rows(tmp_path / "split") == [
        dict(r, images_per_s=s["images_per_s"]) for r, s in zip(rows, _rows(tmp_path / "split"), strict=True)
    ]
    assert [(r["stage"], r["img_size"], r["drop"], r["mixup"]) for r in rows] == [
        (1, 32, 0.1, 0.0),
        (2, 48, 0.3, 0.2),
        (2, 48, 0.3, 0.2),
    ]
    assert [r["batch_size"] for r in rows] == [int(batch1.split()[1]), int(batch2.split()[1]), int(batch2.split()[1])]
    assert [r["lr"] for r in rows] == pytest.approx(lrs, abs=1e-9)
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert [s["img_size"] for s in config["training"]["progressive"]] == [32, 48]
    assert config["pretrained_cfg"]["input_size"] == [3, 48, 48]  # evaluation's size, not a stage's
    events = EventAccumulator(str(tmp_path / "full" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("progressive/img_size")] == [32, 48, 48]
    assert [round(e.value, 3) for e in events.Scalars("progressive/drop")] == [0.1, 0.3, 0.3]
    # per step, x in steps of the run's batch: stage 1's larger batch takes one step, worth the run's two
    steps = {"fixed": [1, 2, 3], "progressive-batch": [2, 3, 4, 5, 6]}[batches]
    assert [e.step for e in events.Scalars("train/loss")] == steps


def test_extension_recomputes_the_stages_and_a_changed_schedule_is_refused(images, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", str(images), *TINY, *PROGRESSIVE, "--output", str(out)]
    assert main([*common, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--epochs", "4", "--resume", "--progressive", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--progressive and its start values" in err and "\n" not in err
    assert main(["train", str(images), "--output", str(out), "--resume", "--epochs", "4"]) == 0
    said = capsys.readouterr().out
    assert "effnetv2: progressive learning: the 2 stages are recomputed over 4 epochs (were 2); epochs 3 on" in said
    assert [(r["stage"], r["img_size"]) for r in _rows(out)] == [(1, 32), (2, 48), (2, 48), (2, 48)]


def test_a_preset_run_resumes_with_its_own_values(images, tmp_path, monkeypatch, capsys):
    """The preset fills only what the run's command line did not set; a resume with nothing retyped keeps the
    values set by hand (not the preset's 300 px and dropout 0.3)."""
    out = tmp_path / "run"
    argv = ["train", str(images), *TINY, "--output", str(out), "--epochs", "2", "--progressive", "2"]
    argv += ["--progressive-preset", "s", "--img-size", "48", "--min-img-size", "32", "--drop", "0.25"]
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    assert main(argv) == 0
    monkeypatch.delenv(STOP_AFTER_ENV)
    capsys.readouterr()
    assert main(["train", str(images), "--output", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert [(r["img_size"], r["drop"], r["randaug_magnitude"]) for r in _rows(out)] == [(32, 0.1, 5), (48, 0.25, 15)]


def test_agc_amp_and_gradient_checkpointing_train_progressively(images, tmp_path):
    args = ["--epochs", "2", "--agc", "0.05", "--amp", "bf16", "--grad-checkpointing"]
    args += ["--progressive-batch", "--batch-size", "2"]
    assert main(["train", str(images), *TINY, *PROGRESSIVE, *args, "--output", str(tmp_path / "run")]) == 0
    assert [(r["stage"], r["img_size"], r["batch_size"]) for r in _rows(tmp_path / "run")] == [(1, 32, 4), (2, 48, 2)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--progressive", "2", "--img-size", "64", "--min-img-size", "96", "--epochs", "2"], "--min-img-size 96 is"),
        (["--progressive", "5", "--img-size", "64", "--epochs", "4"], "--epochs 4 is fewer than the 5 stages"),
        (["--progressive", "2", "--img-size", "40", "--epochs", "2"], "--min-img-size 20 is below the model's"),
        (["--progressive", "2", "--auto-augment", "trivial", "--epochs", "2"], "--auto-augment trivial cannot"),
        (["--progressive-batch", "--epochs", "2"], "--progressive-batch scales each progressive stage's batch"),
        ([*PROGRESSIVE, "--progressive-batch", "--epochs", "2"], "stage 1's batch of 9 is more than the 4 training"),
    ],
)
def test_refusals_are_one_line(images, tmp_path, capsys, args, message):
    assert main(["train", str(images), *TINY, "--output", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_torchrun_two_processes_train_progressively_in_step(images, tmp_path):
    """Each rank's batch scaled alike: 1 image per rank at 48 px, 2 (one step of its 2 images) at 32 px."""
    sums = tmp_path / "sums"
    sums.mkdir()
    args = ["train", images, *TINY, *PROGRESSIVE, "--batch-size", "1", "--progressive-batch", "--epochs", "2"]
    proc = torchrun([*args, "--output", tmp_path / "ddp"], env={CHECKSUMS_ENV: str(sums)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sums / "rank0.sha256").read_text() == (sums / "rank1.sha256").read_text()
    assert proc.stdout.count("stage 1/2: epochs 1, 32 px, batch 2 (lr x2.00)") == 1  # printed by rank 0 alone
    rows = _rows(tmp_path / "ddp")
    assert [(r["stage"], r["img_size"], r["batch_size"]) for r in rows] == [(1, 32, 2), (2, 48, 1)]
