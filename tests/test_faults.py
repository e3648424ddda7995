"""Faults of the machine, met for real (issue 29): a full disk, a read-only file system, folders this user may not
write, a full or closed stdout, and a stray torchrun environment. Every one ends as one line on stderr that names
the path and what to do, with exit status 1 (the machine) or 2 (the command line), no traceback, no partial file.

No fault is mocked: the full disk is a small tmpfs mounted here and filled (root only: skipped otherwise), the
permissions are real (as root the child drops CAP_DAC_OVERRIDE, which is what lets root write anywhere), stdout is
/dev/full or a pipe whose reader has gone. The model is a small tf_efficientnetv2_b0 at 64 px: the faults, not the
numbers, are the point.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S
from PIL import Image

import effnetv2
from effnetv2.cli import main
from effnetv2.cli.faults import ENVIRONMENT, USAGE, Fault, describe_fault
from effnetv2.distributed import RENDEZVOUS_TIMEOUT, launched_world_size, rendezvous_timeout
from effnetv2.errors import DistributedEnvError
from effnetv2.train.run_folder import RunFolder, RunFolderWriteError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnetv2_b0"
FULL = "no space left on the device; free some space (or write elsewhere) and run the command again"
DENIED = "permission denied; give this user access to it and its folder, or choose another path"


@pytest.fixture(scope="module")
def b0(tmp_path_factory) -> Path:
    """A 2-class tf_efficientnetv2_b0 saved by save_pretrained (random weights: only the faults are looked at)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("b0")
    model = effnetv2.create_model(MODEL, num_classes=2)
    effnetv2.save_pretrained(model, folder, model_config={"label_names": ["cat", "dog"]})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``{train,val}/{cat,dog}/{0,1}.png``: 8 small images, enough for one training step at batch 4."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return root


def images(data: Path) -> Path:
    return data / "train" / "cat"


def model_args(b0: Path) -> list[str]:
    return ["--model", f"local-dir:{b0}", "--img-size", "64"]


def train_args(data: Path, b0: Path, output: Path) -> list[str]:
    return [
        "train", str(data), "--output", str(output), "--model", MODEL, "--checkpoint", str(b0), "--img-size", "64",
        "--batch-size", "4", "--workers", "0", "--epochs", "1",
    ]  # fmt: skip


