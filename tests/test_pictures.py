"""Pictures (issue 15): `effnetv2 plot` and `features --mosaic`, rendered and looked at as a person would: the PNG
decodes, has the size asked, is not blank, and shows what it should (each run in its colour; the strongest
channels, as timm's maps rank them). train's curves.png and TensorBoard events: tests/test_train_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from effnetv2.cli import main
from effnetv2.data import create_transform, resolve_model_data_config, sample_image_path
from effnetv2.data.images import open_image
from effnetv2.pictures import curves_size, mosaic_size, strongest_channels

RUN_COLOURS = {"C0": (31, 119, 180), "C1": (255, 127, 14)}  # matplotlib's first two cycle colours


def look(path: Path) -> np.ndarray:
    """The picture as RGB pixels, after checking it is not blank (a flat or nearly one-colour image)."""
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.astype(np.float32).std() > 20, "blank picture"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "hardly any colours"
    return pixels


def shows(pixels: np.ndarray, colour: tuple[int, int, int], at_least: int = 100) -> bool:
    """At least ``at_least`` pixels of (nearly) ``colour``: a line drawn in it."""
    return int((np.abs(pixels.astype(int) - colour).max(axis=2) <= 8).sum()) >= at_least


def write_run(folder: Path, epochs: int, scale: float) -> Path:
    folder.mkdir()
    rows = [
        dict(
            epoch=e,
            train_loss=2.0 * scale / e,
            val_loss=2.2 * scale / e,
            train_top1=40.0 + 10 * e,
            val_top1=35.0 + 9 * e,
            val_top5=70.0 + 5 * e,
            lr=0.01 * (1 - e / (epochs + 1)),
            images_per_s=100.0,
        )
        for e in range(1, epochs + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_draws_every_run_in_its_own_colour(tmp_path, capsys):
    short, long = write_run(tmp_path / "short", 3, 1.0), write_run(tmp_path / "long", 6, 0.5)
    both, one = tmp_path / "both.png", tmp_path / "one.png"
    assert main(["plot", str(short), str(long / "metrics.jsonl"), "-o", str(both), "--title", "two runs"]) == 0
    assert capsys.readouterr().out.strip() == str(both)
    pixels = look(both)
    assert pixels.shape[1::-1] == curves_size()
    assert shows(pixels, RUN_COLOURS["C0"]) and shows(pixels, RUN_COLOURS["C1"])
    assert main(["plot", str(short), "-o", str(one)]) == 0
    pixels = look(one)
    assert shows(pixels, RUN_COLOURS["C0"]) and not shows(pixels, RUN_COLOURS["C1"], at_least=1)

    (tmp_path / "empty").mkdir()
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "metrics.jsonl").write_text('{"epoch": 1, "train_lo')  # a write cut short: no epoch
    for argv, message in (
        ([str(tmp_path / "nowhere")], "no such run folder"),
        ([str(tmp_path / "empty")], "has no metrics.jsonl: not an effnetv2 train --output folder"),
        ([str(tmp_path / "torn")], "no finished epoch in it yet"),
        ([str(short), "-o", str(tmp_path / "x.jpg")], "unsupported output type '.jpg'; use .png"),
    ):
        out = [] if "-o" in argv else ["-o", str(tmp_path / "x.png")]
        assert main(["plot", *argv, *out]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_mosaic_draws_the_strongest_channels_of_each_level(checkpoint, features_pair, tmp_path, capsys):
    out = tmp_path / "mosaic.png"
    argv = ["features", "--checkpoint", str(checkpoint), "--img-size", "96", "--out-indices", "1,3,4"]
    assert main([*argv, "--mosaic", str(out), "--mosaic-channels", "4"]) == 0
    assert look(out).shape[1::-1] == mosaic_size(3, 4)

    # the channels drawn are those timm's maps rank strongest (same weights, same input)
    ours, theirs = features_pair
    config = resolve_model_data_config(ours, args={"img_size": 96}, use_test_size=True)
    x = create_transform(**config, is_training=False)(open_image(sample_image_path()))[None]
    with torch.no_grad():
        our_maps, their_maps = ours(x), theirs(x)
    for level in (1, 3, 4):
        expected = their_maps[level][0].mean(dim=(1, 2)).topk(4).indices
        assert torch.equal(strongest_channels(our_maps[level][0], 4), expected)

    # with -o as well, both are written; the picture is of one image
    both = tmp_path / "both.png"
    assert main([*argv, "--mosaic", str(both), "-o", str(tmp_path / "maps.safetensors")]) == 0
    assert (tmp_path / "maps.safetensors").is_file() and look(both).shape[1::-1] == mosaic_size(3, 8)
    capsys.readouterr()
    sample = str(sample_image_path())
    for extra, message in (
        ([sample, sample, "--mosaic", str(out)], "--mosaic draws the maps of one image; 2 images were given"),
        ([], "give -o OUTPUT (the maps), --mosaic OUT.png (a picture of them), or both"),
        (["--mosaic", str(tmp_path / "m.gif")], "unsupported output type '.gif'"),
    ):
        assert main(["features", *extra, "--checkpoint", str(checkpoint)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
