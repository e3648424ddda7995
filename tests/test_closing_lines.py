"""Every command that writes files ends by saying what it wrote (issue 27 item 4): one line on stderr, so that stdout
stays the data's, with the numbers of the run (rows, dimensions, shards, skipped images), and under torchrun from
rank 0 only; `explain` names each input with its picture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, photos_and_a_broken_file, torchrun
from PIL import Image
from safetensors import safe_open

import effnetv2
from effnetv2 import testing as calibrated_model
from effnetv2.data import sample_image_path
from effnetv2.pictures.explanation import explanation_size

LABELS = ["cat", "dog", "fox", "owl"]
B0_WIDTH = 1280  # tf_efficientnetv2_b0's pooled features


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven crops of the sample photo and one file that is not an image (sorted first: broken.png)."""
    return photos_and_a_broken_file(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def b0(tmp_path_factory) -> Path:
    """A 4-class tf_efficientnetv2_b0, conditioned as a trained net (informative probabilities), with label names."""
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=len(LABELS))
    calibrated_model.condition(model, calibrated_model.smooth_images(8, 96, seed=1))
    folder = tmp_path_factory.mktemp("b0") / "b0"
    return effnetv2.save_pretrained(model, folder, model_config={"label_names": LABELS})


def quick(checkpoint: Path) -> list[str]:
    return ["--checkpoint", checkpoint, "--img-size", 64, "--batch-size", 3, "--workers", 0]


def good(photos: Path, count: int) -> list[Path]:
    return [photos / f"photo{i}.png" for i in range(count)]


def test_embed_says_rows_dimensions_file_and_skipped(photos, checkpoint, tmp_path, capsys):
    npy = tmp_path / "emb.npy"
    rc, out, err = cli(capsys, "embed", photos, "-o", npy, *quick(checkpoint))
    assert (rc, out) == (1, "")  # 1: broken.png was skipped
    assert np.load(npy).shape == (7, 2152) and len((tmp_path / "emb.paths.txt").read_text().splitlines()) == 7
    assert err.splitlines()[-1] == (
        f"effnetv2: wrote 7 × 2152 embeddings to {npy} (+ {tmp_path / 'emb.paths.txt'}), 1 skipped"
    )

    st = tmp_path / "emb.safetensors"
    rc, out, err = cli(capsys, "embed", *good(photos, 2), "-o", st, *quick(checkpoint))
    assert (rc, out) == (0, "")
    with safe_open(str(st), framework="pt") as f:
        assert f.get_slice("embeddings").get_shape() == [2, 2152]
    assert err == f"effnetv2: wrote 2 × 2152 embeddings to {st}, 0 skipped\n"  # the only line


def test_embed_into_a_folder_says_shards_and_skipped(photos, checkpoint, tmp_path, capsys):
    out = tmp_path / "emb"
    rc, stdout, err = cli(capsys, "embed", photos, "-o", out, "--shard-size", 3, *quick(checkpoint))
    assert (rc, stdout) == (1, "")
    index = json.loads((out / "index.json").read_text())
    assert (index["count"], len(index["shards"]), len(index["skipped"])) == (7, 3, 1)  # 8 inputs, 3 per shard
    assert err.splitlines()[-2:] == [
        f"effnetv2: 1 image(s) skipped (listed under 'skipped' in {out / 'index.json'})",
        f"effnetv2: wrote 7 × 2152 embeddings to {out}{os.sep} (3 shards, 1 skipped)",
    ]

    clean = tmp_path / "clean"
    rc, _, err = cli(capsys, "embed", *good(photos, 4), "-o", clean, "--shard-size", 3, *quick(checkpoint))
    assert rc == 0 and err == f"effnetv2: wrote 4 × 2152 embeddings to {clean}{os.sep} (2 shards, 0 skipped)\n"


