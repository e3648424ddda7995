"""What leaves the command line: paths escaped reversibly (non-UTF-8 names never crash a run), the embed .npy and
.paths.txt pair consistent at every instant, output files with the usual modes and no temp left behind."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from effnetv2.cli import main
from effnetv2.cli.outputs import paths_file, save_npy_with_paths
from effnetv2.export import export_model
from effnetv2.path_escape import decode_path, encode_path

WEIRD = os.fsdecode(b"\xff\xfe.jpg")  # not UTF-8: os.fsdecode gives lone surrogates
COMMON = ["--img-size", "64", "--workers", "0", "--device", "cpu"]


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# --- the escaping --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("photos/cat 1.jpg", "photos/cat 1.jpg"),  # ordinary paths are unchanged
        ("café/猫.png", "café/猫.png"),
        ("a\\b.jpg", "a\\\\b.jpg"),
        ("two\nlines\r\t.jpg", "two\\nlines\\r\\t.jpg"),
        ("bell\x07\x7f\x85.jpg", "bell\\x07\\x7f\\xc2\\x85.jpg"),
        (WEIRD, "\\xff\\xfe.jpg"),
        (os.fsdecode(b"caf\xe9\\x41.jpg"), "caf\\xe9\\\\x41.jpg"),  # latin-1 byte beside a literal '\x41'
    ],
)
def test_encode_path_examples(name, escaped):
    assert encode_path(name) == escaped
    assert encode_path(os.fsencode(name)) == escaped  # bytes too
    assert os.fsencode(decode_path(escaped)) == os.fsencode(name)


def test_any_bytes_round_trip():
    rng = random.Random(0)
    for _ in range(5000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        text = encode_path(os.fsdecode(raw))
        text.encode("utf-8")  # always writable as UTF-8 (and valid in JSON)
        assert not any(ch in text for ch in "\n\r\t\x00")  # one path per line stays one line
        assert os.fsencode(decode_path(text)) == raw


@pytest.mark.parametrize("bad", ["a\\", "a\\q", "\\x4", "\\xzz"])
def test_decode_path_rejects_unknown_escapes(bad):
    with pytest.raises(ValueError, match="invalid escape"):
        decode_path(bad)


# --- the commands on a file whose name is not UTF-8 ----------------------------------------------------------


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("odd")
    files = [folder / WEIRD, folder / "line\nbreak.png"]
    rng = np.random.default_rng(0)
    for file in files:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(file, format="PNG")
    return folder, files


def decoded(escaped: list[str]) -> list[bytes]:
    return [os.fsencode(decode_path(p)) for p in escaped]


def test_embed_npy_with_non_utf8_name(capsys, checkpoint, odd_images, tmp_path):
    _, files = odd_images
    out = tmp_path / "x.npy"
    rc, _, err = cli(capsys, "embed", *files, "-o", out, "--checkpoint", checkpoint, *COMMON)
    assert rc == 0, err
    lines = paths_file(out).read_text(encoding="utf-8").splitlines()
    assert lines == [encode_path(f) for f in files] and len(np.load(out)) == 2
    assert decoded(lines) == [os.fsencode(f) for f in files]
    assert all(Path(decode_path(line)).is_file() for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.paths.txt"]


def test_embed_safetensors_with_non_utf8_name(capsys, checkpoint, odd_images, tmp_path):
    folder, files = odd_images
    out = tmp_path / "x.safetensors"
    rc, _, err = cli(capsys, "embed", folder, "-o", out, "--checkpoint", checkpoint, *COMMON)
    assert rc == 0, err
    with safe_open(out, "pt") as f:
        paths = json.loads(f.metadata()["paths"])
        assert f.get_tensor("embeddings").shape[0] == 2
    assert sorted(decoded(paths)) == sorted(os.fsencode(f) for f in files)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current_umask()


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_predict_with_non_utf8_name(capsys, checkpoint, odd_images, fmt):
    _, files = odd_images
    rc, out, err = cli(capsys, "predict", *files, "--topk", "1", "--format", fmt, "--checkpoint", checkpoint, *COMMON)
    assert rc == 0, err
    if fmt == "json":
        paths = [item["path"] for item in json.loads(out)]
    elif fmt == "csv":
        paths = [row["path"] for row in csv.DictReader(io.StringIO(out))]
    else:
        paths = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert decoded(paths) == [os.fsencode(f) for f in files]


def test_error_message_escapes_the_path(capsys, odd_images, tmp_path):
    _, files = odd_images
    rc, _, err = cli(capsys, "embed", files[0], "-o", tmp_path / WEIRD / "x.npy")
    assert rc == 2
    assert f"{encode_path(tmp_path)}/\\xff\\xfe.jpg: output folder does not exist" in err


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- the .npy / .paths.txt pair --------------------------------------------------------------------------------

OLD = (np.zeros((1, 4), np.float32), ["old.jpg"])
NEW = (np.ones((2, 4), np.float32), ["new1.jpg", "new2.jpg"])


def pair_state(out: Path):
    """'none' when there is no FILE.npy, else which pair ('old'/'new'); a mismatched pair fails the test."""
    if not out.exists():
        return "none"
    array, lines = np.load(out), paths_file(out).read_text().splitlines()
    for name, (expected_array, expected_lines) in (("old", OLD), ("new", NEW)):
        if np.array_equal(array, expected_array):
            assert lines == expected_lines, f"FILE.npy of the {name} run beside paths {lines}"
            return name
    raise AssertionError(f"unexpected array {array}")


def test_npy_pair_is_consistent_at_every_step(tmp_path, monkeypatch):
    """Check the pair after every rename and removal of a save: what a crash at that instant would leave."""
    out = tmp_path / "emb.npy"
    save_npy_with_paths(out, *OLD)
    states = []
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst):
        real_replace(src, dst)
        states.append(pair_state(out))

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        states.append(pair_state(out))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    save_npy_with_paths(out, *NEW)
    monkeypatch.undo()
    assert states[-1] == "new" and set(states) <= {"old", "none", "new"}
    assert "none" in states  # the old FILE.npy goes first, the new one comes last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.paths.txt"]


@pytest.mark.parametrize("step", ["np.save", "unlink old npy", "rename paths", "rename npy"])
def test_npy_pair_after_failure(tmp_path, monkeypatch, step):
    out = tmp_path / "emb.npy"
    save_npy_with_paths(out, *OLD)
    real_replace, real_unlink = os.replace, os.unlink

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    if step == "np.save":
        monkeypatch.setattr(np, "save", boom)
    elif step == "unlink old npy":
        monkeypatch.setattr(os, "unlink", lambda p, *a, **k: boom() if Path(p) == out else real_unlink(p, *a, **k))
    else:
        target = paths_file(out) if step == "rename paths" else out
        monkeypatch.setattr(os, "replace", lambda s, d: boom() if Path(d) == target else real_replace(s, d))
    with pytest.raises(OSError, match="No space left"):
        save_npy_with_paths(out, *NEW)
    monkeypatch.undo()
    state = pair_state(out)
    assert state == ("old" if step in ("np.save", "unlink old npy") else "none")
    assert {p.name for p in tmp_path.iterdir()} <= {"emb.npy", "emb.paths.txt"}  # no temp left


# --- export: the usual file mode ---------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def test_exported_file_has_usual_mode_and_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        export_model(Tiny(), tmp_path / "tiny.pt", "torchscript", img_size=16)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tiny.pt").stat().st_mode) == 0o644  # mkstemp made it 0600
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt"]


def test_export_to_unwritable_folder_says_so():
    with pytest.raises(OSError, match="cannot write to the output folder '/proc'"):
        export_model(Tiny(), "/proc/effnetv2-test.pt", "torchscript", img_size=16)
