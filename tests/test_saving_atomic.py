"""save_pretrained changes its folder as one step: a failure or a kill at any point leaves the old pair or the new
pair (never new weights beside an old config.json), no temp survives the next save, other files are kept."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import effnetv2
from effnetv2 import atomic
from effnetv2.weights import saving

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ten_class_model():
    torch.manual_seed(0)
    return effnetv2.create_model("efficientnetv2_rw_m", num_classes=10).eval()


@pytest.fixture
def changed(ten_class_model):
    """The model with a changed classifier bias for the block: something new to save."""
    with torch.no_grad():
        ten_class_model.classifier.bias.add_(1.0)
    try:
        yield ten_class_model
    finally:
        with torch.no_grad():
            ten_class_model.classifier.bias.sub_(1.0)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def fail(*args, **kwargs):
    raise OSError("No space left on device")


def write_weights_then_fail(state_dict, path, suffix, metadata=None):
    saving_write_state_dict(state_dict, path, suffix, metadata)
    fail()


saving_write_state_dict = saving.write_state_dict


@pytest.mark.parametrize(
    "where",
    [
        "weights",  # the weights file fails half-written
        "between",  # the weights are written, config.json fails
        "swap",  # both written, the final swap of the folders fails
    ],
)
def test_failure_leaves_old_pair_loadable_and_no_temp(ten_class_model, changed, tmp_path, monkeypatch, where):
    folder = tmp_path / "saved"
    with torch.no_grad():
        changed.classifier.bias.sub_(1.0)
    saving.save_pretrained(changed, folder)  # the old pair: the unchanged model
    with torch.no_grad():
        changed.classifier.bias.add_(1.0)
    before = snapshot(folder)
    if where == "weights":
        monkeypatch.setattr(saving, "write_state_dict", lambda *a, **k: (Path(a[1]).write_bytes(b"\0" * 100), fail()))
    elif where == "between":
        monkeypatch.setattr(saving, "json", SimpleNamespace(dumps=fail))
    else:
        monkeypatch.setattr(atomic, "_exchange", fail)
    with pytest.raises(OSError, match="No space left"):
        saving.save_pretrained(changed, folder)
    assert snapshot(folder) == before  # no new weights beside the old config.json, no temp inside
    assert names(tmp_path) == {"saved"}  # no temp folder beside it
    monkeypatch.undo()
    if where == "between":  # load it once: the old pair is a working 10-class folder
        loaded = effnetv2.create_model(f"local-dir:{folder}", pretrained=True)
        assert loaded.num_classes == 10
        with torch.no_grad():
            assert torch.equal(loaded.classifier.bias, changed.classifier.bias - 1.0)


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch, effnetv2
    from effnetv2.weights import saving
    model = effnetv2.create_model("efficientnetv2_rw_m", num_classes=10)
    real = saving.write_state_dict
    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # killed between the weights and config.json
    saving.write_state_dict = write_then_die
    saving.save_pretrained(model, sys.argv[1])
    """
)


def test_killed_save_keeps_old_pair_and_next_save_cleans_up(ten_class_model, tmp_path):
    folder = tmp_path / "saved"
    saving.save_pretrained(ten_class_model, folder)
    before = snapshot(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder)], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert snapshot(folder) == before
    leftover = names(tmp_path) - {"saved"}
    assert len(leftover) == 1 and leftover.pop().endswith(".tmp")  # the killed save's ~200 MB temp folder
    saving.save_pretrained(ten_class_model, folder)
    assert names(tmp_path) == {"saved"}  # removed by the next save
    assert names(folder) == {"model.safetensors", "config.json"}


def test_stale_temps_of_older_saves_are_removed(ten_class_model, tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    # per-file temps inside the folder (what the per-file saving of earlier versions left on a kill)
    (folder / ".model.safetensors.0badf00d.tmp").write_bytes(b"\0" * 1000)
    (folder / ".config.json.1234.tmp").write_text("{")
    saving.save_pretrained(ten_class_model, folder)
    assert names(folder) == {"model.safetensors", "config.json"}


def test_saved_files_have_usual_modes(ten_class_model, tmp_path):
    old = os.umask(0o022)
    try:
        saving.save_pretrained(ten_class_model, tmp_path / "saved")
        saving.save_state_dict({"w": torch.zeros(2)}, tmp_path / "state.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "saved").stat().st_mode) == 0o755
    for path in (tmp_path / "saved" / "model.safetensors", tmp_path / "saved" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    assert stat.S_IMODE((tmp_path / "state.safetensors").stat().st_mode) == 0o644
    assert names(tmp_path) == {"saved", "state.safetensors"}


def test_other_files_of_a_run_folder_survive_with_same_inode(ten_class_model, tmp_path):
    """effnetv2 train saves its best model into the run folder, beside last_state.pt, metrics.jsonl and its lock."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_state.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    lock = open(run / ".lock", "w")  # noqa: SIM115 (held across the save, like train's lock)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        inodes = {p.name: p.stat().st_ino for p in run.iterdir()}
        for _ in range(2):  # the first save into an existing folder, then a replacement
            saving.save_pretrained(ten_class_model, run, model_config=dict(label_names=[str(i) for i in range(10)]))
            for name, inode in inodes.items():
                assert (run / name).stat().st_ino == inode, name
        assert (run / "last_state.pt").read_bytes() == b"state"
        assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
        with open(run / ".lock", "w") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the held lock still guards the folder
        assert json.loads((run / "config.json").read_text())["label_names"][9] == "9"
        assert torch.equal(load_file(run / "model.safetensors")["classifier.bias"], ten_class_model.classifier.bias)
    finally:
        lock.close()
