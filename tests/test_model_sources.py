"""A model's files (issue 29 items 1 and 2): a reader of a model folder gets config.json and the weights of one
save while another process saves over it, and every output that can be resumed records the sha256 of the files the
model came from (--checkpoint, local-dir:, hf-hub:, a pretrained tag): --resume refuses other files in one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, populate_hf_cache
from PIL import Image
from safetensors.torch import load_file

import effnetv2
from effnetv2.cli import main
from effnetv2.weights.hub_config import open_model_folder
from effnetv2.weights.reading import read_pinned_state_dict

ROOT = Path(__file__).resolve().parents[1]
SMALL = "tf_efficientnetv2_b0"

# Saves `version` 1, 2, ... of a 2-class b0 into OUT, back to back: config.json's first label is f"v{version}" and
# every classifier bias is `version`, so a load tells which save each of its two files came from. COUNT holds the
# last version whose save returned.
WRITER = textwrap.dedent(
    """
    import sys
    import torch
    import effnetv2
    from effnetv2.atomic import write_text

    out, count, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=2)
    for version in range(1, limit + 1):
        with torch.no_grad():
            model.classifier.bias.fill_(float(version))
        effnetv2.save_pretrained(model, out, model_config={"label_names": [f"v{version}", "other"]})
        write_text(count, str(version))
    """
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_version(out: Path, version: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = effnetv2.create_model(SMALL, num_classes=2)
    with torch.no_grad():
        model.classifier.bias.fill_(float(version))
    effnetv2.save_pretrained(model, out, model_config={"label_names": [f"v{version}", "other"]})


def saves_done(count: Path) -> int:
    try:
        return int(count.read_text() or 0)
    except FileNotFoundError:
        return 0


def wait_for_save(count: Path, writer: subprocess.Popen, version: int) -> None:
    """Until the writer's save of ``version`` (or a later one) has returned; a generous hang guard only."""
    deadline = time.monotonic() + HANG_GUARD_S
    while saves_done(count) < version:
        assert writer.poll() is None, "the writer stopped"
        assert time.monotonic() < deadline, "hang guard: the writer made no progress"
        time.sleep(0.01)


@pytest.fixture
def writer(tmp_path):
    out, count = tmp_path / "out", tmp_path / "count"
    save_version(out, 0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(count), "100000"], env=env)
    yield out, count, proc
    proc.kill()
    proc.wait()


def test_a_model_folder_is_read_from_one_save_while_another_process_saves(writer):
    out, count, proc = writer

    # Deterministic first: a save completes between reading config.json and reading the weights.
    # Read by path at two moments (what create_model did): a mix, always.
    config = json.loads((out / "config.json").read_text())
    version = int(config["label_names"][0][1:])
    wait_for_save(count, proc, version + 1)
    assert load_file(out / "model.safetensors")["classifier.bias"][0] > version
    # Through one handle of the folder: the weights of the save the config came from, though that folder is gone.
    with open_model_folder(out) as files:
        version = int(files.content["label_names"][0][1:])
        wait_for_save(count, proc, version + 1)
        weights = read_pinned_state_dict(files.weights)
    assert weights["classifier.bias"].tolist() == [version, version]

    # Then create_model racing the writer: at least 30 loads, and as many as it takes the writer to save 15 more times
    # (a reader of the two files by path mixes about one load in five here).
    versions, mixed = [], []
    last = saves_done(count) + 15
    while len(versions) < 30 or saves_done(count) < last:
        assert proc.poll() is None, "the writer stopped"
        model = effnetv2.create_model(f"local-dir:{out}", pretrained=True)
        label = int(model.pretrained_cfg["label_names"][0][1:])
        versions.append(label)
        if model.classifier.bias.tolist() != [label, label]:
            mixed.append((label, model.classifier.bias.tolist()))
    assert mixed == [], f"{len(mixed)} of {len(versions)} loads mixed two saves: {mixed[:3]}"
    assert len(set(versions)) > 1  # the loads did meet different saves


def test_create_model_records_the_files_it_read(tmp_path, hf_cache):
    out = tmp_path / "b0"
    save_version(out, 3)
    model = effnetv2.create_model(f"local-dir:{out}", pretrained=True)
    assert [(f.role, Path(f.path)) for f in model.source_files] == [
        ("config", out / "config.json"),
        ("weights", out / "model.safetensors"),
    ]
    assert [f.sha256() for f in model.source_files] == [sha256(out / "config.json"), sha256(out / "model.safetensors")]
    assert [f.role for f in effnetv2.create_model(f"local-dir:{out}").source_files] == ["config"]
    ckpt = effnetv2.create_model(SMALL, checkpoint_path=out / "model.safetensors")  # its config.json beside it
    assert [f.role for f in ckpt.source_files] == ["config", "weights"]
    assert effnetv2.create_model(SMALL).source_files == ()
    tag = effnetv2.create_model("efficientnetv2_rw_m.agc_in1k", pretrained=True)  # from the Hub cache
    (weights,) = tag.source_files
    assert weights.role == "weights" and weights.sha256() == sha256(Path(weights.path))

    save_version(out, 4)  # the files read are gone: their hash would describe another model
    with pytest.raises(effnetv2.CheckpointError, match="replaced or changed after the model was read from it"):
        model.source_files[1].sha256()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        Image.new("RGB", (40 + 8 * i, 48), (40 * i, 200 - 30 * i, 90)).save(folder / f"p{i}.png")
    return folder