def one_line(err: str) -> str:
    """The single line the command line printed (asserting it is one, and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("effnetv2: error: "), err
    return lines[0]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


# -- a full disk, a read-only file system: a tmpfs mounted here -------------------------------------------------
@contextlib.contextmanager
def tmpfs(size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a new folder for the block (skips the test where none can be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real full disk) needs root")
    where = Path(tempfile.mkdtemp(prefix="effnetv2-tmpfs-"))
    mount = ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)]
    proc = subprocess.run(mount, capture_output=True, text=True)
    if proc.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(disk: Path) -> None:
    """Write ``disk/fill`` until the file system has no byte left."""
    fd = os.open(disk / "fill", os.O_WRONLY | os.O_CREAT)
    chunk = b"\0" * 65536
    try:
        while True:
            os.write(fd, chunk)  # a short write fills the last page; the next one fails
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0


@pytest.fixture(scope="module")
def full_disk() -> Iterator[Path]:
    with tmpfs("1m") as disk:
        fill(disk)
        yield disk


@pytest.mark.parametrize(
    "command, output",
    [
        ("embed", "e.safetensors"),  # safetensors' SafetensorError "... (os error 28)"
        ("embed", "e.npy"),  # an OSError from np.save into the atomic temp file
        ("embed", "shards"),  # sharded output: run.json, shards, index
        ("features", "f.safetensors"),
        ("features", "fshards"),
        ("explain", "pngs"),  # one PNG per image into a folder
    ],
)
def test_full_disk_is_one_line_naming_the_output(command, output, full_disk, b0, data, capsys):
    target = full_disk / output
    rc = main([command, str(images(data)), "-o", str(target), *model_args(b0)])
    line = one_line(capsys.readouterr().err)
    assert rc == ENVIRONMENT and line == f"effnetv2: error: {target}: {FULL}"
    assert files_under(full_disk) == {"fill"}  # nothing partial: no output, no temp file
    if command == "explain":
        assert not target.exists() or not any(target.iterdir())  # its folder may be there, empty
    else:  # a sharded output folder this run created, left empty, is removed
        assert sorted(p.name for p in full_disk.iterdir()) == ["fill"]


@pytest.mark.parametrize("fmt, name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_full_disk_during_export_is_one_line_and_leaves_nothing(fmt, name, full_disk, b0, capsys):
    # torch.jit.save by path aborts the process on a full disk (C++): the export is saved through memory
    if fmt == "onnx":
        pytest.importorskip("onnx")
    target = full_disk / name
    argv = ["export", "--format", fmt, "--output", str(target), "--model", MODEL, "--checkpoint", str(b0)]
    rc = main([*argv, "--img-size", "64"])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("effnetv2: ")]  # (torch's FutureWarnings aside)
    assert rc == ENVIRONMENT and "Traceback" not in err
    assert ours == [
        f"effnetv2: exporting {b0} to {fmt}, then verifying it ...",
        f"effnetv2: error: {target}: {FULL}",
    ]
    assert err.strip().splitlines()[-1] == ours[-1]
    assert files_under(full_disk) == {"fill"}  # no export, no .tmp file beside it


@pytest.mark.parametrize("command", ["embed", "features"])
def test_full_disk_keeps_the_empty_output_folder_the_user_made(command, b0, data, capsys):
    with tmpfs("1m") as disk:
        mine = disk / "mine"
        mine.mkdir()
        fill(disk)
        rc = main([command, str(images(data)), "-o", str(mine), *model_args(b0)])
        assert rc == ENVIRONMENT and one_line(capsys.readouterr().err) == f"effnetv2: error: {mine}: {FULL}"
        assert sorted(p.name for p in disk.iterdir()) == ["fill", "mine"] and not any(mine.iterdir())


def test_torch_save_to_a_path_on_a_full_disk(full_disk):
    # torch.save by path fails in C++ ("basic_ios::clear"), no OSError behind it: the output is named, the causes too
    target = full_disk / "x.pt"
    with pytest.raises(RuntimeError, match="inline_container") as caught:
        torch.save(torch.zeros(1000), target)
    target.unlink(missing_ok=True)  # torch.save by path is not atomic (the command line's writes are)
    fault = describe_fault(caught.value, target)
    assert fault.status == ENVIRONMENT and fault.message.startswith(f"cannot write {target} (unexpected pos ")
    assert fault.message.endswith(
        "check that its disk has free space and that this user may write there, then run the command again"
    )


def test_full_disk_while_training_names_the_run_folder(full_disk, b0, data, capsys):
    output = full_disk / "run"
    rc = main(train_args(data, b0, output))
    assert rc == ENVIRONMENT and one_line(capsys.readouterr().err) == f"effnetv2: error: {output}: {FULL}"
    assert files_under(full_disk) - {"fill"} <= {"run/.lock"}  # the run folder's lock, no model, no state


def test_full_disk_in_torch_save_of_the_training_state(b0, data, capsys):
    # 40 MB: the best model (24 MB) fits, the training state (the weights and the optimizer's momenta, 47 MB) does
    # not. torch.save then fails as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
    with tmpfs("40m") as disk:
        output = disk / "run"
        rc = main(train_args(data, b0, output))
        assert rc == ENVIRONMENT and one_line(capsys.readouterr().err) == (
            f"effnetv2: error: cannot write {output / 'last_state.pt'}: No space left on device; no epoch is "
            "recorded yet: run the command again (without --resume)"
        )
        assert (output / "model.safetensors").is_file()  # written first: the fault came from the state's write
        assert not (output / "last_state.pt").exists()
        assert not [name for name in files_under(disk) if name.endswith(".tmp")]


def test_full_disk_in_torch_save_keeps_the_previous_epochs_state_and_says_so():
    # the state written through a Python file: torch.save's "RuntimeError: [enforce fail at inline_container.cc]
    # unexpected pos" with the file's OSError(ENOSPC) as its context becomes the run folder's own one-line error
    with tmpfs("2m") as disk:
        run = RunFolder(disk / "run")
        run.path.mkdir()
        run.write_state({"epoch": 1, "model": {"w": torch.zeros(1 << 16)}})  # 256 kB: beyond any write buffer
        before = run.state_path.read_bytes()
        fill(disk)
        filler = disk / "fill"
        os.truncate(filler, filler.stat().st_size - (1 << 17))  # 128 kB free: the save fails midway (a failing
        # first write is an OSError from torch.save, already handled: the RuntimeError comes after writes that worked)
        with pytest.raises(RunFolderWriteError) as caught:
            run.write_state({"epoch": 2, "model": {"w": torch.ones(1 << 16)}})
        cause = caught.value.__cause__
        assert isinstance(cause, RuntimeError) and "inline_container" in str(cause)  # the path under test
        expected = (
            f"cannot write {run.state_path}: No space left on device; {run.state_path} still holds the previous "
            "epoch's state: --resume continues from it"
        )
        assert caught.value.errno == errno.ENOSPC and caught.value.strerror == expected
        assert describe_fault(caught.value, run.path) == Fault(expected, ENVIRONMENT)  # the command line's line
        assert run.state_path.read_bytes() == before
        assert files_under(disk) == {"fill", "run/last_state.pt"}  # no temp file


def test_read_only_file_system(b0, data, capsys):
    with tmpfs("1m", "ro") as disk:
        rc = main(["embed", str(images(data)), "-o", str(disk / "e.npy"), *model_args(b0)])
        line = one_line(capsys.readouterr().err)
        assert (
            rc == ENVIRONMENT
            and line == f"effnetv2: error: {disk / 'e.npy'}: read-only file system; write to a writable folder"
        )


# -- permissions: folders this user may not write ----------------------------------------------------------------
# The child runs each command line through main() and records its status and stderr: one interpreter start for
# all the cases. An exception escaping main() is recorded as its traceback.
_DRIVER = """
import contextlib, io, json, sys, traceback
from effnetv2.cli import main
probe = sys.argv[3]
try:
    open(probe, "w").close()
