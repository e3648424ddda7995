"""WebDataset tar shards as inputs (issue 14): tars written by webdataset's own TarWriter give the samples
webdataset's reader gives, in its order, and embed to the rows of the same images as separate files."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import assert_close
from PIL import Image
from safetensors import safe_open

from effnetv2.cli import main
from effnetv2.cli.inputs import find_images
from effnetv2.data.images import open_image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two WebDataset shards of 3 samples (jpg + cls, one sample a png), and the same images as loose files."""
    root = tmp_path_factory.mktemp("wds")
    loose = root / "loose"
    loose.mkdir()
    rng = np.random.default_rng(0)
    tars = [root / f"shard-{n:03d}.tar" for n in range(2)]
    for n, tar in enumerate(tars):
        with wds.TarWriter(str(tar)) as sink:
            for i in range(3):
                pixels = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).resize((80, 64), Image.BILINEAR)
                key, ext = f"sample{n}{i}", "png" if i == 1 else "jpg"
                data = jpeg_bytes(image) if ext == "jpg" else None
                if data is None:
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    data = buffer.getvalue()
                sink.write({"__key__": key, ext: data, "cls": str(i).encode()})
                (loose / f"{n}-{i}.{ext}").write_bytes(data)
    return tars, loose


def test_samples_are_the_ones_webdatasets_reader_gives(shards):
    tars, _ = shards
    ours = find_images(tars)
    theirs = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert [m.key for m in ours] == [s["__key__"] for s in theirs] and len(ours) == 6
    for member, sample in zip(ours, theirs, strict=True):
        ext = "png" if "png" in sample else "jpg"
        assert member.member == f"{sample['__key__']}.{ext}" and member.read_bytes() == sample[ext]
        expected = Image.open(io.BytesIO(sample[ext])).convert("RGB")
        np.testing.assert_array_equal(np.asarray(open_image(member)), np.asarray(expected))


