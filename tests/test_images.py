"""Image inputs: bit depth, EXIF orientation, non-regular files, decompression-bomb limits, --img-size, and the
offline error of the command line (effnetv2.data.images.open_image, effnetv2.cli.inputs, effnetv2.weights.hub)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_GUARD_S
from PIL import Image

from effnetv2.cli import main
from effnetv2.data.images import ImageTooLargeError, LargeImageWarning, NotRegularFileError, open_image
from effnetv2.train.data import UnreadableImageError, load_rgb

ROOT = Path(__file__).resolve().parents[1]
SIZE = "64"


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def predict_json(capsys, checkpoint, *paths) -> tuple[int, list, str]:
    """predict's JSON, one image per batch: the test checkpoint is so chaotic that one image's top class changes
    with its position in a batch, so equal images are only comparable through equal batch shapes."""
    rc, out, err = cli(capsys, "predict", *paths, "--checkpoint", checkpoint, "--img-size", SIZE, "--workers", 0,
                       "--batch-size", 1, "--topk", 5, "--format", "json")  # fmt: skip
    return rc, json.loads(out), err


def gradient16(height: int = 48, width: int = 64) -> np.ndarray:
    """A 16-bit image using the whole range, with values that are not multiples of 257."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 1000 + y * 300 + 7) % 65536).astype(np.uint16)


def scaled(values: np.ndarray) -> np.ndarray:
    return np.rint(values / 257).astype(np.uint8)


def write_png16(path: Path, samples: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 48-bit RGB): gray (H, W) or RGB (H, W, 3)."""
    height, width = samples.shape[:2]
    color_type = 2 if samples.ndim == 3 else 0
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


# --- bit depth -----------------------------------------------------------------------------------------------------


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    values = gradient16()
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode == "I;16"  # what Pillow makes of it
    image = open_image(tmp_path / "g16.png")
    assert image.mode == "RGB" and image.size == (64, 48)
    pixels = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], scaled(values))
    assert (pixels == 255).mean() < 0.05  # clipping made 99 % of such pixels white


def test_48bit_rgb_png_is_within_one_level(tmp_path):
    values = gradient16()
    rgb = np.stack([values, values[::-1], 65535 - values], axis=-1)
    write_png16(tmp_path / "rgb48.png", rgb)
    pixels = np.asarray(open_image(tmp_path / "rgb48.png")).astype(int)
    assert np.abs(pixels - scaled(rgb).astype(int)).max() <= 1


def test_32bit_integer_and_float_images(tmp_path):
    values = gradient16()
    Image.fromarray(values.astype(np.int32), mode="I").save(tmp_path / "i32.tiff")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "i32.tiff"))[..., 0], scaled(values))

    unit = values.astype(np.float32) / 65535
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tiff")
    expected = np.rint(unit.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "unit.tiff"))[..., 1], expected)

    Image.fromarray(unit * 255, mode="F").save(tmp_path / "bytes.tiff")  # a float image on the 0-255 scale
    got = np.asarray(open_image(tmp_path / "bytes.tiff"))[..., 2].astype(int)
    assert np.abs(got - expected.astype(int)).max() <= 1

    Image.fromarray(unit * 1000, mode="F").save(tmp_path / "hdr.tiff")
    with pytest.raises(ValueError, match=r"float image with values in \[0.106813, 999.573\]: effnetv2 reads"):
        open_image(tmp_path / "hdr.tiff")


def test_predict_on_16bit_png_equals_the_8bit_png(tmp_path, capsys, checkpoint):
    values = gradient16(64, 80)
    Image.fromarray(values).save(tmp_path / "deep.png")
    Image.fromarray(scaled(values)).save(tmp_path / "flat.png")
    rc, results, err = predict_json(capsys, checkpoint, tmp_path / "deep.png", tmp_path / "flat.png")
    assert rc == 0 and err == ""
    assert results[0]["topk"] == results[1]["topk"]


# --- EXIF orientation ----------------------------------------------------------------------------------------------


def upright_photo() -> Image.Image:
    """A non-square image whose quadrants differ, so any rotation or mirroring changes it."""
    y, x = np.mgrid[0:48, 0:80]
    pixels = np.stack([x * 3, y * 5, (x // 40) * 200 + (y // 24) * 50], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def save_rotated(upright: Image.Image, path: Path, **kwargs) -> None:
    """Store ``upright`` turned 90° counter-clockwise with EXIF orientation 6 ("rotate 90° clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **kwargs)


def test_exif_orientation_is_applied(tmp_path):
    upright = upright_photo()
    save_rotated(upright, tmp_path / "phone.png")
    with Image.open(tmp_path / "phone.png") as stored:
        assert stored.size == (48, 80)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "phone.png")), np.asarray(upright))

    save_rotated(upright, tmp_path / "phone.jpg", quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    rotated, straight = open_image(tmp_path / "phone.jpg"), open_image(tmp_path / "upright.jpg")
    assert rotated.size == straight.size == (80, 48)
    assert np.abs(np.asarray(rotated).astype(int) - np.asarray(straight).astype(int)).mean() < 3  # JPEG noise


def test_predict_sees_the_upright_image(tmp_path, capsys, checkpoint):
    upright = upright_photo()
    upright.save(tmp_path / "upright.png")
    save_rotated(upright, tmp_path / "phone.png")
    rc, results, err = predict_json(capsys, checkpoint, tmp_path / "upright.png", tmp_path / "phone.png")
    assert rc == 0 and err == ""
    assert results[0]["topk"] == results[1]["topk"]


# --- decompression-bomb limits ------------------------------------------------------------------------------------


def test_bomb_limits_on_the_one_line_channel(tmp_path, capsys, checkpoint, monkeypatch, recwarn):
    upright_photo().resize((80, 64)).save(tmp_path / "large.png")  # 5120 pixels
    Image.new("RGB", (120, 100), (10, 20, 30)).save(tmp_path / "huge.png")  # 12000 pixels
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "small.png")
    # Warning above 5000 pixels, error above 10000; the transform's 64x64 crop stays below both.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    rc, results, err = predict_json(capsys, checkpoint, *(tmp_path / n for n in ("large.png", "huge.png", "small.png")))
    assert rc == 1
    assert [r["path"] for r in results] == [str(tmp_path / "large.png"), str(tmp_path / "small.png")]
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"effnetv2: warning: {tmp_path / 'large.png'}: 80x64 = 5,120 pixels, above Pillow's")
    assert "decoded anyway" in lines[0]
    assert lines[1].startswith(f"effnetv2: skipped {tmp_path / 'huge.png'}: not decoded: ")
    assert "12000 pixels" in lines[1] and "decompression-bomb error limit" in lines[1]
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # no raw warning

    with pytest.warns(LargeImageWarning, match="large.png: 80x64"):
        open_image(tmp_path / "large.png")
    with pytest.raises(ImageTooLargeError) as error:
        open_image(tmp_path / "huge.png")
    assert isinstance(error.value, ValueError) and isinstance(error.value, Image.DecompressionBombError)
    with pytest.raises(UnreadableImageError, match="huge.png: not decoded"):  # training stops with the path
        load_rgb(str(tmp_path / "huge.png"))