def test_features_say_images_levels_and_where(photos, checkpoint, tmp_path, capsys):
    st = tmp_path / "feats.safetensors"
    rc, out, err = cli(capsys, "features", *good(photos, 2), "-o", st, "--out-indices", "1,3", *quick(checkpoint))
    assert (rc, out) == (0, "")
    with safe_open(str(st), framework="pt") as f:
        assert sorted(f.keys()) == ["features.1", "features.3"] and f.get_slice("features.1").get_shape()[0] == 2
    assert err == f"effnetv2: wrote feature maps of 2 images, levels 1,3, to {st}, 0 skipped\n"

    folder = tmp_path / "feats"
    rc, out, err = cli(capsys, "features", photos, "-o", folder, "--shard-size", 4, *quick(checkpoint))
    assert (rc, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"effnetv2: wrote feature maps of 7 images, levels 0,1,2,3,4, to {folder}{os.sep} (2 shards, 1 skipped)"
    )

    # --mosaic: a line for the picture, then the one for the maps
    pytest.importorskip("matplotlib")
    mosaic, one = tmp_path / "mosaic.png", photos / "photo0.png"
    argv = ["features", one, "--mosaic", mosaic, "--mosaic-channels", 4, "--out-indices", "2,4", "-o", st]
    rc, out, err = cli(capsys, *argv, *quick(checkpoint))
    assert (rc, out) == (0, "") and mosaic.is_file()
    assert err.splitlines() == [
        f"effnetv2: drew levels 2,4 of {one} (4 strongest channels each) to {mosaic}",
        f"effnetv2: wrote feature maps of 1 image, levels 2,4, to {st}, 0 skipped",
    ]


def test_explain_names_each_input_with_its_picture(b0, tmp_path, capsys):
    """Two inputs of one stem become img.png and img-2.png: each line says which input which picture shows (the
    wide one and the tall one, told apart by the pictures' shapes), with the classes and probabilities drawn."""
    pytest.importorskip("torchcam")
    wide, tall, broken = tmp_path / "a" / "img.png", tmp_path / "b" / "img.png", tmp_path / "c" / "img.png"
    for path in (wide, tall, broken):
        path.parent.mkdir()
    with Image.open(sample_image_path()) as img:
        img.crop((0, 0, 300, 200)).save(wide)
        img.crop((0, 0, 150, 240)).save(tall)
    broken.write_text("not a picture")
    cams = tmp_path / "cams"
    argv = ["explain", wide, broken, tall, "--model", f"local-dir:{b0}", "--img-size", 64, "-o", cams, "--topk", 2]
    rc, out, err = cli(capsys, *argv, "--save-maps")
    assert (rc, out) == (1, "")  # 1: broken was skipped

    with safe_open(str(cams / "maps.safetensors"), framework="pt") as f:
        records = json.loads(f.metadata()["images"])
    assert [r["png"] for r in records] == ["img.png", "img-2.png"]

    def shown(record: dict) -> str:
        return ", ".join(
            f"{LABELS[c]} {100 * p:.1f} %" for c, p in zip(record["classes"], record["probs"], strict=True)
        )

    assert err.splitlines() == [
        f"effnetv2: {wide} -> {cams / 'img.png'} ({shown(records[0])})",
        f"effnetv2: skipped {broken}: not an image, or in a format Pillow cannot read",
        f"effnetv2: {tall} -> {cams / 'img-2.png'} ({shown(records[1])})",
        f"effnetv2: wrote the raw maps of 2 image(s) to {cams / 'maps.safetensors'}",
    ]
    # two panels side by side, each of its input's shape as the network saw it (shorter side 64)
    for png, shown in (("img.png", (96, 64)), ("img-2.png", (64, 102))):
        with Image.open(cams / png) as picture:
            assert picture.size == explanation_size(*shown, 2, title=True)


def test_export_ends_with_where_the_file_is(b0, tmp_path, capsys):
    output = tmp_path / "b0.pt"
    argv = ["export", "--format", "torchscript", "--model", f"local-dir:{b0}", "--img-size", 64, "--output", output]
    rc, out, err = cli(capsys, *argv)
    assert rc == 0 and out.startswith(f"wrote {output} (torchscript")
    assert err.splitlines()[-1] == (
        f"effnetv2: exported local-dir:{b0} to {output} (torchscript, {output.stat().st_size / 1e6:.1f} MB), verified "
        "against fp64"
    )


def test_under_torchrun_only_rank_0_says_what_was_written(photos, b0, tmp_path):
    out = tmp_path / "emb"
    files = [str(p) for p in good(photos, 5)]
    proc = torchrun(["embed", *files, "-o", out, "--model", f"local-dir:{b0}", "--img-size", 64, "--shard-size", 2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("effnetv2: wrote")] == [
        f"effnetv2: wrote 5 × {B0_WIDTH} embeddings to {out}{os.sep} (3 shards, 0 skipped)"
    ]
