"""`embed`/`features` into a folder (issue 14): shards written as images are read, the same rows as one file,
resumable after kill -9, the same folder from two torchrun processes as from one, and clear refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ARCH, assert_close
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from effnetv2.cli import main
from effnetv2.cli.features import map_bytes
from effnetv2.cli.shards import ShardedOutput, default_shard_size
from effnetv2.data import sample_image_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven crops of the sample photo and one file that is not an image (sorted first: broken.png)."""
    folder = tmp_path_factory.mktemp("photos")
    with Image.open(sample_image_path()) as img:
        for i in range(7):
            img.crop((30 * i, 10 * i, 30 * i + 220, 10 * i + 200)).save(folder / f"photo{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def common(checkpoint, size: int = 64) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--img-size", str(size), "--batch-size", "2", "--workers", "0"]


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], list[str], dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, json.loads(meta["paths"]), meta


def read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """index.json, and the shards' tensors and paths concatenated in shard order."""
    index = json.loads((folder / "index.json").read_text())
    parts, paths = [], []
    for entry in index["shards"]:
        tensors, shard_paths, _ = read_file(folder / entry["file"])
        assert len(shard_paths) == entry["count"]
        parts.append(tensors)
        paths += shard_paths
    keys = set().union(*parts)
    return index, {k: torch.cat([p[k] for p in parts if k in p]) for k in keys}, paths


