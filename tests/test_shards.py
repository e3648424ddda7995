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
from pathlib import Path

import pytest
import torch
from conftest import ARCH, HANG_GUARD_S, assert_close, photos_and_a_broken_file, torchrun
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from effnetv2.cli import CLIError, main
from effnetv2.cli.features import map_bytes
from effnetv2.cli.shards import STOP_AFTER_SHARD_ENV, ShardedOutput, default_shard_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven crops of the sample photo and one file that is not an image (sorted first: broken.png)."""
    return photos_and_a_broken_file(tmp_path_factory.mktemp("photos"))


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
    assert [(e["file"], e["count"]) for e in index["shards"]] == [
        ("shard-00000.safetensors", 2),
        ("shard-00001.safetensors", 3),
        ("shard-00002.safetensors", 2),
    ]
    for entry in index["shards"]:  # each shard's checksum, in the index and in its own metadata
        assert entry["sha256"] == json.loads(read_file(out / entry["file"])[2]["sha256"]) and len(entry["sha256"]) == 64
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
    """kill -9 right after shard 2 leaves whole shards and no index; --resume finishes with the rows of one file;
    a kept shard whose bytes changed is found by its checksum and written again."""
    out, one = tmp_path / "out", tmp_path / "one.safetensors"
    args = ["embed", str(photos), "--shard-size", "1", *common(checkpoint, size=160)]
    # the writer kills itself (SIGKILL) right after shard 2 is renamed into place: a crash at a known point
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", STOP_AFTER_SHARD_ENV: "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "effnetv2", *args, "-o", str(out)], env=env, capture_output=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    written = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert written == [f"shard-0000{i}.safetensors" for i in range(3)] and not (out / "index.json").exists()
    for shard in written:
        read_file(out / shard)  # whole: a kill never leaves a half-written shard under its name
    kept = {shard: (out / shard).stat().st_mtime_ns for shard in written}

    assert main([*args, "-o", str(out), "--resume"]) == 1
    assert main(["embed", str(photos), "-o", str(one), *common(checkpoint, size=160)]) == 1
    index, tensors, paths = read_folder(out)
    expected, expected_paths, _ = read_file(one)
    assert paths == expected_paths and index["count"] == 7 and len(index["shards"]) == 8
    assert_close(tensors["embeddings"], expected["embeddings"])
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())  # complete shards were kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed writer's temp file is gone

    # Damage: bytes flipped inside shard 4's tensor data (still a readable file), shard 5 truncated to garbage,
    # the index lost. --resume writes those two shards again and the index: the folder is as it was (the same
    # files, JSON and tensors; only the order of a shard's header keys may differ, as safetensors writes them).
    def content(folder: Path) -> dict:
        def shard(path: Path) -> tuple:
            tensors, shard_paths, meta = read_file(path)
            return {k: v.clone() for k, v in tensors.items()}, shard_paths, meta  # not views of the mapped file

        return {p.name: shard(p) if p.suffix == ".safetensors" else p.read_bytes() for p in sorted(folder.iterdir())}

    before = content(out)
    damaged = bytearray((out / "shard-00004.safetensors").read_bytes())
    damaged[-40:-36] = bytes(b ^ 0x5A for b in damaged[-40:-36])
    (out / "shard-00004.safetensors").write_bytes(bytes(damaged))
    read_file(out / "shard-00004.safetensors")  # readable: only the checksum tells
    (out / "shard-00005.safetensors").write_bytes(b"\0" * 10)
    (out / "index.json").unlink()
    capsys.readouterr()
    assert main([*args, "-o", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "shard-00004.safetensors: damaged (its content does not match its sha256); writing it again" in err
    assert "shard-00005.safetensors: unreadable; writing it again" in err
    after = content(out)
    assert after.keys() == before.keys() and after["index.json"] == before["index.json"]
    for name in before:
        if name.endswith(".safetensors"):
            (tensors, shard_paths, meta), (tensors_now, paths_now, meta_now) = before[name], after[name]
            assert shard_paths == paths_now and meta == meta_now and tensors.keys() == tensors_now.keys()
            assert all(torch.equal(tensors[k], tensors_now[k]) for k in tensors)
        else:
            assert after[name] == before[name], name


def test_two_torchrun_processes_write_the_folder_one_process_writes(photos, checkpoint, tmp_path):
    solo, pair = tmp_path / "solo", tmp_path / "pair"
    args = ["features", str(photos), "--out-indices", "2,4", "--shard-size", "3", *common(checkpoint)]
    assert main([*args, "-o", str(solo)]) == 1
    proc = torchrun([*args, "-o", pair])
    assert proc.returncode != 0 and "skipped" in proc.stderr  # the rank that met broken.png says so
    assert sorted(p.name for p in pair.iterdir()) == sorted(p.name for p in solo.iterdir())
    assert json.loads((pair / "run.json").read_text()) == json.loads((solo / "run.json").read_text())

    def without_checksums(index: dict) -> dict:  # the sha256 of the maps: equal only where the maps are bit-equal
        return {**index, "shards": [{k: v for k, v in e.items() if k != "sha256"} for e in index["shards"]]}

    index, solo_index = (json.loads((folder / "index.json").read_text()) for folder in (pair, solo))
    assert without_checksums(index) == without_checksums(solo_index)
    for shard in sorted(solo.glob("shard-*")):
        ours, paths, meta = read_file(pair / shard.name)
        theirs, solo_paths, solo_meta = read_file(shard)
        assert meta.pop("sha256") in json.dumps(index["shards"]) and solo_meta.pop("sha256")
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
    assert run["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert run["weights_file"] == str(weights) and run["config_sha256"] is None  # no config.json beside it
    capsys.readouterr()
    assert main([*args, "--resume"]) == 1  # nothing to do: the skipped image of the first run is why it is 1
    assert f"1 image(s) skipped (listed under 'skipped' in {out / 'index.json'})" in capsys.readouterr().err

    tensors = load_file(weights)
    tensors["conv_stem.weight"] = tensors["conv_stem.weight"] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume with another model: the weights file {weights} is not the one it was (sha256 " in err
    assert len(err.strip().splitlines()) == 1

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


def test_two_runs_started_on_one_folder_at_once(tmp_path):
    """Both found the folder empty; the second to create run.json is told another run began, not '--resume with
    other settings' (it gave no --resume), whether or not its settings are the same."""
    files = [Path(f"{i}.jpg") for i in range(4)]
    out = tmp_path / "out"
    first, other, same = (ShardedOutput(out, files, 2, settings, 0, 1) for settings in ({"a": 1}, {"a": 2}, {"a": 1}))
    ShardedOutput.check_target(out, resume=False)  # what each of the three found before any run.json was there
    first.open(resume=False)
    for run in (other, same):
        with pytest.raises(CLIError, match="another effnetv2 run began writing this folder at the same time") as e:
            run.open(resume=False)
        assert "--resume with other settings" not in str(e.value)
    same.open(resume=True)  # a resume of the same run joins it
    with pytest.raises(CLIError, match="--resume with other settings or inputs"):
        other.open(resume=True)
    assert json.loads((out / "run.json").read_text())["a"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_a_folder_holding_only_a_killed_writers_temp_file_is_reused_or_resumed(photos, checkpoint, tmp_path):
    """A run killed while writing run.json left only .run.json.PID-x.tmp: it started nothing."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    args = ["embed", str(photos / "photo0.png"), "--shard-size", "4", *common(checkpoint)]
    for resume in ([], ["--resume"]):
        out = tmp_path / f"out{len(resume)}"
        out.mkdir()
        stale = out / f".run.json.{int(dead.stdout)}-0123abcd.tmp"
        stale.write_text('{"kind": "emb')
        assert main([*args, "-o", str(out), *resume]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["index.json", "run.json", "shard-00000.safetensors"]
    live = tmp_path / "live"  # a temp file of a process still running is not stale: the folder is in use
    live.mkdir()
    (live / f".run.json.{os.getpid()}-0123abcd.tmp").write_text("{")
    assert main([*args, "-o", str(live)]) == 2
