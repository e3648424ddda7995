"""``effnetv2 export`` / ``effnetv2.export_model``: every format, classifier and features, verified; bad cases.

Six shared exports cover 3 formats x classifier / features_only at 64 px: the full rw_m through the CLI for two,
a 12-block variant (same blocks, widths and outputs) through the Python API for the rest, to keep time down.
Behaviour that doesn't need the real network (failures, static shapes, the report) is tested on a tiny module.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_batch
from torch import nn

import effnetv2
from effnetv2.cli import main
from effnetv2.export import export_model
from effnetv2.inference.compare import compare, natural_images, reference
from effnetv2.model import EfficientNetV2, EfficientNetV2Features
from effnetv2.spec import EFFICIENTNETV2_RW_M

ARCH = "efficientnetv2_rw_m"
IMG = 64
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str]) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["export", *argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return Run(code, out.getvalue(), err.getvalue())


def reported_checks(stdout: str) -> dict[tuple[int, ...], tuple[float, float, float]]:
    """The per-input lines of the printed report: {input shape: (error, eager model's error, limit)}."""
    pattern = r"input \(([\d, ]+)\): error (\S+) from fp64 \(eager float32: (\S+); limit (\S+)\)"
    return {
        tuple(int(d) for d in shape.split(",")): (float(err), float(eager), float(limit))
        for shape, err, eager, limit in re.findall(pattern, stdout)
    }


def within_limit(checks: dict[tuple[int, ...], tuple[float, float, float]]) -> bool:
    """Each check's error within 4x the eager model's (the printed values) plus 4 float32 roundoffs, recomputed here
    from the rule rather than read from the report; rounding of the printed digits allowed for."""
    return all(err <= 1.01 * (4 * eager + 4 * 2.0**-24) and limit > 0 for err, eager, limit in checks.values())


# The same blocks, widths and outputs as rw_m with at most 2 blocks per stage (12, not 60): exports 5x faster.
SHORT_SPEC = replace(
    EFFICIENTNETV2_RW_M, stages=tuple(replace(s, repeats=min(s.repeats, 2)) for s in EFFICIENTNETV2_RW_M.stages)
)


def shortened(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` (a SHORT_SPEC network) with the oracle's weights of the blocks it keeps.

    Leaving out blocks whose residual branches have small gains perturbs the well-conditioned oracle only mildly.
    """
    model.load_state_dict({k: weights[k] for k in model.state_dict()})
    return model.eval()


@pytest.fixture(scope="module")
def eager(model, checkpoint):
    """The eager models the exports are compared with: the shared well-conditioned oracle (rw_m, also as the
    --checkpoint file and in the hub cache) and the 12-block networks with its weights."""
    weights = model.state_dict()
    return {
        "conditioned": model,
        "conditioned-file": checkpoint,
        "short": shortened(EfficientNetV2(SHORT_SPEC), weights),
        "short-features": shortened(EfficientNetV2Features(SHORT_SPEC), weights),
    }


# Every (format, kind) pair, with the options spread over them so each flag is exercised once. The full rw_m goes
# through the CLI for ONNX and TorchScript; the rest through the Python API on SHORT_SPEC, to keep time down
# (torch.export's save and load of the full graph alone take ~25 s; test_inputs.py exports the full model).
CLI_EXPORTS = {
    ("onnx", "classifier"): ["--checkpoint", "{conditioned}", "--dynamic-size"],
    # --model's default: the pretrained weights, from the offline hub cache (the shared oracle).
    ("torchscript", "features"): ["--features-only"],
}
API_EXPORTS = {
    ("onnx", "features"): ("short-features", {"opset": 13}),
    ("torchscript", "classifier"): ("short", {}),
    ("exported-program", "classifier"): ("short", {}),
    ("exported-program", "features"): ("short-features", {}),  # dynamic size: test_exported_program_dynamic_size
}
EXPORTS = sorted([*CLI_EXPORTS, *API_EXPORTS])


@dataclass
class Exported:
    path: Path
    run: Run  # for API exports: code 0 and the report's summary as stdout
    reference: str  # the key in `eager` of the model it must match


@pytest.fixture(scope="module")
def exports(tmp_path_factory, eager, hf_cache):
    """Makes the (format, kind) export on first request."""
    folder = tmp_path_factory.mktemp("exports")
    done: dict[tuple[str, str], Exported] = {}

    def get(fmt: str, kind: str) -> Exported:
        if (fmt, kind) in done:
            return done[fmt, kind]
        output = folder / f"{kind}{SUFFIX[fmt]}"
        if (fmt, kind) in CLI_EXPORTS:
            options = [o.format(conditioned=eager["conditioned-file"]) for o in CLI_EXPORTS[fmt, kind]]
            run = run_cli(["--format", fmt, "--output", str(output), "--img-size", str(IMG), *options])
            reference = "conditioned" if "--checkpoint" in options else "hub"
        else:
            reference, kwargs = API_EXPORTS[fmt, kind]
            report = export_model(eager[reference], output, fmt, img_size=IMG, **kwargs)
            run = Run(0, report.summary(), "")
        done[fmt, kind] = Exported(output, run, reference)
        return done[fmt, kind]

    return get


def expected_shapes(dynamic_size: bool = False) -> set[tuple[int, ...]]:
    shapes = {(1, 3, IMG, IMG), (3, 3, IMG, IMG)}
    return shapes | {(1, 3, IMG + 32, IMG + 64)} if dynamic_size else shapes


FP64_COPIES: dict[int, nn.Module] = {}


def compare_outputs(actual: Sequence[torch.Tensor], model: nn.Module, x: torch.Tensor) -> None:
    """The file's outputs on ``x`` judged by the one comparison: against an fp64 copy, next to the eager model."""
    actual = [torch.as_tensor(a) for a in actual]
    if id(model) not in FP64_COPIES:  # float64 runs ~7x slower than float32: copy once per model
        FP64_COPIES[id(model)] = copy.deepcopy(model).double()
    comparison = compare(actual, reference(model, x, fp64_model=FP64_COPIES[id(model)]))
    assert comparison.accepted, comparison.describe()


@pytest.mark.parametrize(("fmt", "kind"), EXPORTS)
def test_export_is_verified_at_batch_1_and_3(exports, fmt, kind):
    exported = exports(fmt, kind)
    run = exported.run
    assert run.code == 0, run.stderr
    assert exported.path.is_file()
    assert [p.name for p in exported.path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file
    checks = reported_checks(run.stdout)
    assert set(checks) == expected_shapes("--dynamic-size" in CLI_EXPORTS.get((fmt, kind), []))
    assert within_limit(checks), run.stdout
    assert "verified against fp64 on natural images: every check within 4x the eager model's own error" in run.stdout
    names = "'features.0', 'features.1', 'features.2', 'features.3', 'features.4'" if kind == "features" else "'output'"
    assert f"-> outputs {names}" in run.stdout


@pytest.mark.parametrize("kind", ["classifier", "features"])
def test_onnx_file_has_named_dynamic_axes_and_matches_in_onnxruntime(exports, eager, kind):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    exported = exports("onnx", kind)
    assert exported.run.code == 0, exported.run.stderr
    output = exported.path
    proto = onnx.load(str(output), load_external_data=False)
    assert {o.domain: o.version for o in proto.opset_import}[""] == (17 if kind == "classifier" else 13)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    spatial = ["height", "width"] if kind == "classifier" else [IMG, IMG]  # classifier: --dynamic-size
    assert (inp.name, inp.shape) == ("input", ["batch", 3, *spatial])
    names = [f"features.{i}" for i in range(5)] if kind == "features" else ["output"]
    assert [o.name for o in session.get_outputs()] == names
    assert all(o.shape[0] == "batch" for o in session.get_outputs())
    for batch, seed in ((1, 10), (3, 11)):
        x = image_batch(batch, IMG, IMG, seed=seed)
        compare_outputs(session.run(None, {"input": x.numpy()}), eager[exported.reference], x)


# --- bad cases: a clear one-line error, exit status 2, nothing written ---------------------------------------------


def test_unknown_format_is_a_usage_error(tmp_path):
    run = run_cli(["--format", "tflite", "--output", str(tmp_path / "m.tflite")])
    assert run.code == 2
    assert "argument --format: invalid choice: 'tflite'" in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", ["5", "99"])
def test_unsupported_opset(tmp_path, opset):
    run = run_cli(["--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--opset", opset])
    assert run.code == 2
    assert f"effnetv2: error: ONNX opset {opset} is not supported: choose 7–20 (default 17)" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_opset_needs_onnx_format(tmp_path):
    run = run_cli(["--format", "torchscript", "--output", str(tmp_path / "m.pt"), "--opset", "17"])
    assert run.code == 2
    assert "opset applies to format='onnx' only" in run.stderr


def test_the_formats_table_lists_onnx_int8_made_from_a_verified_onnx_file(tmp_path):
    """int8 ONNX is a row of the one table (made from the onnx row's verified file, run by the same loader); the
    formats export_model traces and verifies are the rest, with the suffixes their files take."""
    from effnetv2.export import EXPORT_FORMATS, FORMATS, check_export_options
    from effnetv2.export.onnx_int8 import FORMAT

    assert list(EXPORT_FORMATS) == [*SUFFIX, "onnx-int8"] and FORMAT == "onnx-int8"
    assert tuple(SUFFIX) == FORMATS and {f: EXPORT_FORMATS[f].suffix for f in FORMATS} == SUFFIX
    int8 = EXPORT_FORMATS["onnx-int8"]
    assert int8.source == "onnx" and int8.load is EXPORT_FORMATS["onnx"].load and int8.onnx
    assert check_export_options(tmp_path / "q.onnx", "onnx-int8", 13) == tmp_path / "q.onnx"  # an ONNX opset
    with pytest.raises(ValueError, match=r"made from a verified onnx export .* use effnetv2.export.export_onnx_int8"):
        export_model(Tiny(), tmp_path / "q.onnx", "onnx-int8", img_size=16)
    with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of onnx, .*, onnx-int8"):
        check_export_options(tmp_path / "m.tflite", "tflite")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_paths(tmp_path):
    run = run_cli(["--format", "onnx", "--output", str(tmp_path / "missing" / "m.onnx")])
    assert run.code == 2
    assert f"output folder '{tmp_path / 'missing'}' does not exist; create it first" in run.stderr
    assert list(tmp_path.iterdir()) == []

    run = run_cli(["--format", "onnx", "--output", str(tmp_path)])
    assert run.code == 2
    assert f"output '{tmp_path}' is a directory" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_optimize_exports_the_folded_model_verified_against_the_original(tmp_path, eager):
    output = tmp_path / "folded.pt"
    run = run_cli(
        [
            "--format",
            "torchscript",
            "--output",
            str(output),
            "--checkpoint",
            str(eager["conditioned-file"]),
            "--img-size",
            str(IMG),
            "--optimize",
        ]
    )
    assert run.code == 0, run.stderr
    assert set(reported_checks(run.stdout)) == expected_shapes()
    assert within_limit(reported_checks(run.stdout)), run.stdout
    folded = torch.jit.load(str(output))
    assert not any(name.endswith("running_var") for name, _ in folded.named_buffers())  # BatchNorm is gone
    x = image_batch(2, IMG, IMG, seed=14)
    with torch.no_grad():
        compare_outputs([folded(x)], eager["conditioned"], x)


@pytest.mark.parametrize("bug", ["batchnorm_eps", "se_gate"])
def test_a_planted_bug_in_the_exported_graph_is_refused(tmp_path, eager, monkeypatch, bug):
    """The trained-like network exports (API_EXPORTS) and a wrong graph does not: a bug planted in the copy being
    exported (every BatchNorm eps 1e-5 -> 1e-3, or one squeeze-excite gate sigmoid -> hard sigmoid) moves the
    outputs far beyond 4x the eager model's own error from fp64, on every CPU."""
    from torchvision.ops import SqueezeExcitation

    from effnetv2.export import EXPORT_FORMATS

    onnx = EXPORT_FORMATS["onnx"]

    def planted(module: nn.Module, *args) -> None:
        wrong = copy.deepcopy(module)
        if bug == "batchnorm_eps":
            for m in wrong.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps = 1e-3
        else:
            gate = next(m for m in wrong.modules() if isinstance(m, SqueezeExcitation))
            gate.scale_activation = nn.Hardsigmoid()
        onnx.write(wrong, *args)

    monkeypatch.setitem(EXPORT_FORMATS, "onnx", replace(onnx, write=planted))
    with pytest.raises(effnetv2.ExportError, match=r"does not match the eager model at input shape \(1, 3, 64, 64\)"):
        export_model(eager["short"], tmp_path / "wrong.onnx", "onnx", img_size=IMG)
    assert list(tmp_path.iterdir()) == []


def test_tolerance_replaces_the_derived_limit(tmp_path):
    with pytest.raises(effnetv2.ExportError, match=r"limit 0\) on 2 images"):
        export_model(Tiny(), tmp_path / "m.pt", "torchscript", img_size=16, tolerance=0.0)
    report = export_model(Tiny(), tmp_path / "m.pt", "torchscript", img_size=16, tolerance=0.5)
    assert report.tolerance == 0.5 and all(c.comparison.limit == 0.5 for c in report.checks)
    assert "every check within the given tolerance" in report.summary()
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            export_model(Tiny(), tmp_path / "x.pt", "torchscript", img_size=16, tolerance=bad)


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "abc"])
def test_cli_tolerance_is_checked_before_anything_loads(tmp_path, value):
    run = run_cli(["--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--tolerance", value])
    assert run.code == 2 and "--tolerance" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


# --- the export machinery on a tiny model ------------------------------------------------------------------------


class Tiny(nn.Module):
    """conv-BN-SiLU, then global pool (or the two maps, for ``features=True``); ``skew`` makes exports differ."""

    def __init__(self, features: bool = False, skew: bool = False) -> None:
        super().__init__()
        self.in_chans = 3
        self.features = features
        self.skew = skew
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
        self.conv2 = nn.Conv2d(8, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.conv(x)
        # TorchScript compiles only the taken branch of a bare is_scripting() test (it cannot compile is_exporting).
        if torch.jit.is_scripting():
            skewed = self.skew
        else:
            skewed = self.skew and (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())
        if skewed:
            a = a * 1.001
        b = self.conv2(a)
        return [a, b] if self.features else [b.mean((2, 3))]


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_export_that_differs_from_eager_fails_and_writes_nothing(tmp_path, fmt):
    message = r"does not match the eager model at input shape \(1, 3, 16, 16\): error 0.00\d+ from fp64"
    with pytest.raises(effnetv2.ExportError, match=message):
        export_model(Tiny(skew=True), tmp_path / f"m{SUFFIX[fmt]}", fmt, img_size=16)
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_an_export_error_and_writes_nothing(tmp_path):
    class Unscriptable(Tiny):
        def forward(self, x):
            return np.asarray(x)  # TorchScript cannot compile numpy

    with pytest.raises(effnetv2.ExportError, match="torchscript export failed"):
        export_model(Unscriptable(), tmp_path / "m.pt", "torchscript", img_size=16)
    assert list(tmp_path.iterdir()) == []


def test_cli_verification_failure_exits_nonzero_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("effnetv2.cli.model_setup.load_model", lambda *args, **kwargs: Tiny(skew=True).eval())
    run = run_cli(["--format", "exported-program", "--output", str(tmp_path / "m.pt2"), "--img-size", "32"])
    assert run.code == 2
    assert re.search(r"error: the exported-program export does not match the eager model at input shape", run.stderr)
    assert list(tmp_path.iterdir()) == []


def test_report_describes_the_file_and_its_checks(tmp_path):
    model = Tiny(features=True).train()
    report = export_model(model, tmp_path / "tiny.pt", "torchscript", img_size=(16, 24), dynamic_size=True)
    assert model.training and model.conv[1].training  # the caller's mode is restored
    assert report.path == tmp_path / "tiny.pt" and report.num_bytes == report.path.stat().st_size > 0
    assert report.input_shape == ("batch", 3, "height", "width")
    assert report.output_names == ("features.0", "features.1")
    assert [c.input_shape for c in report.checks] == [(1, 3, 16, 24), (3, 3, 16, 24), (1, 3, 48, 88)]
    assert report.max_rel_diff == max(c.comparison.error for c in report.checks)
    assert all(c.comparison.accepted and c.comparison.images >= 2 for c in report.checks)
    assert report.opset is None and report.tolerance is None
    with pytest.raises(ValueError, match="has no pretrained_cfg"):
        export_model(model, tmp_path / "x.pt", "torchscript")


def test_exported_program_dynamic_size(tmp_path):
    model = Tiny(features=True).eval()
    report = export_model(model, tmp_path / "tiny.pt2", "exported-program", img_size=32, dynamic_size=True)
    assert [c.input_shape for c in report.checks] == [(1, 3, 32, 32), (3, 3, 32, 32), (1, 3, 64, 96)]
    assert all(c.comparison.accepted for c in report.checks)
    with open(report.path, "rb") as f:
        program = torch.export.load(f).module()
    x = natural_images(2, (40, 56))
    with torch.no_grad():
        compare_outputs(program(x), model, x)


def test_static_onnx_export_has_fixed_shape(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    report = export_model(Tiny(), tmp_path / "tiny.onnx", "onnx", img_size=16, dynamic_batch=False, batch_size=2)
    assert [c.input_shape for c in report.checks] == [(2, 3, 16, 16)]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 16, 16]
    assert session.get_outputs()[0].shape == [2, 4]


def test_onnx_export_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ONNX export needs the onnx package: pip install onnx onnxruntime"):
        export_model(Tiny(), tmp_path / "m.onnx", "onnx", img_size=16)
    assert list(tmp_path.iterdir()) == []
