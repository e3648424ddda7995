"""int8 ONNX export (issue 16): ONNX Runtime's static quantization of the verified float export, the layers kept in
float, and a report (the one comparison against fp64, unjudged) that an independent run of the written file
reproduces."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from onnx import numpy_helper
from PIL import Image
from safetensors.torch import save_file
from torch.ops import aten
from torchvision.ops import SqueezeExcitation

import effnetv2
from effnetv2 import testing as calibrated_model
from effnetv2.cli import main
from effnetv2.export.formats import onnx_module_name
from effnetv2.export.onnx_int8 import WORK_PREFIX, export_onnx_int8
from effnetv2.inference import int8 as pt2e
from effnetv2.inference.calibration import HOLDOUT_EVERY
from effnetv2.inference.compare import relative_difference
from effnetv2.inference.int8_policy import KEPT_FLOAT_MODULES, KEPT_FLOAT_PARTS, describe_kept_float, is_kept_float
from effnetv2.weights.loading import load_state_dict_into


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """Well-conditioned tf_efficientnetv2_b0 (timm-made weights) and that checkpoint as a file."""
    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnetv2_b0")
    theirs = calibrated_model.condition(theirs, calibrated_model.smooth_images(8, 96, seed=1)).eval()
    ours = effnetv2.create_model("tf_efficientnetv2_b0")
    load_state_dict_into(ours, theirs.state_dict(), source="timm")
    path = tmp_path_factory.mktemp("b0") / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, path)
    return ours.eval(), path


def test_int8_file_is_quantized_where_said_and_reports_what_it_does(b0, tmp_path):
    model, _ = b0
    images = calibrated_model.smooth_images(16, 64, seed=7)
    report = export_onnx_int8(model, tmp_path / "q.onnx", images)
    assert report.calibration_images == 12 and report.check_images == 4
    # every weight the policy quantizes is stored in one byte instead of four (the parts kept float stay as they are)
    weighted = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    quantized = sum(m.weight.numel() for n, m in weighted if not is_kept_float(n))
    assert 0.9 * 3 * quantized < report.float_bytes - report.num_bytes < 3 * quantized
    assert report.comparison.limit is None and report.float_max_rel_diff > 0  # int8 unjudged; the float file verified

    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    int8_weights = [a for a in initializers.values() if a.dtype == np.int8 and a.ndim == 4]
    assert len(int8_weights) > 50  # the convolutions' weights are stored as int8

    def from_dequantize(name: str) -> bool:
        node = produced_by.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert not from_dequantize(convs[0].input[1]) and not from_dequantize(convs[-1].input[1])  # stem, last: float
    se = [c for c in convs if "/se/" in c.name]  # squeeze-excite's two 1x1 convs on the pooled vector, per block
    assert len(se) == 2 * sum(isinstance(m, SqueezeExcitation) for m in model.modules()) > 0
    assert not any(from_dequantize(c.input[1]) for c in se)  # squeeze-excite: float
    assert sum(from_dequantize(c.input[1]) for c in convs[1:-1]) == len(convs) - 2 - len(se)  # every other: int8
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert not from_dequantize(gemm.input[1])  # the classifier: float
    # SiLU and the SE gates compute in float: no Sigmoid output is quantized (its Mul reads it as float)
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    sigmoids = [n for n in graph.node if n.op_type == "Sigmoid"]
    assert sigmoids and not any(n.output[0] in quantized for n in sigmoids)

    # the report's numbers, again, computed here without the library's comparison: the written file run by
    # onnxruntime (one batch of 4; the export checked image by image) against a float64 copy of the model
    check = images[::HOLDOUT_EVERY]
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    ours = torch.from_numpy(session.run(None, {"input": check.numpy()})[0]).double()
    with torch.no_grad():
        fp64 = copy.deepcopy(model).double()(check.double())
    assert ours.shape == (4, 1000)  # a dynamic batch, by default
    assert report.top1_agreement == (ours.argmax(1) == fp64.argmax(1)).double().mean().item()
    error = ((ours - fp64).abs().max() / fp64.abs().max()).item()
    # onnxruntime batches differently here: the same error to within fp32 rounding of the int8 file's arithmetic
    assert report.max_rel_diff == pytest.approx(error, rel=1e-3) and error > 1e3 * report.comparison.eager_error
    assert relative_difference(ours, fp64) == pytest.approx(error, rel=1e-9)
    assert "top-1 as fp64" in report.summary() and "not judged" in report.summary()
    assert f"kept in float: {describe_kept_float()}" in report.summary()


def onnx_int8_weights(file) -> dict[str, bool]:
    """Each convolution's and the classifier's module in an ONNX file: whether its weight is int8 (read through a
    DequantizeLinear)."""
    graph = onnx.load(str(file)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    return {onnx_module_name(n.name): n.input[1] in dequantized for n in weighted}


def pt2e_int8_weights(int8: pt2e.Int8EfficientNetV2) -> dict[str, bool]:
    """The same for PT2E's quantized graph (module names of the inference copy)."""
    weighted = [n for n in int8.graph.graph.nodes if n.target in (aten.conv2d.default, aten.linear.default)]
    return {list(n.meta["nn_module_stack"].values())[-1][0]: n.args[1].op != "get_attr" for n in weighted}


