"""Reading checkpoints and model inputs: refuse or fix, never guess (issue 11, items 10-13)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import effnetv2

ARCH = "efficientnetv2_rw_m"


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


# Item 10: tensors of the wrong kind of number, NaN and Inf.


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


# Item 11: files that are not checkpoints say what they are.


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
    with pytest.raises(FileNotFoundError):  # a missing file is still FileNotFoundError
        effnetv2.load_checkpoint(target, tmp_path / "nope.pth")


# Item 12: load_checkpoint is strict as timm's; adaptation is explicit (create_model opts in).


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


def test_missing_num_batches_tracked_is_tolerated_when_strict(weights, tmp_path):
    state = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    model = effnetv2.create_model(ARCH)
    effnetv2.load_checkpoint(model, _save(state, tmp_path / "no_counters.safetensors"))
    assert torch.equal(model.head[1].running_var, weights["head.1.running_var"])


# Item 13: model inputs.


@pytest.fixture(scope="module")
def tiny_inputs():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_batch_of_another_float_dtype_says_what_to_do(target, tiny_inputs, dtype):
    expected = (
        rf"expected a float32 batch \(the model's dtype\); got {dtype}: convert with x.float\(\) or use torch.autocast"
    )
    with pytest.raises(TypeError, match=expected):
        target(tiny_inputs.to(dtype))
    with pytest.raises(TypeError, match=expected):
        target.forward_intermediates(tiny_inputs.to(dtype))


def test_a_float64_model_names_its_own_dtype(tiny_inputs):
    model = effnetv2.create_model(ARCH, features_only=True, out_indices=(0,)).double().eval()
    with pytest.raises(
        TypeError, match=r"expected a float64 batch .* got torch.float32: convert with x.to\(torch.float64\)"
    ):
        model(tiny_inputs)
    with torch.no_grad():
        assert model(tiny_inputs.double())[0].dtype == torch.float64


def test_autocast_still_accepts_other_dtypes(target, tiny_inputs):
    with torch.no_grad():
        reference = target(tiny_inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out32 = target(tiny_inputs)  # the CLI's --amp bf16: float32 model, float32 inputs
            out16 = target(tiny_inputs.bfloat16())
    assert out32.dtype == out16.dtype == torch.bfloat16
    assert torch.equal(out32, out16)  # the first conv sees the same bfloat16 input either way
    assert bool(torch.isfinite(out32).all()) and reference.shape == out32.shape


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda x: x.tolist(), "list"),
        (lambda x: x.numpy(), "numpy.ndarray"),
        (lambda x: [x[0]], "list"),
        (lambda x: (x,), "tuple"),
    ],
)
def test_a_non_tensor_batch_says_what_to_pass(target, tiny_inputs, make, name):
    expected = rf"expected a torch.Tensor of shape \(B, C, H, W\); got {name}: use torch.as_tensor / torch.stack"
    with pytest.raises(TypeError, match=expected):
        target(make(tiny_inputs))


def test_a_numpy_array_message_is_not_an_attribute_error(target):
    with pytest.raises(TypeError) as info:
        target(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert not isinstance(info.value, AttributeError)


@pytest.mark.parametrize(
    ("out_indices", "expected"),
    [
        ("01", r"out_indices must be an int .* or a sequence of ints .*got str '01'"),
        (2.0, r"out_indices must be an int .*got float 2.0"),
        (["0", "1"], r"out_indices must hold ints .*got str '0', str '1'"),
        ((1, 2.5), r"out_indices must hold ints .*got float 2.5"),
        (True, r"out_indices must be an int .*got bool True"),
    ],
)
def test_out_indices_of_the_wrong_type(out_indices, expected):
    with pytest.raises(TypeError, match=expected):
        effnetv2.create_model(ARCH, features_only=True, out_indices=out_indices)


def test_out_indices_accepts_numpy_ints():
    f = effnetv2.create_model(ARCH, features_only=True, out_indices=[np.int64(1), 3])
    assert f.feature_info.out_indices == (1, 3)


def test_unknown_pretrained_cfg_overlay_keys_warn():
    with pytest.warns(UserWarning, match=r"does not know .*'fiel' \(did you mean 'file'\?\), 'zoom'") as record:
        model = effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(fiel="x.safetensors", zoom=2, crop_pct=0.9))
    assert len(record) == 1
    assert model.pretrained_cfg["crop_pct"] == 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known keys: no warning
        effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(hf_hub_revision="abc", test_crop_pct=1.0, notes=()))
    with pytest.warns(UserWarning, match=r"pretrained_cfg_overlay\['state_dict'\] is not supported"):
        effnetv2.create_model(ARCH, pretrained_cfg_overlay=dict(state_dict={}))