except PermissionError:
    pass
else:
    json.dump({"skip": "this process can still write into a read-only folder"}, open(sys.argv[1], "w"))
    sys.exit(0)
results = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except BaseException:
            rc = None
            traceback.print_exc()
    results.append({"rc": rc, "err": err.getvalue()})
json.dump(results, open(sys.argv[1], "w"))
"""

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_file_capabilities(umask: int | None = None):
    """preexec_fn for a child: as root, drop the capabilities that bypass file permissions (kept: its uid, its
    files); and set ``umask``, when given."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, in the parent: the child only calls it
    root = os.geteuid() == 0

    def drop() -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) if root else ():
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        if umask is not None:
            os.umask(umask)

    return drop


def run_unprivileged(cases: list[list[str]], probe: Path, tmp_path: Path, umask: int | None = None) -> list[dict]:
    """Run ``main(argv)`` for each case in a child that file permissions bind (root: without CAP_DAC_OVERRIDE),
    with ``umask`` when given."""
    results = tmp_path / "results.json"
    cmd = [sys.executable, "-c", _DRIVER, str(results), json.dumps(cases), str(probe)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    preexec = _without_file_capabilities(umask) if os.geteuid() == 0 or umask is not None else None
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=preexec, timeout=HANG_GUARD_S)
    except subprocess.SubprocessError as e:  # the capability could not be dropped (a restricted container)
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE for the child: {e}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(results.read_text())
    if isinstance(outcome, dict):
        pytest.skip(outcome["skip"])
    return outcome


