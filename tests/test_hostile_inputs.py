"""Bounded and checked inputs (issue 29 items 4 and 6, and its weak items): a --files-from list is read line by line
and binary input refused at once; a config.json's values are checked by type and range before anything is built
from them; folders that cannot be listed, images Pillow cannot identify, formats a folder search leaves out and
NaN training curves each get one line that names the path."""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S
from PIL import Image, UnidentifiedImageError

import effnetv2
from effnetv2.cli import main
from effnetv2.cli.inputs import MAX_LIST_LINE
from effnetv2.data.images import open_image
from effnetv2.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def b0(tmp_path_factory) -> Path:
    """A 4-class tf_efficientnetv2_b0 folder saved by save_pretrained, with label names."""
    torch.manual_seed(0)
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=4)
    return effnetv2.save_pretrained(model, tmp_path_factory.mktemp("b0") / "b0", model_config={"label_names": LABELS})


def photos(folder: Path, count: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(pixels).resize((80, 64), Image.BILINEAR).save(paths[-1])
    return paths


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv, rc: int = 2) -> str:
    got, out, err = cli(capsys, *argv)
    assert got == rc and out == "", (got, err)
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- --files-from: line by line, binary refused -----------------------------------------------------------------------


def feed_fifo(path: Path, chunk: bytes, total: int) -> dict:
    """Write ``chunk`` into the FIFO ``path`` until ``total`` bytes or until the reader closes it; the bytes that
    went in are counted (at most what the reader read plus the pipe's buffer)."""
    os.mkfifo(path)
    fed = {"bytes": 0}

    def write() -> None:
        with open(path, "wb", buffering=0) as f:
            try:
                while fed["bytes"] < total:
                    fed["bytes"] += f.write(chunk)
            except BrokenPipeError:  # the reader stopped reading: what we want
                pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    fed["thread"] = thread
    return fed


@pytest.mark.parametrize(
    "chunk, message",
    [
        (b"\0" * 65536, "--files-from {}: line 1 holds a NUL byte: binary data, not a list of paths"),
        (b"a" * 65536, f"--files-from {{}}: line 1 is longer than {MAX_LIST_LINE} bytes, the longest path"),
    ],
    ids=["nul", "endless-line"],
)
def test_files_from_stops_at_the_first_bad_line(tmp_path, capsys, chunk, message):
    """An endless stream (/dev/zero, a runaway generator) is refused after its first line, not read to the end:
    the writer can push 64 MiB, and gets a closed pipe after the pipe buffer and one line's read-ahead."""
    fifo = tmp_path / "list"
    fed = feed_fifo(fifo, chunk, total=64 << 20)
    err = one_line_error(capsys, "predict", "--files-from", fifo, "--img-size", "64")
    fed["thread"].join(timeout=HANG_GUARD_S)
    assert err == "effnetv2: error: " + message.format(fifo) + err.split(message.format(fifo))[1]
    assert fed["bytes"] < 1 << 20, fed["bytes"]


def test_files_from_names_the_bad_line(tmp_path, capsys):
    good = photos(tmp_path / "imgs")
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"{good[0]}\r\n\n{good[1]}\n".encode() + b"x\0y.jpg\n")
    err = one_line_error(capsys, "predict", "--files-from", listing, "--img-size", "64")
    assert f"--files-from {listing}: line 4 holds a NUL byte" in err
    listing.write_bytes(f"{good[0]}\n".encode() + b"/" * (MAX_LIST_LINE + 1) + b"\n")
    assert "line 2 is longer than 4096 bytes" in one_line_error(capsys, "embed", "--files-from", listing, "-o", "e.npy")
    listing.write_bytes(f"{good[0]}\n".encode() + b"/" * MAX_LIST_LINE + b"\n")  # the longest line taken
    from effnetv2.cli.inputs import read_file_list

    assert read_file_list(str(listing)) == [good[0], Path("/" * MAX_LIST_LINE)]


