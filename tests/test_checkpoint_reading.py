"""Reading checkpoints: ``load_checkpoint`` and ``create_model(checkpoint_path=)`` read what timm and training
runs write, are strict as timm's ``load_state_dict`` unless adaptation is asked for, and refuse a file that is not
the model's weights (another kind of number, NaN, text, truncated, random bytes, a pickle that would run code,
another architecture), naming the file, running nothing and leaving the model unchanged."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import timm
import torch
from conftest import ARCH, assert_close, image_batch
from safetensors.torch import save_file

import effnetv2
from effnetv2.weights.loading import adapt_stem_weight


@pytest.fixture(scope="module")
def target():
    """A 1000-class model the tests load into; each test checks it is left unchanged by a refused load."""
    torch.manual_seed(0)
    return effnetv2.create_model(ARCH).eval()


@pytest.fixture(scope="module")
def weights():
    """Another model's weights (effnetv2 keys), different from ``target``'s."""
    torch.manual_seed(1)
    return {k: v.clone() for k, v in effnetv2.create_model(ARCH).state_dict().items()}


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snapshot):
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, snapshot[k])]
    assert changed == []


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


# --- Formats: timm's files, our own, a training run's; what loads is what was saved -----------------------------------


def test_pytorch_bin_and_our_format_load_identically(model, hub_folder, tmp_path):
    from_bin = effnetv2.create_model(ARCH, checkpoint_path=hub_folder / "pytorch_model.bin").eval()
    ours_file = tmp_path / "ours.safetensors"
    save_file(model.state_dict(), ours_file)
    from_ours = effnetv2.create_model(ARCH)
    effnetv2.load_checkpoint(from_ours, ours_file)
    bin_state, ours_state = from_bin.state_dict(), from_ours.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(bin_state[name], value)
        assert torch.equal(ours_state[name], value)


def test_training_checkpoint_wrappers_and_ddp_prefix(timm_model, model, tmp_path):
    path = tmp_path / "train.pth"
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in timm_model.state_dict().items()}}
    torch.save(wrapped, path)
    loaded = effnetv2.create_model(ARCH, checkpoint_path=path).eval()
    x = image_batch(1, 64, 64)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


def test_missing_num_batches_tracked_is_tolerated_when_strict(timm_model, model, weights, tmp_path):
    """Checkpoints of older PyTorch versions have no BatchNorm counters: load_checkpoint and create_model take them."""
    state = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    loaded = effnetv2.create_model(ARCH)
    effnetv2.load_checkpoint(loaded, _save(state, tmp_path / "no_counters.safetensors"))
    assert torch.equal(loaded.head[1].running_var, weights["head.1.running_var"])
    timm_state = {k: v for k, v in timm_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = effnetv2.create_model(ARCH, checkpoint_path=_save(timm_state, tmp_path / "timm.safetensors")).eval()
    x = image_batch(1, 64, 64)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


# --- Strict as timm's load_state_dict; adaptation is explicit (create_model opts in) ----------------------------------


def test_load_checkpoint_refuses_a_classifier_of_another_size_unless_adapt(weights, tmp_path):
    path = _save(weights, tmp_path / "full.safetensors")
    ten = effnetv2.create_model(ARCH, num_classes=10)
    before = _snapshot(ten)
    with pytest.raises(effnetv2.CheckpointError) as info, warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "classifier not loaded" warning
        effnetv2.load_checkpoint(ten, path)
    message = str(info.value)
    assert "classifier.weight: checkpoint (1000, 2152) vs model (10, 2152)" in message
    assert "adapt=True" in message
    _assert_unchanged(ten, before)
    with pytest.warns(UserWarning, match="classifier not loaded"):
        effnetv2.load_checkpoint(ten, path, adapt=True)
    assert torch.equal(ten.classifier.weight, before["classifier.weight"])  # its own classifier is kept
    assert torch.equal(ten.stem[0].weight, weights["stem.0.weight"])


def test_load_checkpoint_refuses_a_3_channel_stem_for_in_chans_1_unless_adapt(weights, tmp_path):
    path = _save(weights, tmp_path / "full.safetensors")
    gray = effnetv2.create_model(ARCH, in_chans=1)
    before = _snapshot(gray)
    with pytest.raises(effnetv2.CheckpointError, match=r"stem.0.weight: checkpoint \(32, 3, 3, 3\) vs model"):
        effnetv2.load_checkpoint(gray, path)
    _assert_unchanged(gray, before)
    effnetv2.load_checkpoint(gray, path, adapt=True)
    assert torch.equal(gray.stem[0].weight, weights["stem.0.weight"].sum(dim=1, keepdim=True))
    # create_model's checkpoint_path is the pretrained-style path: it adapts.
    made = effnetv2.create_model(ARCH, in_chans=1, checkpoint_path=path)
    assert torch.equal(made.stem[0].weight, gray.stem[0].weight)


def test_num_classes_0_model_refuses_a_classifier_unless_adapt(weights, tmp_path):
    path = _save(weights, tmp_path / "full.safetensors")
    embedder = effnetv2.create_model(ARCH, num_classes=0)
    with pytest.raises(
        effnetv2.CheckpointError, match=r"2 unexpected keys: classifier\.(weight|bias), classifier\.(bias|weight)"
    ):
        effnetv2.load_checkpoint(embedder, path)
    effnetv2.load_checkpoint(embedder, path, adapt=True)
    assert torch.equal(embedder.head[0].weight, weights["head.0.weight"])


def test_features_model_ignores_the_head_even_when_strict(weights, tmp_path):
    path = _save(weights, tmp_path / "full.safetensors")
    features = effnetv2.create_model(ARCH, features_only=True)
    effnetv2.load_checkpoint(features, path)  # strict, and no error: the head is the part it does not have
    assert torch.equal(features.stages[5][0].project[0].weight, weights["stages.5.0.project.0.weight"])
    # ... but a mis-shaped trunk key is still refused.
    state = dict(weights)
    state["stages.1.0.expand.0.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(effnetv2.CheckpointError, match=r"stages.1.0.expand.0.weight: checkpoint \(1, 1, 3, 3\)"):
        effnetv2.load_checkpoint(features, _save(state, tmp_path / "bad.safetensors"))


def test_stem_adaptation_rules():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert torch.equal(adapt_stem_weight(w, 1), w.sum(dim=1, keepdim=True))
    four = adapt_stem_weight(w, 4)
    assert torch.equal(four, torch.cat([w, w[:, :1]], dim=1) * 0.75)
    assert adapt_stem_weight(w.half(), 5).dtype == torch.float16


def test_classifier_of_other_size_is_skipped_with_warning(checkpoint, model):
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match=r"classifier not loaded.*\(1000, 2152\).*\(10, 2152\)"):
        m = effnetv2.create_model(ARCH, num_classes=10, checkpoint_path=checkpoint)
    torch.manual_seed(5)
    fresh = effnetv2.create_model(ARCH, num_classes=10)
    assert torch.equal(m.classifier.weight, fresh.classifier.weight)  # the fresh initialisation is kept
    assert torch.equal(m.stem[0].weight, model.stem[0].weight)  # the rest did load


def test_strict_false_tolerates_missing_keys(timm_model, model, tmp_path):
    state = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "headless.safetensors"
    save_file(state, path)
    loaded = copy.deepcopy(model)
    with torch.no_grad():
        loaded.classifier.weight.zero_()
    with pytest.raises(effnetv2.CheckpointError, match="2 missing keys: classifier.weight, classifier.bias"):
        effnetv2.load_checkpoint(loaded, path)
    effnetv2.load_checkpoint(loaded, path, strict=False)
    assert torch.equal(loaded.stem[0].weight, model.stem[0].weight)
    assert loaded.classifier.weight.abs().max() == 0


def test_mis_shaped_and_missing_keys_raise_and_leave_model_unchanged(timm_model, target, tmp_path):
    state = dict(timm_model.state_dict())
    state["blocks.3.0.conv_pw.weight"] = torch.zeros(10, 80, 1, 1)
    del state["blocks.5.23.bn3.bias"]
    state["blocks.9.0.conv.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    before = _snapshot(target)
    with pytest.raises(effnetv2.CheckpointError) as info:
        effnetv2.load_checkpoint(target, path)
    message = str(info.value)
    assert "stages.3.0.expand.0.weight: checkpoint (10, 80, 1, 1) vs model (320, 80, 1, 1)" in message
    assert "stages.5.23.project.1.bias" in message  # missing
    assert "blocks.9.0.conv.weight" in message  # unexpected
    assert str(path) in message
    assert isinstance(info.value, RuntimeError)  # what torch's load_state_dict raises
    _assert_unchanged(target, before)


def other_architecture(name):
    torch.manual_seed(0)
    return timm.create_model(name).state_dict()


@pytest.mark.parametrize(
    "arch, expected",
    [
        (
            "efficientnetv2_rw_s",
            r"(?s)missing keys: stages\.0\.2\..*shape mismatches: stages\.0\.0\.expand\.1\.bias: "
            r"checkpoint \(24,\) vs model \(32,\)",
        ),
        ("resnet18", r"(?s)missing keys: stem\.0\.weight.*unexpected keys: .*layer1\.0\."),
    ],
)
def test_another_architecture_is_refused_and_leaves_the_model_unchanged(target, tmp_path, arch, expected):
    path = tmp_path / f"{arch}.safetensors"
    save_file(other_architecture(arch), path)
    before = _snapshot(target)
    with pytest.raises(effnetv2.CheckpointError, match=expected) as err, warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "classifier not loaded" warning for a refused checkpoint
        effnetv2.load_checkpoint(target, path)
    assert str(path) in str(err.value)
    _assert_unchanged(target, before)


# --- Tensors of another kind of number, NaN and Inf -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_integer_tensor_for_a_float_parameter_is_refused(target, weights, tmp_path, suffix):
    state = dict(weights)
    state["stem.0.weight"] = weights["stem.0.weight"].view(torch.int32)  # same bytes, same file size
    state["stages.4.3.se.fc1.bias"] = weights["stages.4.3.se.fc1.bias"].to(torch.int64)
    path = _save(state, tmp_path / f"ints{suffix}")
    before = _snapshot(target)
    with pytest.raises(effnetv2.CheckpointError) as info:
        effnetv2.load_checkpoint(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "2 dtype mismatches" in message
    assert "stem.0.weight: checkpoint torch.int32 vs model torch.float32" in message
    assert "stages.4.3.se.fc1.bias: checkpoint torch.int64 vs model torch.float32" in message
    assert "num_batches_tracked" not in message  # integer buffers stay integers
    _assert_unchanged(target, before)


def test_float_checkpoint_of_another_precision_still_loads(weights, tmp_path):
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    model = effnetv2.create_model(ARCH)
    effnetv2.load_checkpoint(model, _save(half, tmp_path / "half.safetensors"))
    assert model.stem[0].weight.dtype == torch.float32
    assert torch.equal(model.stem[0].weight, weights["stem.0.weight"].half().float())


def test_nan_and_inf_weights_are_refused(target, weights, tmp_path):
    state = dict(weights)
    state["stages.4.3.project.0.weight"] = weights["stages.4.3.project.0.weight"].clone()
    state["stages.4.3.project.0.weight"][0, 0, 0, 0] = float("nan")
    state["head.1.running_var"] = weights["head.1.running_var"].clone()
    state["head.1.running_var"][7] = float("inf")
    path = _save(state, tmp_path / "nan.safetensors")
    before = _snapshot(target)
    with pytest.raises(effnetv2.CheckpointError, match="NaN or Inf") as info:
        effnetv2.load_checkpoint(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "2 keys: stages.4.3.project.0.weight, head.1.running_var" in message
    _assert_unchanged(target, before)


# --- Files that are not checkpoints say what they are, and run nothing ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"hello world\nnot weights\n", r"is a text file, not a checkpoint \(it starts with 'hello world'\)"),
        (b'{"epoch": 3}\n', r"is a text file, not a checkpoint \(it starts with '\{\"epoch\": 3\}'\)"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 212000000\n",
            r"is a text file, not a checkpoint: a Git LFS pointer \(fetch the real file with `git lfs pull`\)",
        ),
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "an HTML page"),
        (b"", r"is empty \(0 bytes\)"),
    ],
)
@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_text_and_empty_files_are_named_as_such(target, tmp_path, content, expected, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(content)
    with pytest.raises(effnetv2.CheckpointError, match=expected) as info:
        effnetv2.load_checkpoint(target, path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_folder_is_not_reported_as_missing(target, tmp_path):
    empty = tmp_path / "run.pth"
    empty.mkdir()
    with pytest.raises(effnetv2.CheckpointError, match="is a folder, not a checkpoint file") as info:
        effnetv2.load_checkpoint(target, empty)
    assert f"local-dir:{empty}" in str(info.value)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "model.safetensors").write_bytes(b"")
    with pytest.raises(effnetv2.CheckpointError, match="pass the file inside it") as info:
        effnetv2.load_checkpoint(target, saved)
    assert str(saved / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_file(model, hub_folder, tmp_path, name):
    data = (hub_folder / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(effnetv2.CheckpointError, match="truncated") as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_random_bytes(model, tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).byte().numpy().tobytes()
    )
    with pytest.raises(effnetv2.CheckpointError, match="not a checkpoint file") as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)


class WritesMarker:
    """Unpickling this calls ``exec``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(model, tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"classifier.weight": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(dict(payload, **{"classifier.bias": torch.zeros(1000)}), path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(
        effnetv2.CheckpointError, match=r"refused to unpickle.*'exec'.*Nothing from it was executed"
    ) as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # The payload is live: an unsafe load runs it.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.read_text() == "pwned"


def test_a_missing_file_is_file_not_found(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pth")):
        effnetv2.load_checkpoint(model, tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        effnetv2.create_model(ARCH, checkpoint_path=tmp_path / "nope.safetensors")
