"""effnetv2.atomic: files and folders appear whole or not at all, with the usual modes, and no temp survives."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from effnetv2 import atomic
from effnetv2.atomic import atomic_folder, atomic_path, remove_stale_temps, write_bytes, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_files_get_mode_0644_under_umask_022(tmp_path, umask_022):
    write_text(tmp_path / "a.txt", "hello")
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    with atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("c")
    for name in ("a.txt", "b.bin", "c.txt"):
        assert mode(tmp_path / name) == 0o644, name
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert entries(tmp_path) == {"a.txt", "b.bin", "c.txt"}


def test_folder_and_its_files_get_usual_modes(tmp_path, umask_022):
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert mode(tmp_path / "out") == 0o755
    assert mode(tmp_path / "out" / "x") == 0o644


def test_exception_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert entries(tmp_path) == {"f.txt"}


def test_body_that_writes_nothing_fails_and_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "old")
    with pytest.raises(FileNotFoundError, match="produced no file"), atomic_path(target):
        pass
    assert target.read_text() == "old"


def test_stale_temp_of_dead_pid_is_removed_by_next_write(tmp_path):
    target = tmp_path / "f.txt"
    stale = tmp_path / f".f.txt.{dead_pid()}-0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)  # what a killed write leaves behind
    stale_dir = tmp_path / f".f.txt.{dead_pid()}-89abcdef.tmp"
    stale_dir.mkdir()  # what a killed folder write leaves behind
    (stale_dir / "inner").write_text("x")
    write_text(target, "new")
    assert entries(tmp_path) == {"f.txt"}
    assert target.read_text() == "new"


def test_live_and_foreign_temps_are_kept(tmp_path):
    live = tmp_path / f".f.txt.{os.getpid()}-0123abcd.tmp"  # a write in progress (this process)
    live.write_text("x")
    pid = dead_pid()
    # Temps of other targets whose names start like f.txt's: never f.txt's to remove.
    other = [tmp_path / f".f.txt.{pid}-b.{pid}-0123abcd.tmp", tmp_path / f".f.txt.gz.{pid}-0123abcd.tmp"]
    for path in other:
        path.write_text("x")
    assert remove_stale_temps(tmp_path / "f.txt") == []
    assert live.exists() and all(path.exists() for path in other)


def test_folder_swap_carries_over_other_files_with_same_inode(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "a").write_text("old a")
    (folder / "keep.txt").write_text("kept")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_text("deep")
    inode = (folder / "keep.txt").stat().st_ino
    with atomic_folder(folder) as tmp:
        (tmp / "a").write_text("new a")
        (tmp / "b").write_text("new b")
    assert entries(folder) == {"a", "b", "keep.txt", "sub"}
    assert (folder / "a").read_text() == "new a"
    assert (folder / "b").read_text() == "new b"
    assert (folder / "keep.txt").read_text() == "kept"
    assert (folder / "keep.txt").stat().st_ino == inode  # a hard link: an flock held on it stays valid
    assert (folder / "sub" / "deep.txt").read_text() == "deep"
    assert entries(tmp_path) == {"run"}  # the old folder (swapped to a temp name) is gone


def test_folder_keeps_its_permissions(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    with atomic_folder(folder) as tmp:
        (tmp / "a").write_text("1")
    assert mode(folder) == 0o700


def test_folder_unchanged_after_exception(tmp_path):
    folder = tmp_path / "run"
    with atomic_folder(folder) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    inode = folder.stat().st_ino
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(folder) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("boom")
    assert folder.stat().st_ino == inode
    assert entries(folder) == {"a", "b"}
    assert (folder / "a").read_text() == (folder / "b").read_text() == "1"
    assert entries(tmp_path) == {"run"}


def test_folder_swap_without_renameat2_still_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # not Linux, or no RENAME_EXCHANGE
    folder = tmp_path / "run"
    for value in ("1", "2"):
        with atomic_folder(folder) as tmp:
            (tmp / "a").write_text(value)
    assert (folder / "a").read_text() == "2"
    assert entries(tmp_path) == {"run"}


def test_folder_behind_a_symlink_is_written_and_the_link_kept(tmp_path):
    real = tmp_path / "real"
    with atomic_folder(real) as tmp:
        (tmp / "a").write_text("1")
    (tmp_path / "link").symlink_to("real")
    with atomic_folder(tmp_path / "link") as tmp:
        (tmp / "a").write_text("2")
    assert (tmp_path / "link").is_symlink()
    assert (real / "a").read_text() == "2"
    assert entries(tmp_path) == {"real", "link"}


def test_folder_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_folder(tmp_path / "f"):
        pass


# A writer that rewrites a 2-file folder as fast as it can; both files hold the same counter.
WRITER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)  # effnetv2.atomic alone: no torch import, a fast start
    target, i = sys.argv[2], int(sys.argv[3])
    while True:
        i += 1
        with atomic.atomic_folder(target) as tmp:
            (tmp / "a").write_text(str(i))
            (tmp / "b").write_text(str(i))
        if i == int(sys.argv[3]) + 1:
            print("ready", flush=True)
    """
)


def test_folder_consistent_after_sigkill_at_random_instants(tmp_path):
    folder = tmp_path / "out"
    rng = random.Random(0)
    last = 0
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, atomic.__file__, str(folder), str(last)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        a, b = (folder / "a").read_text(), (folder / "b").read_text()
        assert a == b, f"torn folder: a={a} b={b}"
        assert int(a) > last
        last = int(a)
        with atomic_folder(folder) as tmp:  # the next write removes what the killed one left
            (tmp / "a").write_text(str(last))
            (tmp / "b").write_text(str(last))
        assert entries(tmp_path) == {"out"}
        assert entries(folder) == {"a", "b"}


def test_folder_that_is_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "keep").write_text("k")
    monkeypatch.chdir(folder)
    with atomic_folder(".") as tmp:
        (tmp / "a").write_text("1")
    assert Path("a").read_text() == "1"  # the process still works in the (new) folder
    assert os.path.samefile(os.getcwd(), folder)
    assert entries(tmp_path) == {"run"}


def test_writer_mode_0600_becomes_usual_and_replaced_file_keeps_its_mode(tmp_path, umask_022):
    def write_0600(tmp: Path) -> None:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))  # as mkstemp and safetensors' writer do

    with atomic_path(tmp_path / "new.bin") as tmp:
        write_0600(tmp)
    assert mode(tmp_path / "new.bin") == 0o644
    with atomic_folder(tmp_path / "folder") as tmp:
        write_0600(tmp / "f")
    assert mode(tmp_path / "folder" / "f") == 0o644
    (tmp_path / "private").write_text("x")
    os.chmod(tmp_path / "private", 0o600)  # the user's choice for this file is kept
    write_text(tmp_path / "private", "y")
    assert mode(tmp_path / "private") == 0o600