# --- config.json values: type and range -------------------------------------------------------------------------------


def folder_with(b0: Path, where: Path, change) -> Path:
    shutil.copytree(b0, where)
    config = json.loads((where / "config.json").read_text())
    change(config)
    (where / "config.json").write_text(json.dumps(config))
    return where


HOSTILE = {
    "classes_1e10": (lambda c: c.update(num_classes=10**10), "num_classes must be an integer from 0 to 100,000"),
    "args_classes": (
        lambda c: c["model_args"].update(num_classes=-1),
        "model_args.num_classes must be an integer from 0 to 100,000, got -1",
    ),
    "mean_text": (
        lambda c: c["pretrained_cfg"].update(mean="abc"),
        "pretrained_cfg.mean must be 1 or 3 finite numbers",
    ),
    "std_zero": (lambda c: c["pretrained_cfg"].update(std=[0.2, 0.0, 0.2]), "pretrained_cfg.std must be 1 or 3 finite"),
    "mean_nan": (lambda c: c["pretrained_cfg"].update(mean=[float("nan")]), "got [nan]"),
    "size_zero": (
        lambda c: c["pretrained_cfg"].update(input_size=[3, 0, 0]),
        "pretrained_cfg.input_size must be [channels, height, width]: positive integers, height and width <= 4096",
    ),
    "size_huge": (lambda c: c["pretrained_cfg"].update(test_input_size=[3, 100000, 100000]), "test_input_size must"),
    "crop_pct": (
        lambda c: c["pretrained_cfg"].update(crop_pct=1.5),
        "pretrained_cfg.crop_pct must be a number in (0, 1]",
    ),
    "in_chans": (lambda c: c["model_args"].update(in_chans=10**9), "model_args.in_chans must be an integer from 1 to"),
    "labels_short": (lambda c: c.update(label_names=LABELS[:3]), "label_names has 3 names but num_classes is 4"),
    "labels_type": (lambda c: c.update(label_names="ant bee cat dog"), "label_names must be a list of strings"),
    "cfg_list": (lambda c: c.update(pretrained_cfg=[1, 2]), "pretrained_cfg must be a JSON object"),
    "interpolation": (
        lambda c: c["pretrained_cfg"].update(interpolation=7),
        "pretrained_cfg.interpolation must be one",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_config_values_are_refused_naming_file_and_key(b0, tmp_path, case):
    change, message = HOSTILE[case]
    folder = folder_with(b0, tmp_path / case, change)
    for name, where in ((f"local-dir:{folder}", folder / "config.json"), ("tf_efficientnetv2_b0", None)):
        with pytest.raises(CheckpointError) as caught:
            if where is None:  # the same file beside a checkpoint: create_model(checkpoint_path=FOLDER)
                effnetv2.create_model(name, checkpoint_path=folder)
            else:
                effnetv2.create_model(name, pretrained=True)
        text = str(caught.value)
        assert text.startswith(f"{folder / 'config.json'}: ") and message in text and "\n" not in text, text


def test_the_command_line_says_it_in_one_line(b0, tmp_path, capsys):
    folder = folder_with(b0, tmp_path / "huge", lambda c: c.update(num_classes=10**10))
    image = photos(tmp_path / "imgs", 1)[0]
    for source in (["--model", f"local-dir:{folder}"], ["--checkpoint", folder]):
        err = one_line_error(capsys, "predict", image, *source, "--img-size", "64")
        assert f"{folder / 'config.json'}: num_classes must be an integer from 0 to 100,000, got 10000000000" in err


def test_older_flat_configs_and_the_bounds_themselves(b0, tmp_path):
    flat = {"architecture": "tf_efficientnetv2_b0", "num_classes": 4, "labels": LABELS[:2], "input_size": [3, 64, 64]}
    folder = folder_with(b0, tmp_path / "flat", lambda c: (c.clear(), c.update(flat)))
    with pytest.raises(CheckpointError, match=r"flat/config.json: labels has 2 names but num_classes is 4"):
        effnetv2.create_model(f"local-dir:{folder}")
    # at the bounds and with the usual spellings (one mean for all channels, empty label list): accepted
    edge = {"num_classes": 4, "label_names": []}
    cfg = {"mean": 0.5, "std": [0.25], "input_size": [3, 4096, 32], "crop_pct": 1.0, "test_input_size": None}
    ok = folder_with(b0, tmp_path / "edge", lambda c: (c.update(edge), c["pretrained_cfg"].update(cfg)))
    model = effnetv2.create_model(f"local-dir:{ok}", pretrained=True)
    assert model.num_classes == 4 and model.pretrained_cfg["input_size"] == (3, 4096, 32)


def test_save_pretrained_refuses_label_names_that_do_not_fit(tmp_path):
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=3)
    with pytest.raises(ValueError, match="model_config: label_names has 2 names but num_classes is 3"):
        effnetv2.save_pretrained(model, tmp_path / "m", model_config={"label_names": ["a", "b"]})
    assert not (tmp_path / "m").exists()


# --- --img-size bound ------------------------------------------------------------------------------------------------


COMMANDS = ["predict", "embed", "features", "explain", "validate", "info", "export", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_img_size_above_the_maximum_is_refused_when_parsed(command, capsys):
    err = one_line_error(capsys, command, "--img-size", "100000")
    assert "--img-size: must be" in err and "<= 4096" in err


def test_img_size_4096_itself_is_accepted():
    from effnetv2.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["predict", "--img-size", "4096"]).img_size == 4096
    assert parser.parse_args(["train", "d", "-o", "o", "--img-size", "4096"]).img_size == 4096


# --- folders and image files: the path, and why ------------------------------------------------------------------


def test_formats_a_folder_leaves_out_are_counted_not_silently_dropped(b0, tmp_path, capsys):
    good = photos(tmp_path / "imgs")
    with Image.open(good[0]) as image:
        image.save(tmp_path / "imgs" / "moving.gif")
    argv = ["predict", tmp_path / "imgs", "--model", f"local-dir:{b0}", "--img-size", "64", "--format", "json"]
    rc, out, err = cli(capsys, *argv)
    assert rc == 0 and [r["path"] for r in json.loads(out)] == [str(p) for p in good]
    assert err.splitlines() == [
        f"effnetv2: warning: 1 .gif files in the folders given are not read (e.g. {tmp_path / 'imgs' / 'moving.gif'}): "
        "a folder gives the extensions .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp only; name such files, "
        "or list them with --files-from, to read them (the first frame of an animation)"
    ]
    rc, out, err = cli(capsys, *argv[:1], tmp_path / "imgs" / "moving.gif", *argv[2:])  # named: read
    assert rc == 0 and json.loads(out)[0]["path"] == str(tmp_path / "imgs" / "moving.gif") and err == ""
    for path in good:
        path.unlink()
    err = one_line_error(capsys, *argv)
    assert err.endswith("; its 1 .gif files are not read from a folder: name them"), err


def test_a_file_pillow_cannot_identify_is_named_by_its_path(b0, tmp_path, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(UnidentifiedImageError) as caught:
        open_image(text)
    assert str(caught.value).startswith(f"cannot identify image file {str(text)!r}") and "BufferedReader" not in str(
        caught.value
    )
    # --calibration (its own loop) says what predict says
    calibration = tmp_path / "calibration"
    photos(calibration, 1)
    shutil.copy(text, calibration / "z.jpg")
    argv = ["predict", calibration / "0.jpg", "--model", f"local-dir:{b0}", "--img-size", "64", "--device", "cpu"]
    rc, _, err = cli(capsys, *argv, "--optimize", "--int8", "--calibration", calibration)
    assert rc == 2 and err.splitlines() == [
        f"effnetv2: skipped {calibration / 'z.jpg'}: not an image, or in a format Pillow cannot read",
        f"effnetv2: error: --calibration {calibration}: fewer than 2 readable calibration images (of 2)",
    ]


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def bound_by_permissions():
    """preexec_fn for a root child: without the capabilities that bypass file permissions."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def drop() -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop if os.geteuid() == 0 else None


def test_a_folder_that_cannot_be_listed_says_permission_denied(b0, tmp_path):
    top = tmp_path / "top"
    photos(top / "open")
    photos(top / "locked")
    sealed = tmp_path / "sealed"
    photos(sealed)
    for folder in (top / "locked", sealed):
        folder.chmod(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = ["--model", f"local-dir:{b0}", "--img-size", "64", "--workers", "0", "--format", "json"]

    def run(folder: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "effnetv2", "predict", str(folder), *common]
        try:
            return subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, preexec_fn=bound_by_permissions()
            )
        except subprocess.SubprocessError as e:
            pytest.skip(f"cannot drop CAP_DAC_OVERRIDE for the child: {e}")

    try:
        done = run(sealed)
        if done.returncode == 0:
            pytest.skip("file permissions do not bind this process (a file system or sandbox without them)")
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.splitlines() == [f"effnetv2: error: {sealed}: cannot list this folder (Permission denied)"]
        done = run(top)  # a subfolder: the rest is read, the loss said
        assert done.returncode == 0, done.stderr
        assert [r["path"] for r in json.loads(done.stdout)] == [str(top / "open" / f"{i}.jpg") for i in range(2)]
        assert done.stderr.splitlines() == [
            f"effnetv2: warning: {top / 'locked'}: cannot list this folder (Permission denied); the images in it are "
            "not read"
        ]
    finally:
        for folder in (top / "locked", sealed):
            folder.chmod(0o755)


# --- plot: NaN rows --------------------------------------------------------------------------------------------------


def test_plot_of_nan_rows_warns_in_one_line_of_its_own(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "diverged"
    run.mkdir()
    nan = float("nan")
    rows = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "lr": 0.1},
        {"epoch": 2, "train_loss": nan, "val_loss": float("inf"), "train_top1": nan, "lr": 0.1},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found" would be an error here
        rc, out, err = cli(capsys, "plot", run, "-o", tmp_path / "curves.png")
    assert rc == 0 and out.strip() == str(tmp_path / "curves.png")
    assert err.splitlines() == [
        f"effnetv2: warning: {run / 'metrics.jsonl'}: NaN or infinite train_loss, train_top1, val_loss in epoch(s) 2: "
        "not drawn"
    ]
    with Image.open(tmp_path / "curves.png") as picture:
        assert np.asarray(picture.convert("L")).std() > 10  # a picture, not blank


# --- train --resume: a state that would run code ---------------------------------------------------------------------


class _Planted:
    """Unpickled, it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_resume_from_a_state_that_would_run_code_is_refused_in_one_line(b0, tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for label in LABELS:
            photos(data / split / label, count=1)
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    run.mkdir()
    planted = {"format": "effnetv2-train-state", "version": 1, "epoch": 1, "rng": [_Planted(marker)]}
    torch.save(planted, run / "last_state.pt")
    line = one_line_error(
        capsys, "train", data, "--output", run, "--model", "tf_efficientnetv2_b0", "--checkpoint", b0,
        "--img-size", "64", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--resume",
    )  # fmt: skip
    assert line == (
        f"effnetv2: error: {run / 'last_state.pt'} holds objects other than tensors and plain containers "
        "(posix.system), which torch.load(weights_only=True) refuses because loading them could run code: it is not "
        "an effnetv2 training state; start a new run in another --output (or remove the file to start this one again)"
    )
    assert not marker.exists()
    torch.load(run / "last_state.pt", weights_only=False)  # the oracle: the planted object does run code
    assert marker.exists()
