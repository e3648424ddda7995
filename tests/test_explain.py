"""Class activation maps (issue 15): effnetv2.explain is TorchCAM's CAM on the equivalent timm layer, and
`effnetv2 explain` draws it as a person would look at it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from conftest import assert_close
from PIL import Image
from safetensors import safe_open
from torchcam import methods as torchcam_methods
from torchcam.methods import GradCAM, GradCAMpp

import effnetv2
from effnetv2 import cam  # a submodule, not one of the names effnetv2 loads on first use
from effnetv2 import testing as calibrated_model
from effnetv2.cli import main
from effnetv2.data import sample_image_path
from effnetv2.pictures.explanation import explanation_size
from effnetv2.weights.loading import load_state_dict_into


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnetv2_b0")
    theirs = calibrated_model.condition(theirs, calibrated_model.smooth_images(8, 96, seed=1)).eval()
    ours = effnetv2.create_model("tf_efficientnetv2_b0")
    load_state_dict_into(ours, theirs.state_dict(), source="timm")
    return ours.eval(), theirs


@pytest.mark.parametrize(
    "method, torchcam_method, layer, timm_layer",
    [("gradcam", GradCAM, None, "bn2"), ("gradcam++", GradCAMpp, 3, "blocks.4")],
)
def test_maps_are_torchcams_on_the_equivalent_timm_layer(pair, method, torchcam_method, layer, timm_layer):
    ours, theirs = pair
    x = calibrated_model.smooth_images(2, 96, seed=5)
    result = effnetv2.explain(ours, x, topk=2, method=method, layer=layer)
    assert result.maps.shape == (2, 2, *(torch.Size([3, 3]) if layer is None else torch.Size([6, 6])))
    with torch.no_grad():
        probs = theirs(x).softmax(1)
    top2 = probs.topk(2, dim=1)
    assert torch.equal(result.classes, top2.indices)
    assert_close(result.probs, top2.values)  # the fp32 parity contract with timm
    extractor = torchcam_method(theirs, target_layer=timm_layer)
    scores = theirs(x)
    for k in range(2):
        expected = extractor(top2.indices[:, k].tolist(), scores, retain_graph=True)[0]
        assert_close(result.maps[:, k], expected)
    extractor.remove_hooks()
    assert result.maps.amin() >= 0 and result.maps.amax() <= 1
    assert (result.maps[:, 0] - result.maps[:, 1]).abs().max() > 0.1  # two classes, two different maps
    one = effnetv2.explain(ours, x[:1], classes=7)
    assert one.classes.tolist() == [[7]] and not ours.training


def test_explain_command_draws_pngs_with_the_inputs_aspect_ratio(checkpoint, tmp_path, capsys):
    with Image.open(sample_image_path()) as img:
        img.crop((0, 0, 300, 200)).save(tmp_path / "wide.png")
        img.crop((0, 0, 150, 240)).save(tmp_path / "tall.jpg")
    out = tmp_path / "cams"
    common = ["--checkpoint", str(checkpoint), "--img-size", "64", "-o", str(out)]
    assert main(["explain", str(tmp_path / "wide.png"), str(tmp_path / "tall.jpg"), *common, "--save-maps"]) == 0
    # each input as the network saw it (shorter side 64, aspect ratio kept), one panel, a colour bar and a title
    for name, shown in (("wide.png", (96, 64)), ("tall.png", (64, 102))):
        with Image.open(out / name) as picture:
            pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
            assert picture.size == explanation_size(*shown, 1, title=True) and pixels.std() > 20  # not blank
    with safe_open(str(out / "maps.safetensors"), framework="pt") as f:
        maps = [f.get_tensor(k) for k in sorted(f.keys())]
        images = json.loads(f.metadata()["images"])
    assert [m.shape[0] for m in maps] == [1, 1] and all(m.min() >= 0 and m.max() <= 1 for m in maps)
    assert [r["png"] for r in images] == ["wide.png", "tall.png"]

    # --class by label, and --topk: one panel per class, side by side
    label = effnetv2.data.imagenet_class_names()[images[0]["classes"][0]]
    assert main(["explain", str(tmp_path / "wide.png"), *common, "--class", label.upper()]) == 0  # replaces
    argv = ["explain", str(tmp_path / "wide.png"), *common[:-1], str(tmp_path / "top3"), "--topk", "3"]
    assert main([*argv, "--method", "layercam"]) == 0
    with Image.open(out / "wide.png") as one, Image.open(tmp_path / "top3" / "wide.png") as three:
        assert three.size == explanation_size(96, 64, 3, title=True) != one.size
    capsys.readouterr()
    for argv, message in (
        (["--class", "no such thing"], "not one of the model's labels"),
        (["--layer", "9"], "--layer: feature level 9 out of range"),
    ):
        assert main(["explain", str(tmp_path / "wide.png"), *common, *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def b0_folder(tmp_path_factory):
    """A 4-class tf_efficientnetv2_b0 saved by save_pretrained: small enough for every method, Score-CAM included."""
    torch.manual_seed(0)
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=4)
    return effnetv2.save_pretrained(model, tmp_path_factory.mktemp("cam") / "b0")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "wide.png"
    with Image.open(sample_image_path()) as img:
        img.crop((0, 0, 300, 200)).save(path)
    return path


@pytest.mark.parametrize("method", sorted(cam.METHODS))
def test_every_offered_method_runs_end_to_end(b0_folder, photo, tmp_path, capsys, method):
    """Each --method the command offers works with the installed TorchCAM (Score-CAM failed with 0.5's signature):
    two panels for --topk 2, raw maps in [0, 1] at level 1's resolution, equal to TorchCAM's own class on that layer."""
    out = tmp_path / "cams"
    argv = ["explain", str(photo), "--model", f"local-dir:{b0_folder}", "--img-size", "64", "-o", str(out)]
    assert main([*argv, "--method", method, "--layer", "1", "--topk", "2", "--save-maps"]) == 0, capsys.readouterr()
    with Image.open(out / "wide.png") as picture:
        assert picture.size == explanation_size(96, 64, 2, title=True)
    with safe_open(str(out / "maps.safetensors"), framework="pt") as f:
        maps = f.get_tensor("maps.0")
    assert maps.shape == (2, 16, 24) and maps.min() >= 0 and maps.max() <= 1

    model = effnetv2.create_model(f"local-dir:{b0_folder}", pretrained=True).eval()
    x = calibrated_model.smooth_images(1, 64, seed=3)
    torch.manual_seed(0)  # Smooth Grad-CAM++ draws noise
    result = effnetv2.explain(model, x, topk=2, method=method, layer=1)
    torch.manual_seed(0)
    extractor = getattr(torchcam_methods, cam.METHODS[method])(
        model, target_layer=model.feature_info[1]["module"], input_shape=(3, 64, 64)
    )
    try:
        with torch.enable_grad():
            scores = model(x)
            keep = {} if method == "scorecam" else {"retain_graph": True}  # Score-CAM takes no such argument
            expected = [extractor(result.classes[:, k].tolist(), scores, **keep)[0] for k in range(2)]
    finally:
        extractor.remove_hooks()
    assert_close(result.maps, torch.stack(expected, dim=1).detach())


def test_topk_beyond_the_classes_and_no_image_leave_no_folder(b0_folder, photo, tmp_path, capsys):
    common = ["--model", f"local-dir:{b0_folder}", "--img-size", "64"]
    out = tmp_path / "cams"
    assert main(["explain", str(photo), *common, "-o", str(out), "--topk", "5000"]) == 2
    assert capsys.readouterr().err == "effnetv2: error: --topk 5000 is more than the model's 4 classes\n"
    (tmp_path / "notes.png").write_text("not a picture")
    assert main(["explain", str(tmp_path / "notes.png"), *common, "-o", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"effnetv2: skipped {tmp_path / 'notes.png'}: not an image, or in a format Pillow cannot read",
        "effnetv2: no image could be read",
    ]
    assert not out.exists()  # neither run left an empty folder
    model = effnetv2.create_model(f"local-dir:{b0_folder}", pretrained=True)
    with pytest.raises(ValueError, match="topk=5: the model has 4 classes; ask for 1 to 4"):
        effnetv2.explain(model, torch.zeros(1, 3, 64, 64), topk=5)
