"""The command line's inputs and runs beyond one folder (issue 14): --files-from (a file or standard input),
--optimize (the folded model gives the plain model's outputs), and predict under torchrun (printed once, in order)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, assert_close
from PIL import Image
from safetensors import safe_open

from effnetv2.cli import main
from effnetv2.data import sample_image_path

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    with Image.open(sample_image_path()) as img:
        for i in range(3):
            img.crop((60 * i, 20 * i, 60 * i + 240, 20 * i + 220)).save(folder / f"{i}.png")
    return folder


def common(checkpoint) -> list:
    return ["--checkpoint", checkpoint, "--img-size", SIZE, "--workers", "0"]


def test_files_from_a_list_and_from_stdin(checkpoint, images, tmp_path, capsys, monkeypatch):
    listed = [images / "2.png", tmp_path / "gone.png", images / "0.png"]
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in listed) + b"\n")  # and a blank line
    base = ["predict", *common(checkpoint), "--format", "json"]
    rc, out, err = cli(capsys, *base, "--files-from", list_file)
    assert rc == 1 and f"skipped {tmp_path / 'gone.png'}: FileNotFoundError" in err  # reported, the rest goes on
    from_list = json.loads(out)
    rc, out, _ = cli(capsys, *base, images / "2.png", images / "0.png")
    assert rc == 0 and json.loads(out) == from_list  # the list's order, not sorted

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(list_file.read_bytes())))
    rc, out, _ = cli(capsys, *base, images / "1.png", "--files-from", "-")  # named paths first, then the list
    assert rc == 1 and [r["path"] for r in json.loads(out)] == [str(images / n) for n in ("1.png", "2.png", "0.png")]

    (tmp_path / "empty.txt").write_text("\n\n")
    for argv, message in [
        (
            ["--files-from", tmp_path / "missing.txt"],
            "--files-from " + str(tmp_path / "missing.txt") + ": No such file",
        ),
        (["--files-from", tmp_path / "empty.txt"], "empty.txt: no paths in it"),
    ]:
        rc, _, err = cli(capsys, "embed", *argv, "-o", tmp_path / "e.npy", *common(checkpoint))
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "embed", "-o", tmp_path / "e.npy", *common(checkpoint))
    assert rc == 2 and "no images: give image files or folders, or --files-from LIST" in err


def read(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_optimize_gives_the_plain_models_outputs(checkpoint, images, tmp_path, capsys):
    for command, extra in (("embed", []), ("features", ["--out-indices", "1,4"])):
        for optimize in ([], ["--optimize"]):
            out = tmp_path / f"{command}{len(optimize)}.safetensors"
            assert main([command, str(images), "-o", str(out), *map(str, common(checkpoint)), *extra, *optimize]) == 0
        plain, fast = read(tmp_path / f"{command}0.safetensors"), read(tmp_path / f"{command}1.safetensors")
        assert plain.keys() == fast.keys()
        for key in plain:
            assert_close(fast[key], plain[key])
    predictions = []
    for optimize in ([], ["--optimize"]):
        rc, out, _ = cli(capsys, "predict", images, *common(checkpoint), "--format", "json", *optimize)
        predictions.append(json.loads(out))
    for plain, fast in zip(*predictions, strict=True):
        assert [t["index"] for t in fast["topk"]] == [t["index"] for t in plain["topk"]]
        assert [t["prob"] for t in fast["topk"]] == pytest.approx([t["prob"] for t in plain["topk"]], abs=2e-5)
    rc, _, err = cli(capsys, "predict", images, *common(checkpoint), "--optimize", "--amp", "fp16", "--device", "cpu")
    assert rc == 2 and "--optimize --amp fp16: float16 inference is for CUDA" in err


def test_predict_under_torchrun_prints_once_in_input_order(checkpoint, images, tmp_path, capsys):
    args = ["predict", images, *common(checkpoint), "--format", "csv", "--batch-size", "1", "--topk", "2"]
    rc, single, _ = cli(capsys, *args)
    assert rc == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    proc = subprocess.run(
        [*torchrun, "effnetv2", *map(str, args)], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = list(csv.reader(io.StringIO(single))), list(csv.reader(io.StringIO(proc.stdout)))
    assert [r[:4] for r in two] == [r[:4] for r in one] and len(one) == 7  # header, 3 images × 2 classes
    # probabilities to 2e-5 (one thread per process there, two here: another summation order)
    assert [float(r[4]) for r in two[1:]] == pytest.approx([float(r[4]) for r in one[1:]], abs=2e-5)


def test_optimize_with_amp_runs_the_reduced_precision_copy(checkpoint, images, tmp_path):
    """--optimize --amp bf16 is optimize_for_inference(model, torch.bfloat16): the same numbers as that copy run
    here on the same preprocessed image (bfloat16's distance from float32 is the library's, tested elsewhere)."""
    import torch

    import effnetv2

    out = tmp_path / "bf16.safetensors"
    argv = ["embed", str(images / "0.png"), "-o", str(out), "--checkpoint", str(checkpoint), "--img-size", "32"]
    assert main([*argv, "--workers", "0", "--optimize", "--amp", "bf16"]) == 0
    model = effnetv2.create_model("efficientnetv2_rw_m", num_classes=0, checkpoint_path=checkpoint).eval()
    config = effnetv2.data.resolve_model_data_config(model, args={"img_size": 32}, use_test_size=True)
    x = effnetv2.data.create_transform(**config)(Image.open(images / "0.png").convert("RGB"))[None]
    with torch.inference_mode():
        expected = effnetv2.optimize_for_inference(model, torch.bfloat16)(x)
        plain = model(x)
    got = read(out)["embeddings"]
    assert_close(got, expected, tol=1e-6)
    assert not torch.equal(got, plain)  # reduced precision did run


def test_input_warnings_under_torchrun_are_printed_once(images, tmp_path):
    """Every process lists the same inputs: the warnings about them (formats a folder leaves out, tar members that
    are links) come from rank 0 alone, as predict's output does."""
    import tarfile

    import effnetv2

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
    args = ["predict", folder, tar_path, "--model", f"local-dir:{b0}", "--img-size", SIZE, "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    proc = subprocess.run(
        [*torchrun, "effnetv2", *map(str, args), "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("effnetv2: warning:")] == [
        f"effnetv2: warning: {tar_path}: 1 image members are links, not read: s.png: a symbolic link (to '1.png'), "
        "which is not followed",
        f"effnetv2: warning: 1 .gif files in the folders given are not read (e.g. {folder / 'moving.gif'}): a folder "
        "gives the extensions .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp only; name such files, or list "
        "them with --files-from, to read them (the first frame of an animation)",
    ]
    assert len(proc.stdout.splitlines()) == 1 + 2 * 2  # both images predicted once: a header, 2 images × 2 classes