def test_unwritable_folders_are_one_line_naming_the_path(b0, data, tmp_path):
    locked, pngs = tmp_path / "locked", tmp_path / "pngs"
    locked.mkdir()
    pngs.mkdir()
    source = str(images(data))
    cases = {
        locked / "e.safetensors": ["embed", source, "-o", str(locked / "e.safetensors"), *model_args(b0)],
        locked / "e.npy": ["embed", source, "-o", str(locked / "e.npy"), *model_args(b0)],
        locked / "shards": ["embed", source, "-o", str(locked / "shards"), *model_args(b0)],
        pngs / "0.png": ["explain", source, "-o", str(pngs), *model_args(b0)],  # the folder exists: its first PNG
        locked / "run": train_args(data, b0, locked / "run"),
    }
    locked.chmod(0o555)
    pngs.chmod(0o555)
    try:
        results = run_unprivileged(list(cases.values()), probe=locked / "probe", tmp_path=tmp_path)
    finally:
        locked.chmod(0o755)
        pngs.chmod(0o755)
    for (path, argv), result in zip(cases.items(), results, strict=True):
        assert result["rc"] == ENVIRONMENT, (argv, result)
        assert one_line(result["err"]) == f"effnetv2: error: {path}: {DENIED}", argv
    assert not list(locked.iterdir()) and not list(pngs.iterdir())


def test_sharded_output_folder_left_empty_by_a_permission_fault_is_removed(b0, data, tmp_path):
    # umask 0o277: the folder a run creates is r-x for its owner, so its run.json cannot be written there
    top, mine = tmp_path / "top", tmp_path / "top" / "mine"
    mine.mkdir(parents=True)
    mine.chmod(0o555)  # a folder the user made, empty and read-only: it stays
    source = str(images(data))
    cases = {
        top / "e": ["embed", source, "-o", str(top / "e"), *model_args(b0)],
        top / "f": ["features", source, "-o", str(top / "f"), *model_args(b0)],
        mine: ["embed", source, "-o", str(mine), *model_args(b0)],
    }
    try:
        results = run_unprivileged(list(cases.values()), probe=mine / "probe", tmp_path=tmp_path, umask=0o277)
    finally:
        mine.chmod(0o755)
    for (path, argv), result in zip(cases.items(), results, strict=True):
        assert result["rc"] == ENVIRONMENT, (argv, result)
        assert one_line(result["err"]) == f"effnetv2: error: {path}/run.json: {DENIED}", argv
    assert sorted(p.name for p in top.iterdir()) == ["mine"] and not any(mine.iterdir())


