"""The command line under torchrun: every process lists the same inputs and takes its share, and rank 0 alone prints
what the user reads: predict's output once, in input order, with the numbers of one process; the warnings about the
inputs once. (Sharded folders written by several processes: tests/test_shards.py.)"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import assert_close, cli, save_sample_crops, torchrun

import effnetv2

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of three crops of the sample photo: 0.png, 1.png, 2.png."""
    folder = tmp_path_factory.mktemp("images")
    save_sample_crops(folder, 3, step=(60, 20), size=(240, 220), name="{}.png")
    return folder


def test_predict_under_torchrun_prints_once_in_input_order(checkpoint, images, capsys):
    args = ["predict", images, "--checkpoint", checkpoint, "--img-size", SIZE, "--workers", "0"]
    args += ["--format", "csv", "--batch-size", "1", "--topk", "2"]
    rc, single, _ = cli(capsys, *args)
    assert rc == 0
    proc = torchrun(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = list(csv.reader(io.StringIO(single))), list(csv.reader(io.StringIO(proc.stdout)))
    assert [r[:4] for r in two] == [r[:4] for r in one] and len(one) == 7  # header, 3 images × 2 classes
    # the parity bound: one thread a process there, two here, another summation order
    probs = [torch.tensor([float(r[4]) for r in rows[1:]], dtype=torch.float64) for rows in (two, one)]
    assert_close(*probs)


def test_input_warnings_under_torchrun_are_printed_once(images, tmp_path):
    """Every process lists the same inputs: the warnings about them (formats a folder leaves out, tar members that
    are links) come from rank 0 alone, as predict's output does."""
    b0 = effnetv2.save_pretrained(effnetv2.create_model("tf_efficientnetv2_b0", num_classes=2), tmp_path / "b0")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "0.png").write_bytes((images / "0.png").read_bytes())
    (folder / "moving.gif").write_bytes(b"GIF89a")  # an extension a folder search leaves out: one warning
    tar_path = tmp_path / "links.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(images / "1.png", arcname="1.png")
        link = tarfile.TarInfo("s.png")
        link.type, link.linkname = tarfile.SYMTYPE, "1.png"
        tar.addfile(link)  # a link member: not read, one warning
    model = ["--model", f"local-dir:{b0}", "--img-size", SIZE, "--workers", "0"]
    proc = torchrun(["predict", folder, tar_path, *model, "--format", "csv"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("effnetv2: warning:")] == [
        f"effnetv2: warning: {tar_path}: 1 image members are links, not read: s.png: a symbolic link (to '1.png'), "
        "which is not followed",
        f"effnetv2: warning: 1 .gif files in the folders given are not read (e.g. {folder / 'moving.gif'}): a folder "
        "gives the extensions .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp only; name such files, or list "
        "them with --files-from, to read them (the first frame of an animation)",
    ]
    assert len(proc.stdout.splitlines()) == 1 + 2 * 2  # both images predicted once: a header, 2 images × 2 classes