def test_embed_folder_holds_the_rows_of_one_file(photos, checkpoint, tmp_path, capsys):
    one, out = tmp_path / "one.safetensors", tmp_path / "out"
    assert main(["embed", str(photos), "-o", str(one), *common(checkpoint)]) == 1  # 1: an image was skipped
    assert main(["embed", str(photos), "-o", str(out), "--shard-size", "3", *common(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert err.count("effnetv2: skipped ") == 2 and "effnetv2: 1 image(s) skipped (listed under 'skipped'" in err
    index, tensors, paths = read_folder(out)
    expected, expected_paths, meta = read_file(one)
    assert paths == expected_paths and len(paths) == 7
    assert_close(tensors["embeddings"], expected["embeddings"])
    broken = str(photos / "broken.png")
    assert index["skipped"] == [broken] and index["count"] == 7
    # shard k holds input files 3k..3k+2, broken.png (the first) included: 2 + 3 + 2 rows
    assert index["shards"] == [
        {"file": "shard-00000.safetensors", "count": 2},
        {"file": "shard-00001.safetensors", "count": 3},
        {"file": "shard-00002.safetensors", "count": 2},
    ]
    assert index["model"] == json.loads(meta["model"]) and index["input_size"] == [3, 64, 64]
    assert json.loads(read_file(out / "shard-00000.safetensors")[2]["skipped"]) == [broken]
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "run.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]


def test_killed_run_resumes_to_the_same_folder(photos, checkpoint, tmp_path, capsys):
    """kill -9 in the middle leaves whole shards and no index; --resume finishes with the rows of one file."""
    out, one = tmp_path / "out", tmp_path / "one.safetensors"
    args = ["embed", str(photos), "--shard-size", "1", *common(checkpoint, size=160)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "effnetv2", *args, "-o", str(out)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "shard-00002.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = sorted(out.glob("shard-*.safetensors"))
    assert 3 <= len(written) < 8 and not (out / "index.json").exists()
    for shard in written:
        read_file(shard)  # whole: a kill never leaves a half-written shard under its name
    kept = {shard.name: shard.stat().st_mtime_ns for shard in written}

    assert main([*args, "-o", str(out), "--resume"]) == 1
    assert main(["embed", str(photos), "-o", str(one), *common(checkpoint, size=160)]) == 1
    index, tensors, paths = read_folder(out)
    expected, expected_paths, _ = read_file(one)
    assert paths == expected_paths and index["count"] == 7 and len(index["shards"]) == 8
    assert_close(tensors["embeddings"], expected["embeddings"])
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())  # complete shards were kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed writer's temp file is gone

    # a damaged shard and a lost index: --resume writes that shard again, and the index
    (out / "shard-00004.safetensors").write_bytes(b"\0" * 10)
    (out / "index.json").unlink()
    capsys.readouterr()
    assert main([*args, "-o", str(out), "--resume"]) == 1
    assert "shard-00004.safetensors: unreadable; writing it again" in capsys.readouterr().err
    again, tensors_again, _ = read_folder(out)
    assert again == index and torch.equal(tensors_again["embeddings"], tensors["embeddings"])


def test_two_torchrun_processes_write_the_folder_one_process_writes(photos, checkpoint, tmp_path):
    solo, pair = tmp_path / "solo", tmp_path / "pair"
    args = ["features", str(photos), "--out-indices", "2,4", "--shard-size", "3", *common(checkpoint)]
    assert main([*args, "-o", str(solo)]) == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, "-m", "effnetv2", *args, "-o", str(pair)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "skipped" in proc.stderr  # the rank that met broken.png says so
    assert sorted(p.name for p in pair.iterdir()) == sorted(p.name for p in solo.iterdir())
    for name in ("index.json", "run.json"):
        assert json.loads((pair / name).read_text()) == json.loads((solo / name).read_text())
    for shard in sorted(solo.glob("shard-*")):
        ours, paths, meta = read_file(pair / shard.name)
        theirs, solo_paths, solo_meta = read_file(shard)
        assert (
            paths == solo_paths and meta == solo_meta and ours.keys() == theirs.keys() == {"features.2", "features.4"}
        )
        for key in ours:
            assert_close(ours[key], theirs[key])


def test_folder_output_refusals(photos, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["embed", str(photos), "--shard-size", "4", *common(checkpoint)]
    assert main([*args, "-o", str(out)]) == 1

    def error(argv) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "exists and is not empty; --resume finishes the run that wrote it" in error([*args, "-o", str(out)])
    err = error(["embed", str(photos), "--shard-size", "4", *common(checkpoint, size=96), "-o", str(out), "--resume"])
    assert "--resume with other settings or inputs" in err and "input_size" in err
    err = error(
        ["embed", str(photos / "photo0.png"), "--shard-size", "4", *common(checkpoint), "-o", str(out), "--resume"]
    )
    assert "inputs: 8 then, 1 now" in err
    assert "--resume is for folder output" in error([*args, "-o", str(tmp_path / "e.npy"), "--resume"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "has no run.json" in error([*args, "-o", str(tmp_path / "other"), "--resume"])
    assert "output folder does not exist" in error([*args, "-o", str(tmp_path / "no" / "out")])


def test_resume_checks_and_failed_starts(photos, checkpoint, tmp_path, capsys):
    """--resume with nothing left says why it exits 1; another checkpoint under the same name is refused; a start
    that fails (fp16 on a CPU) leaves no folder behind."""
    weights = tmp_path / "weights.safetensors"
    shutil.copy(checkpoint, weights)
    out = tmp_path / "out"
    args = ["embed", str(photos), "--shard-size", "4", *common(weights), "-o", str(out)]
    assert main(args) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 1  # nothing to do: the skipped image of the first run is why it is 1
    assert f"1 image(s) skipped (listed under 'skipped' in {out / 'index.json'})" in capsys.readouterr().err

    tensors = load_file(weights)
    tensors["conv_stem.weight"] = tensors["conv_stem.weight"] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume with other settings or inputs" in err and "checkpoint_sha256" in err

    fresh = tmp_path / "fresh"
    assert main(["embed", str(photos), *common(checkpoint), "-o", str(fresh), "--optimize", "--amp", "fp16"]) == 2
    assert "--optimize --amp fp16" in capsys.readouterr().err and not fresh.exists()


def test_default_shard_size_follows_the_size_of_a_row(checkpoint):
    """4096 images per shard, fewer where a row is large: rw_m's five levels at 416 px are 9.6 MB an image."""
    import timm

    theirs = timm.create_model(ARCH, features_only=True).eval()
    with torch.no_grad():
        maps = theirs(torch.zeros(1, 3, 96, 80))
    assert map_bytes(theirs.feature_info, (3, 96, 80)) == sum(4 * m.numel() for m in maps)
    assert map_bytes(theirs.feature_info, (3, 416, 416)) == 9_566_752
    assert default_shard_size(9_566_752) == 112 and default_shard_size(4 * 2152) == 4096
    assert default_shard_size(2 << 30) == 1


def test_processes_share_the_shards_still_to_write():
    """After a --resume the shards left are dealt out again, so that no process waits for the others' whole share."""
    files = [Path(f"{i}.jpg") for i in range(10)]
    outs = [ShardedOutput(Path("out"), files, 2, {}, rank, 2) for rank in range(2)]
    assert [[s.number for s in out.share([1, 3, 4])] for out in outs] == [[1, 4], [3]]
    assert outs[0].batch_plan(outs[0].share([1, 3, 4]), 1) == [range(2, 3), range(3, 4), range(8, 9), range(9, 10)]