def float_roles(weights: dict[str, bool]) -> set[str]:
    """The roles of the int8 policy whose modules hold a float convolution or linear layer."""
    return {p.role for p in KEPT_FLOAT_PARTS for name, int8 in weights.items() if is_kept_float(name, (p.modules,))}


def test_both_int8_paths_keep_the_one_policys_parts_in_float(b0, tmp_path):
    """ONNX int8 and PT2E read what stays float from one table: every role of it is float in both (the squeeze-excite
    convolutions too, iff the table keeps squeeze-excite), and the ONNX file quantizes every other convolution."""
    model, _ = b0
    images = calibrated_model.smooth_images(8, 64, seed=7)
    export_onnx_int8(model, tmp_path / "q.onnx", images)
    onnx_weights = onnx_int8_weights(tmp_path / "q.onnx")
    pt2e_weights = pt2e_int8_weights(pt2e.quantize_int8(model, images, compile=False))
    assert pt2e.KEPT_FLOAT == KEPT_FLOAT_MODULES  # PT2E's default is the table's
    assert float_roles(onnx_weights) == float_roles(pt2e_weights) == {p.role for p in KEPT_FLOAT_PARTS}
    assert "squeeze-excite" in float_roles(onnx_weights)
    assert {name: not int8 for name, int8 in onnx_weights.items()} == {n: is_kept_float(n) for n in onnx_weights}
    kept = [name for name in pt2e_weights if is_kept_float(name)]
    assert len(kept) > 2 * 10 and not any(pt2e_weights[name] for name in kept)  # PT2E: nothing kept is int8
    # and everything else is int8, the strided convs after TF padding included (a Conv2dSame once stayed float)
    assert {name: not int8 for name, int8 in pt2e_weights.items()} == {n: is_kept_float(n) for n in pt2e_weights}
    # the policy's parts as both paths name them: the model's modules, in the ONNX scopes and the inference copy
    se = {name.rsplit(".", 1)[0] for name in onnx_weights if name.rsplit(".", 2)[-2:-1] == ["se"]}
    assert se == {name for name, m in model.named_modules() if isinstance(m, SqueezeExcitation)}
    assert se == {name.rsplit(".", 1)[0] for name in kept if name.endswith((".se.reduce", ".se.expand"))}


def test_module_names_of_onnx_nodes_and_the_policy_patterns():
    assert onnx_module_name("/stages.3/stages.3.0/se/fc1/Conv") == "stages.3.0.se.fc1"
    assert onnx_module_name("/stem/stem.0/Conv") == "stem.0" and onnx_module_name("/classifier/Gemm") == "classifier"
    assert onnx_module_name("/Add") == ""
    assert is_kept_float("stages.3.0.se.fc1") and is_kept_float("head.0") and is_kept_float("stem")
    assert not is_kept_float("stages.3.0.project.0") and not is_kept_float("stages.3.0.sex") and not is_kept_float("")
    assert not is_kept_float("stages.3.0.se.fc1", ("stem", "head"))


def test_export_int8_command(b0, tmp_path, capsys):
    _, weights = b0
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(calibrated_model.smooth_images(10, 64, seed=3)):
        pixels = ((image * 0.25 + 0.5).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    (folder / "00-broken.png").write_bytes(b"not an image")
    out = tmp_path / "q.onnx"
    common = ["export", "--format", "onnx", "--model", "tf_efficientnetv2_b0", "--checkpoint", str(weights)]
    argv = [*common, "--output", str(out), "--img-size", "64", "--int8", "--calibration", str(folder), "--static"]
    assert main([*argv, "--calibration-images", "9"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "00-broken.png" in captured.err  # reported, and calibration went on
    assert "calibrated on 6 images" in captured.out and "int8 on 2 held-out images: error" in captured.out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]  # --static: batch 1, checked image by image
    assert "Number of" not in captured.out  # ONNX Runtime's calibration chatter goes to stderr

    for extra, message in (
        (["--int8"], "--int8 needs --calibration DIR"),
        (["--calibration", str(folder)], "--calibration is for --int8"),
        (["--calibration-images", "3"], "--calibration-images is for --int8"),
        (["--int8", "--calibration", str(folder), "--tolerance", "1e-3"], "--tolerance does not apply to --int8"),
        (["--int8", "--calibration", str(tmp_path / "none")], "no such file or folder"),
    ):
        assert main([*common, "--output", str(tmp_path / "x.onnx"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main([*common[:2], "torchscript", *common[3:], "--output", str(tmp_path / "x.pt"), "--int8"]) == 2
    assert "--int8 is for --format onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_a_killed_exports_work_folder_is_removed_by_the_next(b0, tmp_path):
    """A work folder whose process is gone (a killed export) goes at the next export into the folder; one of a live
    process stays."""
    model, _ = b0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{WORK_PREFIX}{int(dead.stdout)}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "float.onnx").write_bytes(b"partial")
    live = tmp_path / f"{WORK_PREFIX}{os.getppid()}-def456"
    live.mkdir()
    export_onnx_int8(model, tmp_path / "q.onnx", calibrated_model.smooth_images(4, 64, seed=7))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "q.onnx"])
