"""A fine-tuned model is a model everywhere (issue 12): its folder, or its file beside config.json, rebuilds the
trained head with its class names in Python and on the command line; a head that does not fit is never swapped
silently."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import timm
import torch
from conftest import assert_close, image_batch
from PIL import Image
from safetensors import safe_open

import effnetv2
from effnetv2.cli import main
from effnetv2.errors import ClassifierNotLoadedWarning

ARCH = "efficientnetv2_rw_m"
LABELS = ["cats", "dogs"]
SIZE = 96


@pytest.fixture(scope="module")
def pets(model, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A 2-class model saved as `effnetv2 train` saves one (label names, its evaluation size), and the model."""
    two = effnetv2.create_model(ARCH, num_classes=2).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    two.load_state_dict(state, strict=False)
    with torch.no_grad():  # two distinct rows of the oracle's tempered classifier: a head that means something
        two.classifier.weight.copy_(model.classifier.weight[[3, 7]])
        two.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    two.pretrained_cfg = {**two.pretrained_cfg, "input_size": (3, SIZE, SIZE)}
    two.pretrained_cfg.pop("test_input_size", None)
    folder = tmp_path_factory.mktemp("runs") / "pets"
    effnetv2.save_pretrained(two, folder, model_config=dict(label_names=LABELS))
    return folder, two


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(image_batch(3, SIZE, SIZE)):
        array = ((image.permute(1, 2, 0) * 0.25 + 0.45).clamp(0, 1) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("where", ["folder", "file"])
def test_checkpoint_with_config_rebuilds_the_trained_model(pets, where):
    folder, two = pets
    path = folder if where == "folder" else folder / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing adapted, nothing dropped
        loaded = effnetv2.create_model(ARCH, checkpoint_path=path).eval()
    assert loaded.num_classes == 2
    assert loaded.pretrained_cfg["label_names"] == LABELS
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, SIZE, SIZE)
    assert loaded.pretrained_cfg["file"] == str(folder / "model.safetensors")
    x = image_batch(2, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), two(x))


def test_callers_num_classes_wins_with_a_warning_saying_why(pets):
    folder, _ = pets
    with pytest.warns(ClassifierNotLoadedWarning, match=r"num_classes=10 was passed, its config.json says 2"):
        loaded = effnetv2.create_model(ARCH, checkpoint_path=folder, num_classes=10)
    assert loaded.num_classes == 10
    assert "label_names" not in loaded.pretrained_cfg  # they named the dropped head's classes


def test_config_of_another_architecture_and_a_folder_without_files_are_refused(pets, tmp_path):
    folder, _ = pets
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    config["architecture"] = "efficientnetv2_rw_s"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(effnetv2.CheckpointError, match="is for 'efficientnetv2_rw_s', not 'efficientnetv2_rw_m'"):
        effnetv2.create_model(ARCH, checkpoint_path=other)
    with pytest.raises(effnetv2.CheckpointError, match="is a folder without model.safetensors"):
        effnetv2.create_model(ARCH, checkpoint_path=tmp_path)


def test_timm_reloads_the_saved_head(pets):
    folder, two = pets
    config = json.loads((folder / "config.json").read_text())
    theirs = timm.create_model(
        ARCH,
        pretrained=True,
        num_classes=config["num_classes"],
        # timm drops the classifier unless its pretrained config has the same class count
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=config["num_classes"]),
    ).eval()
    x = image_batch(2, SIZE, SIZE)
    with torch.no_grad():
        assert_close(two(x), theirs(x))
    assert config["label_names"] == LABELS


