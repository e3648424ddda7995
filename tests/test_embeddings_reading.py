"""effnetv2.load_embeddings / iter_embeddings (issue 27 item 8): what `effnetv2 embed` wrote, read back with the
image path of each row and the skipped files, from one file or a sharded folder; a folder that is unfinished or
damaged is an error that says what to do, never wrong rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ARCH, Embedder, assert_close, save_sample_crops

import effnetv2
from effnetv2.cli import main
from effnetv2.data import create_transform, resolve_model_data_config
from effnetv2.data.images import open_image

SIZE = 64
COMMON = ["--img-size", str(SIZE), "--batch-size", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five crops of the sample photo (one with a newline in its name: stored escaped, given back as it is) and a
    file that is not an image, sorted first."""
    folder = tmp_path_factory.mktemp("photos")
    save_sample_crops(folder, 4, step=(30, 10), size=(220, 200), name="photo{}.png")
    save_sample_crops(folder, 1, step=(0, 0), size=(180, 240), name="two\nlines.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def written(photos, checkpoint, tmp_path_factory) -> dict[str, Path]:
    """embed's three outputs of the photos: .safetensors, .npy and a folder of 2-file shards."""
    out = tmp_path_factory.mktemp("embeddings")
    targets = {"safetensors": out / "emb.safetensors", "npy": out / "emb.npy", "folder": out / "emb"}
    for kind, target in targets.items():
        shards = ["--shard-size", "2"] if kind == "folder" else []
        assert main(["embed", str(photos), "-o", str(target), "--checkpoint", str(checkpoint), *COMMON, *shards]) == 1
    return targets


@pytest.fixture(scope="module")
def direct(photos, model) -> dict[str, torch.Tensor]:
    """Each image's pooled embedding by a plain forward of the model, through the eval transform embed uses."""
    config = resolve_model_data_config(model, args={"img_size": SIZE}, use_test_size=True)
    transform = create_transform(**config, is_training=False)
    paths = sorted(str(p) for p in photos.iterdir() if p.name != "broken.png")
    with torch.no_grad():
        rows = Embedder(model)(torch.stack([transform(open_image(p)) for p in paths]))
    return dict(zip(paths, rows, strict=True))


@pytest.mark.parametrize("kind", ["safetensors", "npy", "folder"])
def test_rows_are_the_models_embeddings_of_their_paths(written, photos, direct, kind):
    emb = effnetv2.load_embeddings(written[kind])
    assert sorted(emb.paths) == sorted(direct) and len(emb) == 5
    assert "two\nlines.png" in {Path(p).name for p in emb.paths}
    assert emb.vectors.shape == (5, len(direct[emb.paths[0]]))
    assert_close(emb.vectors, torch.stack([direct[p] for p in emb.paths]))  # row i is the image at paths[i]
    if kind == "folder":  # shards record the files they could not read; a single file does not
        assert emb.skipped == [str(photos / "broken.png")]
        assert emb.metadata["input_size"] == [3, SIZE, SIZE]
    else:
        assert emb.skipped is None
    assert emb.model == (None if kind == "npy" else ARCH)


def test_a_folder_streams_one_checked_shard_at_a_time(written, photos):
    parts = list(effnetv2.iter_embeddings(written["folder"]))
    # six inputs, two per shard: broken.png and photo0 in the first (one row), then two rows each
    assert [len(p) for p in parts] == [1, 2, 2]
    assert parts[0].skipped == [str(photos / "broken.png")] and parts[1].skipped == []
    whole = effnetv2.load_embeddings(written["folder"])
    assert [q for p in parts for q in p.paths] == whole.paths
    assert torch.equal(torch.cat([p.vectors for p in parts]), whole.vectors)
    single = effnetv2.load_embeddings(written["safetensors"])
    assert single.paths == whole.paths  # the same rows in the same order as one file
    assert_close(single.vectors, whole.vectors)


def test_missing_unfinished_and_damaged_output_say_what_to_do(written, photos, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        effnetv2.load_embeddings(tmp_path / "nowhere")
    npy = tmp_path / "lonely.npy"
    shutil.copy(written["npy"], npy)
    with pytest.raises(FileNotFoundError, match=r"lonely\.paths\.txt: missing"):
        effnetv2.load_embeddings(npy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an effnetv2 embed output folder"):
        effnetv2.load_embeddings(tmp_path / "empty")

    folder = tmp_path / "emb"
    shutil.copytree(written["folder"], folder)
    (folder / "index.json").unlink()  # as a run that was stopped before its last shard leaves it
    with pytest.raises(ValueError, match=r"unfinished effnetv2 embed run \(no index.json; 3 shard\(s\).*--resume"):
        effnetv2.load_embeddings(folder)

    shutil.rmtree(folder)
    shutil.copytree(written["folder"], folder)
    shard = folder / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # one bit of the last row's last value: the file still reads, its rows are wrong
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard-00001.safetensors: damaged.*--resume"):
        effnetv2.load_embeddings(folder)
    # what the message says to do mends it: --resume writes the damaged shard again
    assert (
        main(
            [
                "embed",
                str(photos),
                "-o",
                str(folder),
                "--checkpoint",
                str(checkpoint),
                *COMMON,
                "--shard-size",
                "2",
                "--resume",
            ]
        )
        == 1
    )
    mended, original = effnetv2.load_embeddings(folder), effnetv2.load_embeddings(written["folder"])
    assert mended.paths == original.paths
    assert_close(mended.vectors, original.vectors)

    index = json.loads((folder / "index.json").read_text())
    index["kind"] = "features"
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="the output of effnetv2 features, not embeddings"):
        effnetv2.load_embeddings(folder)
