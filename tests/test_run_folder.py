"""The run folder of ``effnetv2 train``: one writer, a resume state that round-trips, a write order that keeps every
instant resumable, metrics that survive a torn line, writes that fail cleanly; and the LR schedule's extension."""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import pickle
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from effnetv2 import CheckpointError
from effnetv2.train.run_folder import (
    RunFolder,
    RunFolderWriteError,
    TrainError,
    check_resume,
)
from effnetv2.train.schedule import cosine_with_warmup

ROOT = Path(__file__).resolve().parents[1]
RECIPE = dict(model="efficientnetv2_rw_m", batch_size=4, world_size=1, train_images=8, img_size=32, lr=0.02, seed=42)


def _state(epoch: int, epochs: int = 3, **extra) -> dict:
    rows = [dict(epoch=e, train_loss=1.0 / e, val_top1=10.0 * e) for e in range(1, epoch + 1)]
    return dict(
        epoch=epoch,
        epochs=epochs,
        best_top1=10.0 * epoch,
        metrics=rows,
        recipe=dict(RECIPE),
        classes=["cat", "dog"],
        model={"w": torch.full((3,), float(epoch))},
        optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        scheduler={"last_epoch": epoch, "restarts": [(1, [0.5])]},
        rng=[{"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)}],
        **extra,
    )


def _tiny_model():
    import effnetv2

    return effnetv2.create_model("efficientnetv2_rw_m", num_classes=2)


# -- the lock ---------------------------------------------------------------------------------------------------


def _hold_lock_in_child(folder: Path) -> subprocess.Popen:
    """Another process that holds the folder's lock as ``RunFolder.lock`` takes it (plain Python: starts fast).

    It prints "locked" once it holds the lock and then holds it until the test kills it: it waits on its stdin, which
    the test never writes or closes first, so no clock decides when the lock goes."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(folder / ".lock")!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{{os.getpid()}}\\n".encode(), 0)
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    from conftest import HANG_GUARD_S  # not at the top: a child process imports this module (test below)

    folder = RunFolder(tmp_path / "run")
    folder.lock()
    assert (folder.path / ".lock").read_text() == f"{os.getpid()}\n"
    # another open of the lock file is another writer, even within one process
    with pytest.raises(TrainError) as info:
        RunFolder(folder.path).lock()
    assert str(info.value) == f"{folder.path} is in use by another effnetv2 train process (pid {os.getpid()})"
    folder.unlock()

    holder = _hold_lock_in_child(folder.path)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainError) as info:
            RunFolder(folder.path).lock()
        assert str(info.value) == f"{folder.path} is in use by another effnetv2 train process (pid {holder.pid})"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases a dead process's lock
        holder.wait(timeout=HANG_GUARD_S)  # reaped: the lock is gone before the next open
        holder.stdin.close()
        holder.stdout.close()
    with RunFolder(folder.path) as again:
        assert (again.path / ".lock").read_text().strip() == str(os.getpid())


def test_open_checks_resume_against_the_folder(tmp_path):
    missing = RunFolder(tmp_path / "new")
    with pytest.raises(TrainError, match="last_state.pt does not exist; start without --resume"):
        missing.open(resume=True)
    assert not missing.path.exists()  # nothing created

    run = RunFolder(tmp_path / "run")
    run.open(resume=False)
    run.write_state(_state(1))
    run.unlock()
    with pytest.raises(TrainError, match="already holds a training run; pass --resume"):
        RunFolder(run.path).open(resume=False)
    again = RunFolder(run.path)
    again.open(resume=True)
    again.unlock()


# -- the resume state ---------------------------------------------------------------------------------------------


def test_state_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    saved = _state(2)
    run.write_state(saved)
    back = run.read_state()
    assert back["format"] == "effnetv2-train-state" and back["version"] == 1
    for key in ("epoch", "epochs", "best_top1", "metrics", "recipe", "classes", "scheduler"):
        assert back[key] == saved[key], key
    assert torch.equal(back["model"]["w"], saved["model"]["w"])
    assert torch.equal(back["rng"][0]["torch"], saved["rng"][0]["torch"])
    assert oct(run.state_path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_state.pt"]  # no temp file left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        ("truncated", "cannot read"),
        ("foreign", "is not an effnetv2 training state"),
        ("evil", "holds objects other than tensors and plain containers"),
        ("incomplete", "lacks epochs"),
        ("text", "cannot read"),
        ("garbage", r"cannot read .* \(Unsupported operand 103\); it is damaged"),  # a pickle torch cannot parse
    ],
)
def test_bad_state_is_one_line_checkpoint_error(tmp_path, content, message):
    run = RunFolder(tmp_path)
    if content == "truncated":
        run.write_state(_state(1))
        data = run.state_path.read_bytes()
        run.state_path.write_bytes(data[: len(data) // 2])
    elif content == "foreign":
        torch.save({"w": torch.zeros(2)}, run.state_path)  # a model checkpoint, not a state
    elif content == "evil":
        run.state_path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    elif content == "incomplete":
        state = _state(1)
        del state["epochs"]
        run.write_state(state)
    elif content == "garbage":
        run.state_path.write_bytes(b"\x80\x02garbage")
    else:
        run.state_path.write_text("hello\n")
    with pytest.raises(CheckpointError, match=message) as info:
        run.read_state()
    assert len(str(info.value).splitlines()) == 1
    assert str(run.state_path) in str(info.value)
    assert "weights_only=False" not in str(info.value) and "weights_only` set to `False" not in str(info.value)


class _Planted:
    """Unpickled, it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_a_state_that_would_run_code_is_refused_in_one_line_of_ours(tmp_path, container):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    marker = tmp_path / "code-ran"
    # a state's plain values, no tensor (a bare pickle of one is refused for torch's own loader, not the payload)
    planted = {"format": "effnetv2-train-state", "version": 1, "epoch": 1, "rng": [_Planted(marker)]}
    if container == "torch.save":
        torch.save(planted, run.state_path)
    else:  # the legacy format torch.load also reads: a bare pickle
        run.state_path.write_bytes(pickle.dumps(planted, protocol=2))
    with pytest.raises(CheckpointError) as info:
        run.read_state()
    assert str(info.value) == (
        f"{run.state_path} holds objects other than tensors and plain containers (posix.system), which "
        "torch.load(weights_only=True) refuses because loading them could run code: it is not an effnetv2 training "
        "state; start a new run in another --output (or remove the file to start this one again)"
    )
    assert not marker.exists()
    # the oracle: the planted object is live, unpickling it without the guard runs it (the refusal above is real)
    if container == "torch.save":
        torch.load(run.state_path, weights_only=False)
    else:
        pickle.loads(run.state_path.read_bytes())
    assert marker.exists()


# -- metrics.jsonl ------------------------------------------------------------------------------------------------


def test_metrics_torn_last_line_is_dropped_garbage_is_an_error(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_metrics() == []
    run.write_metrics([dict(epoch=1, val_top1=1.0), dict(epoch=2, val_top1=2.0)])
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "val_to')  # a write cut short by a crash
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]

    run.metrics_path.write_text('{"epoch": 1}\nnot json at all\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a metrics row") as info:
        run.read_metrics()
    assert len(str(info.value).splitlines()) == 1


# -- the write order ----------------------------------------------------------------------------------------------


def _finish_epochs(run: RunFolder, upto: int, model=None) -> None:
    for e in range(1, upto + 1):
        run.end_epoch(_state(e), best_model=model if e == 1 else None, label_names=["cat", "dog"])


def test_a_failure_between_state_and_metrics_loses_and_repeats_nothing(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    _finish_epochs(run, 1)
    # killed after the state of epoch 2 was written, before metrics.jsonl was
    monkeypatch.setattr(RunFolder, "write_metrics", lambda self, rows: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run.end_epoch(_state(2))
    monkeypatch.undo()
    state = run.read_state()
    assert state["epoch"] == 2  # the epoch is done: a resume starts at epoch 3
    assert [r["epoch"] for r in run.read_metrics()] == [1]  # one row behind, never ahead
    # what a resume does first: rebuild metrics.jsonl from the state; then epoch 3
    run.write_metrics(state["metrics"])
    run.end_epoch(_state(3))
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]


def test_a_failure_between_best_model_and_state_keeps_the_previous_epoch(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    _finish_epochs(run, 1)
    writes = []
    monkeypatch.setattr(RunFolder, "save_best", lambda self, model, names, training=None: writes.append("best"))
    monkeypatch.setattr(
        RunFolder, "write_state", lambda self, state: (_ for _ in ()).throw(KeyboardInterrupt("killed"))
    )
    with pytest.raises(KeyboardInterrupt):
        run.end_epoch(_state(2), best_model=torch.nn.Linear(1, 1))
    monkeypatch.undo()
    assert writes == ["best"]  # the best model goes first: a resume redoes this epoch and writes it again
    assert run.read_state()["epoch"] == 1
    assert [r["epoch"] for r in run.read_metrics()] == [1]


def test_full_disk_is_one_line_and_keeps_the_previous_state(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    _finish_epochs(run, 1)
    before = run.state_path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunFolderWriteError) as info:
        run.end_epoch(_state(2))
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"[Errno {errno.ENOSPC}] cannot write {run.state_path}: No space left on device;")
    assert "still holds the previous epoch's state" in message and len(message.splitlines()) == 1
    assert run.state_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_state.pt", "metrics.jsonl"]  # no temp file left


def test_end_epoch_saves_the_best_model_with_label_names(tmp_path):
    run = RunFolder(tmp_path)
    with run:
        _finish_epochs(run, 2, model=_tiny_model())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["label_names"] == ["cat", "dog"] and config["num_classes"] == 2
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / ".lock").is_file() and run.read_state()["epoch"] == 2  # carried over by the model save


# -- resume checks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=8), "--batch-size: the run in RUN was started with 4, this one has 8"),
        (dict(world_size=2), "the number of processes (torchrun): the run in RUN was started with 1, this one has 2"),
        (dict(lr=0.1), "--lr: the run in RUN was started with 0.02, this one has 0.1"),
        (dict(train_images=9), "the number of training images: the run in RUN was started with 8, this one has 9"),
        (dict(ema=0.99), "--ema: the run in RUN was started with not set, this one has 0.99"),
    ],
)
def test_resume_refuses_a_changed_option(change, message):
    with pytest.raises(TrainError) as info:
        check_resume(_state(1), {**RECIPE, **change}, ["cat", "dog"], 3, Path("RUN"))
    assert str(info.value).startswith(message)


def test_resume_epochs_extend_continue_done_or_refuse():
    where = Path("RUN")
    assert check_resume(_state(1), RECIPE, ["cat", "dog"], 3, where) == "continue"
    assert check_resume(_state(1), RECIPE, ["cat", "dog"], 5, where) == "extend"
    assert check_resume(_state(3), RECIPE, ["cat", "dog"], 5, where) == "extend"
    assert check_resume(_state(3), RECIPE, ["cat", "dog"], 3, where) == "done"
    with pytest.raises(TrainError, match=r"--epochs 2: the run in RUN is planned for 3 epochs \(1 done\)"):
        check_resume(_state(1), RECIPE, ["cat", "dog"], 2, where)
    with pytest.raises(TrainError, match="data classes differ"):
        check_resume(_state(1), RECIPE, ["ant", "bee"], 3, where)


# -- the LR of an extended run ---------------------------------------------------------------------------------------


def _lrs(sched, opt, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("join", [6, 2, 1])  # after the warmup, at its end, within it
def test_extended_schedule_is_continuous_and_ends_at_zero(join):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([dict(params=[p], lr=0.1), dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=0.05)])
    sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2)
    before = _lrs(sched, opt, join)
    at_join = [g["lr"] for g in opt.param_groups]
    state = sched.state_dict()  # the extension happens on resume: from the saved state

    opt2 = torch.optim.SGD([dict(params=[p], lr=0.1), dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=0.05)])
    resumed = cosine_with_warmup(opt2, total_steps=10, warmup_steps=2)
    resumed.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    resumed.extend(20)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(at_join)  # continuous at the join
    after = _lrs(resumed, opt2, 20 - join)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # reaches 0 at the new end
    assert opt2.param_groups[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    if join > 2:  # after the warmup: from the current LR straight down, never climbing back
        assert after[0] == pytest.approx(at_join[0])
        assert all(b <= a + 1e-15 for a, b in itertools.pairwise(after))
        t = 5  # closed form: cosine from the join's LR over the remaining steps
        assert after[t] == pytest.approx(at_join[0] * 0.5 * (1 + math.cos(math.pi * t / (20 - join))))
    else:  # within the warmup: the same as a run started with 20 steps
        fresh_opt = torch.optim.SGD([dict(params=[p], lr=0.1)])
        fresh = _lrs(cosine_with_warmup(fresh_opt, total_steps=20, warmup_steps=2), fresh_opt, 20)
        assert before + after == pytest.approx(fresh)
    assert max(after) <= max(at_join[0], 0.1) + 1e-12

    # a second resume of the extended run continues the same plan
    mid = resumed.state_dict()
    opt3 = torch.optim.SGD([dict(params=[p], lr=0.1), dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=0.05)])
    again = cosine_with_warmup(opt3, total_steps=10, warmup_steps=2)
    again.load_state_dict(mid)
    assert again.lr_at(join + 3) == pytest.approx(resumed.lr_at(join + 3))
    with pytest.raises(ValueError, match="cannot be shortened"):
        again.extend(5)


def test_kill_9_between_state_and_metrics_is_resumable(tmp_path):
    # a real SIGKILL of a writing process right after the state of epoch 2 reached the disk
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_run_folder import _state
        from effnetv2.train.run_folder import RunFolder
        run = RunFolder({str(tmp_path)!r})
        run.lock()
        run.end_epoch(_state(1))
        RunFolder.write_metrics = lambda self, rows: os.kill(os.getpid(), signal.SIGKILL)
        run.end_epoch(_state(2))
        """
    )
    from conftest import HANG_GUARD_S  # not at the top: the child imports this module, and conftest imports timm

    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=HANG_GUARD_S
    )
    assert proc.returncode == -signal.SIGKILL
    run = RunFolder(tmp_path)
    run.open(resume=True)  # the dead writer's lock is gone
    state = run.read_state()
    assert state["epoch"] == 2 and [r["epoch"] for r in run.read_metrics()] == [1]
    run.write_metrics(state["metrics"])  # what --resume does first
    run.end_epoch(_state(3))
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