def _cli(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("how", ["folder", "file", "local-dir"])
def test_predict_prints_the_trained_classes(pets, photos, capsys, how):
    folder, two = pets
    model_args = {
        "folder": ["--checkpoint", str(folder)],
        "file": ["--checkpoint", str(folder / "model.safetensors")],
        "local-dir": ["--model", f"local-dir:{folder}"],
    }[how]
    code, out, err = _cli(capsys, ["predict", str(photos / "0.png"), *model_args, "--format", "json", "--workers", "0"])
    assert code == 0, err
    (prediction,) = json.loads(out)
    assert len(prediction["topk"]) == 2  # --topk defaults to min(5, classes)
    # the probabilities are the trained head's on the eval transform at the saved size
    config = effnetv2.data.resolve_model_data_config(two, use_test_size=True)
    x = effnetv2.data.create_transform(**config)(Image.open(photos / "0.png").convert("RGB"))
    with torch.no_grad():
        probs = two(x[None]).softmax(1)[0]
    got = {t["index"]: t["prob"] for t in prediction["topk"]}
    assert got == pytest.approx({0: probs[0].item(), 1: probs[1].item()}, rel=1e-5)
    assert {t["index"]: t["label"] for t in prediction["topk"]} == {0: "cats", 1: "dogs"}


def test_a_head_that_does_not_fit_is_refused_with_the_way_out(pets, photos, tmp_path, capsys):
    folder, _ = pets
    alone = tmp_path / "pets.safetensors"  # the weights without their config.json
    shutil.copy(folder / "model.safetensors", alone)
    code, out, err = _cli(capsys, ["predict", str(photos), "--checkpoint", str(alone), "--workers", "0"])
    assert code == 2 and out == ""
    assert "has a 2-class classifier but the model built has 1000 classes" in err
    assert "--num-classes 2" in err and "Traceback" not in err
    code, out, err = _cli(
        capsys, ["predict", str(photos / "1.png"), "--checkpoint", str(alone), "--num-classes", "2", "--workers", "0"]
    )
    assert code == 0, err
    assert "  1  " in out and "cats" not in out  # no config.json: class indices as labels
    code, _, err = _cli(capsys, ["predict", str(photos), "--checkpoint", str(folder), "--num-classes", "3"])
    assert code == 2 and "pass --num-classes 2 (or leave it out)" in err


def test_embed_and_features_name_the_checkpoint_used(pets, photos, tmp_path, capsys):
    folder, two = pets
    out_file = tmp_path / "emb.safetensors"
    code, _, err = _cli(
        capsys, ["embed", str(photos), "--checkpoint", str(folder), "-o", str(out_file), "--workers", "0"]
    )
    assert code == 0, err
    with safe_open(out_file, "pt") as f:
        meta = f.metadata()
        embeddings = f.get_tensor("embeddings")
    assert json.loads(meta["model"]) == ARCH
    assert json.loads(meta["checkpoint"]) == str(folder / "model.safetensors")
    assert json.loads(meta["input_size"]) == [3, SIZE, SIZE]
    assert embeddings.shape == (3, two.num_features)


def test_info_shows_the_classes_and_label_names(pets, capsys):
    folder, _ = pets
    code, out, err = _cli(capsys, ["info", "--checkpoint", str(folder), "--format", "json"])
    assert code == 0, err
    report = json.loads(out)
    assert (report["num_classes"], report["label_names"], report["input_size"]) == (2, LABELS, [3, SIZE, SIZE])
    code, out, _ = _cli(capsys, ["info", "--checkpoint", str(folder)])
    assert "classes       2: cats, dogs" in out


def test_demo_checkpoint_is_labelled_random_and_runs_offline(tmp_path, capsys):
    from conftest import import_script

    out = tmp_path / "demo-model"
    assert import_script("make_demo_checkpoint").main([str(out), "--num-classes", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "random_demo"
    assert "RANDOM" in config["pretrained_cfg"]["description"]
    capsys.readouterr()
    code, stdout, err = _cli(capsys, ["predict", "--checkpoint", str(out), "--img-size", "64", "--format", "json"])
    assert code == 0, err
    probs = [t["prob"] for t in json.loads(stdout)[0]["topk"]]
    assert len(probs) == 3 and max(probs) < 0.99  # well-conditioned: logits of a few units, no saturation


def test_predict_several_batches_keeps_topk(pets, photos, capsys):
    folder, _ = pets
    argv = ["predict", str(photos), "--checkpoint", str(folder), "--batch-size", "1", "--workers", "0", "--topk", "1"]
    code, out, err = _cli(capsys, [*argv, "--format", "json"])
    assert code == 0, err
    assert [len(p["topk"]) for p in json.loads(out)] == [1, 1, 1]