# -- the user's paths ----------------------------------------------------------------------------------------------
def test_train_output_that_is_a_file(b0, data, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(train_args(data, b0, existing)) == USAGE
    assert one_line(capsys.readouterr().err) == (
        f"effnetv2: error: {existing}: is a file where a folder is needed; remove it or choose another path"
    )
    assert main(train_args(data, b0, existing / "run")) == USAGE
    assert one_line(capsys.readouterr().err) == (
        f"effnetv2: error: {existing / 'run'}: not a folder (it, or a folder on the way to it, is a file); check the "
        "path"
    )
    assert existing.read_text() == "mine"


def _real_os_error(action) -> OSError:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value


@pytest.mark.parametrize(
    "action, message, status",
    [
        (lambda d: os.open(d, os.O_WRONLY), "{d}: is a folder; give a file name", USAGE),
        (lambda d: os.open(d / "gone.txt", os.O_RDONLY), "{d}/gone.txt: no such file or folder; check the path", USAGE),
        (lambda d: os.mkdir(d), "{d}: already exists; remove it or choose another path", USAGE),
        (lambda d: os.rmdir(d.parent), "{p}: folder not empty; remove it or choose another path", USAGE),
        (
            lambda d: os.open(d / ("x" * 300), os.O_CREAT | os.O_WRONLY),
            "{d}/{x}: file name too long; choose a shorter path",
            USAGE,
        ),
    ],
)
def test_os_errors_from_the_system_name_the_path_and_the_remedy(action, message, status, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    fault = describe_fault(_real_os_error(lambda: action(folder)), output="ignored: the error names its file")
    assert fault == Fault(message.format(d=folder, p=tmp_path, x="x" * 300), status)


# -- stdout: full, or closed by its reader -------------------------------------------------------------------------
def cli_process(argv: list[str], stdout, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "effnetv2", *argv]
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_stdout_on_a_full_device(b0, data):
    with open("/dev/full", "w") as full:
        proc = cli_process(["predict", str(images(data)), *model_args(b0), "--workers", "0"], stdout=full)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == ENVIRONMENT
    assert one_line(err) == f"effnetv2: error: standard output: {FULL}"  # and no "Exception ignored" at exit


def test_stdout_closed_by_its_reader_is_silent(b0, data):
    proc = cli_process(["predict", str(images(data)), *model_args(b0), "--workers", "0"], stdout=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the first write meets a closed pipe
    err = proc.stderr.read()
    proc.wait(timeout=HANG_GUARD_S)
    assert proc.returncode == ENVIRONMENT and err == ""


# -- a stray torchrun environment ------------------------------------------------------------------------------------
STRAY = {"WORLD_SIZE": "2", "RANK": "0"}  # no MASTER_ADDR, no MASTER_PORT
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def without_torchrun(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **variables}


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_incomplete_torchrun_environment_is_refused_in_one_line(command, b0, data, tmp_path):
    output = tmp_path / "out"
    argv = [
        command,
        str(images(data)),
        *model_args(b0),
        "--workers",
        "0",
        *(["-o", str(output)] * (command == "embed")),
    ]
    cmd = [sys.executable, "-m", "effnetv2", *argv]
    proc = subprocess.run(cmd, env=without_torchrun(**STRAY), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == USAGE and proc.stdout == ""
    assert one_line(proc.stderr) == (
        "effnetv2: error: WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT are not: launch with torchrun "
        "(torchrun --nproc_per_node 2 -m effnetv2 ...), or unset WORLD_SIZE to run in one process"
    )
    assert not output.exists()


def test_process_group_that_cannot_be_joined_is_one_line(b0, data):
    with socket.socket() as taken:  # rank 0 must listen on MASTER_PORT: another program holds it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = without_torchrun(**STRAY, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "effnetv2", "predict", str(images(data)), *model_args(b0), "--workers", "0"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == USAGE
    line = one_line(proc.stderr)
    assert f"cannot join the torchrun process group at 127.0.0.1:{port} (" in line and "address already in use" in line
    assert line.endswith("launch with torchrun, or unset WORLD_SIZE to run in one process")


STRAY_WORLD_SIZES = {
    "2": "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not: launch with torchrun (torchrun "
    "--nproc_per_node 2 -m effnetv2 ...), or unset WORLD_SIZE to run in one process",
    "abc": "WORLD_SIZE='abc' is not an integer >= 1: launch with torchrun, or unset WORLD_SIZE to run in one process",
}


@pytest.mark.parametrize("output", ["e.npy", "shards", "--files-from -"])
@pytest.mark.parametrize("world_size", sorted(STRAY_WORLD_SIZES))
def test_stray_world_size_is_the_same_line_for_every_output(world_size, output, b0, data, tmp_path):
    # embed -o FILE checks WORLD_SIZE for itself (a file output under torchrun), --files-from - too (stdin under
    # torchrun): both read it through launched_world_size, so they refuse as the process group does
    if output == "--files-from -":
        inputs, stdin, target = ["--files-from", "-"], f"{images(data) / '0.png'}\n", tmp_path / "shards"
    else:
        inputs, stdin, target = [str(images(data))], None, tmp_path / output
    cmd = [sys.executable, "-m", "effnetv2", "embed", *inputs, "-o", str(target), *model_args(b0), "--workers", "0"]
    env = without_torchrun(WORLD_SIZE=world_size)
    proc = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == USAGE and proc.stdout == ""
    assert one_line(proc.stderr) == f"effnetv2: error: {STRAY_WORLD_SIZES[world_size]}"
    assert not target.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_complete_torchrun_environment_nobody_joins_waits_a_bounded_time(command, b0, data, tmp_path):
    # WORLD_SIZE=2 RANK=0 MASTER_ADDR MASTER_PORT, all well-formed, and no second process: rank 0 waits for it as
    # long as EFFNETV2_RENDEZVOUS_TIMEOUT_S says (a few seconds here; 10 minutes by default), then says so
    port, output = free_port(), tmp_path / "out"
    argv = [
        command,
        str(images(data)),
        *model_args(b0),
        "--workers",
        "0",
        *(["-o", str(output)] * (command == "embed")),
    ]
    env = without_torchrun(
        WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), EFFNETV2_RENDEZVOUS_TIMEOUT_S="2"
    )
    cmd = [sys.executable, "-m", "effnetv2", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == USAGE and proc.stdout == ""
    assert one_line(proc.stderr) == (
        f"effnetv2: error: no other process joined within 2 s (WORLD_SIZE=2, rendezvous at 127.0.0.1:{port}; "
        "EFFNETV2_RENDEZVOUS_TIMEOUT_S sets the wait): launch with torchrun, or unset WORLD_SIZE to run in one process"
    )
    assert not output.exists()


@pytest.mark.parametrize("text", ["abc", "0", "-5", "inf", "nan", ""])
def test_rendezvous_timeout_from_the_environment(text, monkeypatch):
    monkeypatch.setenv("EFFNETV2_RENDEZVOUS_TIMEOUT_S", text)
    if text == "":
        assert rendezvous_timeout() == RENDEZVOUS_TIMEOUT == timedelta(minutes=10)
        return
    with pytest.raises(DistributedEnvError) as caught:
        rendezvous_timeout()
    assert str(caught.value) == (
        f"EFFNETV2_RENDEZVOUS_TIMEOUT_S={text!r} is not a number of seconds > 0: unset it to wait 600 s"
    )
    monkeypatch.setenv("EFFNETV2_RENDEZVOUS_TIMEOUT_S", " 2.5 ")
    assert rendezvous_timeout() == timedelta(seconds=2.5)


def test_single_process_torchrun_variables_are_ignored(b0, data, capsys, monkeypatch):
    for name in RENDEZVOUS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")  # meaningless in one process: ignored, as torch ignores it
    assert launched_world_size() == 1
    assert main(["predict", str(images(data)), *model_args(b0), "--workers", "0", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1 + 2 * 2  # a header, 2 images × 2 classes


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer >= 1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not an integer >= 1"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT are not"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "WORLD_SIZE=2 is set but RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "MASTER_PORT='0' is not an integer"),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1", "LOCAL_RANK": "x"},
            "LOCAL_RANK='x' is not an integer >= 0",
        ),
    ],
)
def test_malformed_torchrun_variables(variables, message, monkeypatch):
    for name in RENDEZVOUS:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedEnvError, match="launch with torchrun") as caught:
        launched_world_size()
    assert str(caught.value).startswith(message) and isinstance(caught.value, ValueError)


def test_complete_torchrun_environment_is_taken(monkeypatch):
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launched_world_size() == 4


# -- what is not a fault of the machine keeps its traceback --------------------------------------------------------
def test_bugs_are_not_described():
    assert describe_fault(RuntimeError("shape mismatch"), "out") is None
    assert describe_fault(ValueError("not ours"), "out") is None
    assert describe_fault(KeyError("x"), "out") is None