# --- non-regular files ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_and_devices_are_skipped_not_waited_on(tmp_path, checkpoint):
    os.mkfifo(tmp_path / "named.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    Image.new("RGB", (40, 40), (200, 100, 0)).save(folder / "good.png")
    with pytest.raises(NotRegularFileError, match="a FIFO"):
        open_image(folder / "pipe.jpg")

    cmd = [sys.executable, "-m", "effnetv2", "predict", tmp_path / "named.png", folder, os.devnull,
           "--checkpoint", checkpoint, "--img-size", SIZE, "--format", "json"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert done.returncode == 1, done.stderr
    assert [r["path"] for r in json.loads(done.stdout)] == [str(folder / "good.png")]
    assert sorted(done.stderr.splitlines()) == sorted(
        [
            f"effnetv2: skipped {tmp_path / 'named.png'}: not a regular file but a FIFO; skipped without reading it",
            f"effnetv2: skipped {folder / 'pipe.jpg'}: not a regular file but a FIFO; skipped without reading it",
            f"effnetv2: skipped {os.devnull}: not a regular file but a character device; skipped without reading it",
        ]
    )


# --- --img-size ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "embed", "features", "export"])
def test_img_size_below_32_is_refused(command, capsys):
    rc, out, err = cli(capsys, command, "--img-size", "31")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "--img-size: must be an integer >= 32" in err and "got 31" in err


# --- offline: fail fast, the command-line hint first ---------------------------------------------------------------


def test_unreachable_hub_fails_fast_with_the_checkpoint_hint_first(tmp_path):
    """HF_HUB_OFFLINE unset, the Hub and every proxy a closed local port: nothing leaves the machine."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HF_HUB_OFFLINE", "NO_PROXY")}
    closed = "http://127.0.0.1:9"
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=closed, HF_HUB_CACHE=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"))  # fmt: skip
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[proxy] = env[proxy.lower()] = closed
    cmd = [sys.executable, "-m", "effnetv2", "predict", "--img-size", SIZE]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr  # no retry or backoff lines from huggingface_hub
    message = done.stderr.strip()
    assert message.startswith(
        "effnetv2: error: no pretrained weights for efficientnetv2_rw_m.agc_in1k: pass --checkpoint PATH"
    )
    assert "the Hub could not be reached: " in message and "nor from the original release file" in message
    assert message.index("--checkpoint PATH") < message.index("pre-populate the Hugging Face cache")
    assert "checkpoint_path=" not in message  # the Python advice belongs to the Python error