def one_line_error(capsys, argv: list[str], status: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


FAST = ["--img-size", "64", "--batch-size", "2", "--workers", "0", "--shard-size", "2"]


@pytest.mark.parametrize("command", ["embed", "features"])
def test_resume_refuses_a_local_dir_model_whose_files_changed(photos, tmp_path, capsys, command):
    model_dir, out = tmp_path / "b0", tmp_path / "out"
    save_version(model_dir, 1)
    argv = [command, str(photos), "--model", f"local-dir:{model_dir}", *FAST, "-o", str(out)]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["weights_sha256"] == sha256(model_dir / "model.safetensors")
    assert run["config_sha256"] == sha256(model_dir / "config.json")
    assert run["weights_file"] == str(model_dir / "model.safetensors")
    (out / "shard-00001.safetensors").unlink()  # as if killed: one shard left to write
    (out / "index.json").unlink()

    save_version(model_dir, 1, seed=1)  # other weights, the same config.json
    assert sha256(model_dir / "config.json") == run["config_sha256"]
    err = one_line_error(capsys, [*argv, "--resume"])
    assert f"--resume with another model: the weights file {model_dir / 'model.safetensors'} is not the one" in err
    assert f"{run['weights_sha256'][:12]}... then" in err and "mix two models' outputs" in err

    save_version(model_dir, 1)  # the first weights again (seeded), and another config.json (its label names)
    assert sha256(model_dir / "model.safetensors") == run["weights_sha256"]
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text().replace('"v1"', '"one"'))
    err = one_line_error(capsys, [*argv, "--resume"])
    assert f"the config.json {model_dir / 'config.json'} is not the one" in err
    assert not (out / "shard-00001.safetensors").exists()  # nothing was written by a refused run

    save_version(model_dir, 1)
    assert main([*argv, "--resume"]) == 0
    assert (out / "index.json").is_file()


def test_resume_refuses_a_hub_repo_whose_main_moved(photos, tmp_path, hf_cache, capsys):
    """hf-hub: names fingerprint the resolved snapshot files (the Hub cache here, offline)."""
    repo = "someone/b0-for-resume"
    first, second = tmp_path / "first", tmp_path / "second"
    save_version(first, 1)
    save_version(second, 1, seed=1)
    snapshot = populate_hf_cache(hf_cache, repo, first, commit="1" * 40)
    out = tmp_path / "out"
    argv = ["embed", str(photos), "--model", f"hf-hub:{repo}", *FAST, "-o", str(out)]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["weights_sha256"] == sha256(first / "model.safetensors")
    assert run["config_sha256"] == sha256(first / "config.json")
    assert run["weights_file"] == str(snapshot / "model.safetensors")
    assert main([*argv, "--resume"]) == 0  # the same files: nothing to do

    moved = populate_hf_cache(hf_cache, repo, second, commit="2" * 40)  # refs/main now names another commit
    err = one_line_error(capsys, [*argv, "--resume"])
    assert f"the weights file {moved / 'model.safetensors'} is not the one" in err


def train_images(root: Path) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 48), (200 * (c == 0), 30 * i, 200 * (c == 1))).save(folder / f"{i}.png")
    return root


def test_train_resume_refuses_other_model_files_and_another_img_size(tmp_path, capsys):
    data, model_dir, out = train_images(tmp_path / "data"), tmp_path / "b0", tmp_path / "run"
    save_version(model_dir, 1)

    def train(epochs: int = 1, img_size: int = 32, checkpoint: bool = True) -> list[str]:
        argv = ["train", str(data), "--output", str(out), "--model", SMALL, "--epochs", str(epochs)]
        argv += ["--img-size", str(img_size), "--batch-size", "4", "--workers", "0"]
        return argv + (["--checkpoint", str(model_dir)] if checkpoint else [])

    assert main(train()) == 0
    recipe = torch.load(out / "last_state.pt", weights_only=True)["recipe"]
    assert recipe["weights_sha256"] == sha256(model_dir / "model.safetensors")
    assert recipe["config_sha256"] == sha256(model_dir / "config.json")

    # a finished run: another --img-size is named, not "nothing to do"
    err = one_line_error(capsys, [*train(img_size=48), "--resume"])
    assert "--img-size: the run in" in err and "started with 32, this one has 48" in err
    capsys.readouterr()
    assert main([*train(), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().err

    save_version(model_dir, 1, seed=1)  # the checkpoint folder now holds other weights
    err = one_line_error(capsys, [*train(epochs=2), "--resume"])
    assert f"the weights file {model_dir / 'model.safetensors'} is not the one the run in {out}" in err
    # without --checkpoint the resume takes the run's (issue 27: nothing retyped), so the changed file is refused too
    err = one_line_error(capsys, [*train(epochs=2, checkpoint=False), "--resume"])
    assert f"the weights file {model_dir / 'model.safetensors'} is not the one the run in {out}" in err
    save_version(model_dir, 1)  # the files the run began with, back: the resume extends the run
    assert main([*train(epochs=2, checkpoint=False), "--resume"]) == 0
    assert torch.load(out / "last_state.pt", weights_only=True)["epoch"] == 2