def read(path: Path) -> tuple[dict, list[str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["paths"])  # noqa: SIM118


def test_embed_tars_as_the_same_images_in_files(shards, checkpoint, tmp_path, capsys):
    tars, loose = shards
    # two decoding workers: the tar members travel to worker processes and are read there by offset
    common = ["--checkpoint", str(checkpoint), "--img-size", "64", "--batch-size", "2", "--workers", "2"]
    assert main(["embed", *map(str, sorted(loose.iterdir())), "-o", str(tmp_path / "loose.safetensors"), *common]) == 0
    assert main(["embed", *map(str, tars), "-o", str(tmp_path / "tars"), "--shard-size", "4", *common]) == 0
    expected, _ = read(tmp_path / "loose.safetensors")
    index = json.loads((tmp_path / "tars" / "index.json").read_text())
    assert index["count"] == 6 and [s["count"] for s in index["shards"]] == [4, 2]
    parts = [read(tmp_path / "tars" / s["file"]) for s in index["shards"]]
    paths = [p for _, shard_paths in parts for p in shard_paths]
    assert paths[:2] == [f"{tars[0]}/sample00.jpg", f"{tars[0]}/sample01.png"]
    assert_close(torch.cat([tensors["embeddings"] for tensors, _ in parts]), expected["embeddings"])

    (tmp_path / "list.txt").write_text(f"{tars[1]}\n")  # a tar named in --files-from gives its samples too
    assert main(["embed", "--files-from", str(tmp_path / "list.txt"), "-o", str(tmp_path / "one.npy"), *common]) == 0
    assert (tmp_path / "one.paths.txt").read_text().splitlines() == [str(p) for p in paths[3:]]


def test_tars_that_cannot_be_indexed_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz") as tar:
        tar.add(__file__, arcname="x.jpg")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        tar.add(__file__, arcname="notes.txt")
    for path, message in [
        ("junk.tar", "junk.tar: not a tar file (invalid header)"),
        ("packed.tar.gz", "a compressed tar file: decompress it"),
        ("empty.tar", "no images in this tar file"),
    ]:
        assert main(["embed", str(tmp_path / path), "-o", str(tmp_path / "e.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_hard_links_duplicates_and_sparse_members(tmp_path):
    """A hard link reads its target's bytes; of two members named alike the later counts (as tar -x leaves it)."""
    first, second = (jpeg_bytes(Image.new("RGB", (40, 30), colour)) for colour in ("red", "blue"))
    tar_path = tmp_path / "links.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in [("a.jpg", first), ("c.jpg", first), ("c.jpg", second)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.LNKTYPE, "a.jpg"
        tar.addfile(link)
    members = find_images([tar_path])
    assert [(m.member, m.read_bytes()) for m in members] == [("a.jpg", first), ("c.jpg", second), ("b.jpg", first)]


def test_sparse_members_are_reported_and_skipped(tmp_path, checkpoint, capsys):
    """GNU tar's sparse members do not store their bytes in one piece: reported when read, like a bad image."""
    gnu_tar = shutil.which("tar")
    if gnu_tar is None:
        pytest.skip("needs GNU tar to write a sparse member")
    folder = tmp_path / "src"
    folder.mkdir()
    Image.new("RGB", (40, 30), "green").save(folder / "good.png")
    with open(folder / "holes.jpg", "wb") as f:  # a file with a hole: tar --sparse stores only the data
        f.write(b"\xff\xd8" + b"x" * 4096)
        f.seek(1 << 20)
        f.write(b"y" * 4096)
    tar_path = tmp_path / "sparse.tar"
    subprocess.run(
        [gnu_tar, "--sparse", "--format=gnu", "-cf", str(tar_path), "-C", str(folder), "good.png", "holes.jpg"],
        check=True,
    )
    with tarfile.open(tar_path) as tar:
        if not tar.getmember("holes.jpg").issparse():
            pytest.skip("this file system keeps no holes, so tar wrote no sparse member")
    out = tmp_path / "e.npy"
    args = ["--checkpoint", str(checkpoint), "--img-size", "64", "--workers", "0"]
    assert main(["embed", str(tar_path), "-o", str(out), *args]) == 1
    assert "holes.jpg: a sparse tar member, which is not read" in capsys.readouterr().err
    assert (tmp_path / "e.paths.txt").read_text().splitlines() == [f"{tar_path}/good.png"]


def test_listed_compressed_tars_and_folders_of_tars(tmp_path, capsys, monkeypatch):
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz") as tar:
        tar.add(__file__, arcname="x.jpg")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'packed.tar.gz'}\n")
    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "000.tar", "w") as tar:
        tar.add(__file__, arcname="x.jpg")

    def error(*argv) -> str:
        assert main(["embed", *argv, "-o", str(tmp_path / "e.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "packed.tar.gz: a compressed tar file: decompress it" in error("--files-from", str(tmp_path / "list.txt"))
    assert "no images in this folder (looked for .jpg" in error(str(tars))
    assert f"tar files are read when named: give them (e.g. {tars / '000.tar'})" in error(str(tars))
    # under torchrun (its whole environment: a stray WORLD_SIZE alone is refused first), each process would read its
    # own copy of stdin
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert "under torchrun every process would read standard input" in error("--files-from", "-")


def image_tar(path: Path, names: list[str]) -> bytes:
    """A tar of small JPEGs named ``names``; its bytes."""
    data = jpeg_bytes(Image.new("RGB", (40, 30), "red"))
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_links_that_are_not_read_are_said_once(tmp_path, capsys):
    tar_path = tmp_path / "links.tar"
    image_tar(tar_path, ["a.jpg"])
    with tarfile.open(tar_path, "a") as tar:
        for name, kind, target in [("s.jpg", tarfile.SYMTYPE, "a.jpg"), ("h.jpg", tarfile.LNKTYPE, "later.jpg")]:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            tar.addfile(link)
    assert [m.member for m in find_images([tar_path])] == ["a.jpg"]
    assert capsys.readouterr().err.splitlines() == [
        f"effnetv2: warning: {tar_path}: 2 image members are links, not read: s.jpg: a symbolic link (to 'a.jpg'), "
        "which is not followed (and 1 more)"
    ]
    only_links = tmp_path / "only-links.tar"
    with tarfile.open(only_links, "w") as tar:
        link = tarfile.TarInfo("s.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
        tar.addfile(link)
    assert main(["embed", str(only_links), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "no images in this tar file (looked for jpg, jpeg, png, webp, ppm, bmp, tif, tiff); 1 image "
        "members are links, not read: s.jpg: a symbolic link (to 'elsewhere.jpg'), which is not followed"
    )


def base256_size(header: bytes, size: int) -> bytes:
    """``header`` with its size field in GNU's base-256 form and the checksum redone."""
    block = bytearray(header)
    block[124:136] = bytes([0x80]) + size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_damaged_tars_name_the_member_and_the_damage(tmp_path, capsys):
    raw = image_tar(tmp_path / "good.tar", ["a.jpg", "b.jpg", "c.jpg"])
    with tarfile.open(tmp_path / "good.tar") as tar:
        b = tar.getmember("b.jpg")
        c = tar.getmember("c.jpg")
    cases = {
        # cut inside a.jpg's data, and inside c.jpg's header
        "cut-data.tar": (raw[:700], "member 'a.jpg': its header says"),
        "cut-header.tar": (raw[: c.offset + 100], "damaged after member 'b.jpg' (truncated inside a header)"),
        # b.jpg's size 2^60 in base-256: tarfile's own seek fails with a bare EINVAL
        "huge.tar": (
            raw[: b.offset] + base256_size(raw[b.offset : b.offset + 512], 2**60) + raw[b.offset + 512 :],
            f"member 'b.jpg': its header says {2**60:,} bytes from offset {b.offset_data:,}, but the file ends at "
            f"{len(raw):,}: a truncated tar file, or a corrupt or unsupported header",
        ),
        # garbage where c.jpg's header was: tarfile stops there silently
        "garbage.tar": (
            raw[: c.offset] + b"\xff" * 512 + raw[c.offset + 512 :],
            f"damaged after member 'b.jpg' (a corrupt header at offset {c.offset:,})",
        ),
        # gzip data under a .tar name
        "gzipped.tar": (gzip.compress(raw), "a gzip-compressed file: decompress it to a plain .tar first"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["embed", str(tmp_path / name), "-o", str(tmp_path / "e.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"effnetv2: error: {tmp_path / name}: ") and message in err, err
        assert len(err.splitlines()) == 1 and "Errno" not in err and ".tar.gz" not in err
