"""Pictures (issue 15): `effnetv2 plot` and `features --mosaic`, rendered and looked at as a person would: the PNG
decodes, has the size asked, is not blank, and shows what it should (each run in its colour; the strongest
channels, as timm's maps rank them). Issue 27 item 7: legible at any run length (one epoch, sixty) and image size
(a 96 px explain panel). train's curves.png and TensorBoard events: tests/test_train_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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


# --- issue 27 item 7: legible at any run length and image size --------------------------------------------------


def epoch_rows(epochs: int, top5: float | None = None) -> list[dict]:
    """``write_run``'s rows without a file; ``top5`` fixed (100.0: what a run with <= 5 classes records)."""
    return [
        dict(
            epoch=e,
            train_loss=2.0 / e,
            val_loss=2.2 / e,
            train_top1=40.0 + e / epochs * 50,
            val_top1=35.0 + e / epochs * 45,
            val_top5=top5 if top5 is not None else 70.0 + e / epochs * 25,
            lr=0.001 * (1 - e / (epochs + 1)),
        )
        for e in range(1, epochs + 1)
    ]


def panels(fig) -> tuple:
    """The (loss, LR, accuracy) axes of a curves figure."""
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    return by_label["loss"], by_label["learning rate (end of epoch)"], by_label["accuracy (%)"]


def ticks_shown(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def legend_is_off_the_data(fig) -> bool:
    fig.draw_without_rendering()  # lays out the constrained layout and the legend
    (legend,) = fig.legends
    box = legend.get_window_extent()
    return not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_one_epoch_curves_are_markers_on_an_integer_axis_and_the_lr_starts_at_0(tmp_path):
    from effnetv2.pictures import curves_figure, draw_curves

    rows = epoch_rows(1, top5=100.0)  # a 4-class run: top-5 is 100 % whatever the model
    fig = curves_figure({"run": rows})
    loss_ax, lr_ax, acc_ax = panels(fig)
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlim() == (0.5, 1.5) and ticks_shown(ax) == [1.0]  # not 0.96 to 1.04
    lines = loss_ax.lines + lr_ax.lines + acc_ax.lines
    assert len(lines) == 5 and all(line.get_marker() not in (None, "None", "") for line in lines)  # dots, not nothing
    assert lr_ax.get_ylim()[0] == 0 and lr_ax.get_ylim()[1] > rows[0]["lr"]  # never below 0
    assert [line.get_label() for line in acc_ax.lines] == ["train top-1", "val top-1"]  # no flat 100 % line
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "val top-5 not drawn: 100 % at every epoch (always so with ≤ 5 classes)" in texts
    assert legend_is_off_the_data(fig)
    draw_curves({"run": rows}, tmp_path / "curves.png")
    assert look(tmp_path / "curves.png").shape[1::-1] == curves_size()


def test_long_runs_have_lines_and_several_runs_a_legend_off_the_data():
    from effnetv2.pictures import curves_figure

    fig = curves_figure({"run": epoch_rows(60)})
    loss_ax, lr_ax, acc_ax = panels(fig)
    assert all(line.get_marker() in (None, "None", "") for line in loss_ax.lines + lr_ax.lines)  # not a smear
    assert all(t == int(t) for t in ticks_shown(loss_ax)) and ticks_shown(loss_ax)[-1] == 60
    assert "val top-5" in [line.get_label() for line in acc_ax.lines]  # an informative top-5 stays

    fig = curves_figure({"short": epoch_rows(3), "four-class": epoch_rows(6, top5=100.0)})
    loss_ax, _, acc_ax = panels(fig)
    assert loss_ax.get_xlim() == (0.5, 6.5) and ticks_shown(loss_ax) == [1, 2, 3, 4, 5, 6]
    assert len(acc_ax.lines) == 3 + 2  # the four-class run's top-5 left out
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[-3:-1] == ["short", "four-class"] and texts[-1].startswith("val top-5 of four-class not drawn")
    assert legend_is_off_the_data(fig)


def test_small_explanations_are_drawn_at_a_readable_size_with_a_colour_bar(tmp_path):
    from matplotlib import colormaps

    from effnetv2.cam import overlay
    from effnetv2.pictures import draw_explanation, explanation_size
    from effnetv2.pictures.explanation import GAP, MARGIN, PANEL_MIN, fit, overlay_colours, panel_size

    with Image.open(sample_image_path()) as img:
        small = img.convert("RGB").resize((144, 96))  # what explain --img-size 96 feeds the model
    maps = torch.rand(3, 3, 5, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "cam.png"
    draw_explanation(small, maps, ["loggerhead", "x" * 200, "tabby"], [0.9, 0.06, 0.01], out, title="gradcam, head")
    pixels = look(out)
    assert pixels.shape[1::-1] == explanation_size(144, 96, 3, title=True)
    pw, ph = panel_size(144, 96)
    assert (pw, ph) == (336, PANEL_MIN) and panel_size(432, 288) == (432, 288)  # large inputs keep their size
    top = pixels.shape[0] - MARGIN - ph
    shown = small.resize((pw, ph), Image.Resampling.BICUBIC)
    for k in range(3):  # each panel is the overlay of its own map, drawn pixel for pixel
        left = MARGIN + k * (pw + GAP)
        expected = np.asarray(overlay(shown, maps[k]))
        assert np.array_equal(pixels[top + 1 : top + ph - 1, left + 1 : left + pw - 1], expected[1:-1, 1:-1])
    # the colour bar shows the overlay's colours: the map's 1 is jet(1), its 0.5 jet(0.25) (TorchCAM squares)
    bar = pixels[top : top + ph, MARGIN + 3 * (pw + GAP) + 7].astype(int)
    rows = np.array([2, ph // 2, ph - 3])
    values = 1 - (rows + 0.5) / ph  # the bar runs from 1 at the top to 0 at the bottom
    for row, colour in zip(rows, overlay_colours()(values, bytes=True)[:, :3].astype(int), strict=True):
        assert np.abs(bar[row] - colour).max() <= 8, (row, bar[row], colour)  # a row's worth of colour change
    plain = np.array(colormaps["jet"](0.5, bytes=True)[:3])
    assert np.abs(bar[ph // 2] - plain).max() > 100  # not jet's own 0.5: the overlay paints 0.5 as jet(0.25)
    assert fit("x" * 200, pw).endswith("…") and len(fit("x" * 200, pw)) * 7 <= pw and fit("tabby", pw) == "tabby"
    with pytest.raises(ValueError, match="2 maps, 1 labels, 2 probabilities"):
        draw_explanation(small, maps[:2], ["a"], [0.5, 0.5], out)
