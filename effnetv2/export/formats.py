"""The export formats table, and ``export_model``: a file verified against the eager model before it is kept.

:data:`EXPORT_FORMATS` holds one :class:`ExportFormat` per format: how the file is written and how it is read back
by the runtime that will run it. ``onnx``, ``torchscript`` and ``exported-program`` are traced from the module;
``onnx-int8`` is made from a verified ``onnx`` file by ONNX Runtime's static quantization, calibrated on images,
keeping in float what :mod:`effnetv2.inference.int8_policy` names (:func:`effnetv2.export.onnx_int8.export_onnx_int8`
runs it).

``export_model`` writes the graph to a hidden temporary file beside the output, loads that file back with the
runtime that will run it (onnxruntime, ``torch.jit.load``, ``torch.export.load``) and runs it on natural-looking
images (the packaged sample photo and crops of it, smooth fields: :mod:`effnetv2.inference.compare`) at batch 1 and
3 when the batch axis is dynamic, and at a second, non-square image size when height and width are dynamic. Each
check is the project's one comparison: the file's error from an fp64 copy of the model against the eager model's
own error there (at most 4x it, plus a few ulps). Only then is the file renamed into place; a failed export or check
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from effnetv2.atomic import atomic_path
from effnetv2.defaults import DEFAULT_ONNX_OPSET
from effnetv2.defaults import EXPORT_FORMATS as FORMATS  # the formats export_model traces (the CLI's --format)
from effnetv2.errors import ExportError
from effnetv2.export.common import INPUT_NAME, Runner, eval_mode, first_line, onnx_runner, require
from effnetv2.inference.compare import Comparison, as_list, compare, model_natural_images, reference, run_batched
from effnetv2.inference.folded import fold_for_inference
from effnetv2.inference.int8_policy import is_kept_float

# The TorchScript-based ONNX exporter writes opsets 7–20 (torch.onnx's ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET).
ONNX_OPSETS = range(7, 21)
# DEFAULT_ONNX_OPSET (17) is read by every maintained runtime (onnxruntime >= 1.13, TensorRT >= 8.6, OpenVINO).

CHECK_IMAGES = 2  # natural images per verification check at least (a batch-1 check runs them one at a time)

# The ONNX ops int8 quantizes; Sigmoid and Mul (SiLU and the squeeze-excite gates) and Gemm stay float, and so does
# every node of the parts the int8 policy keeps in float.
QUANTIZED_OPS = ("Conv", "Add", "GlobalAveragePool")


@dataclass(frozen=True)
class Check:
    """One verification run: the input shape and how the file compared with fp64 next to the eager model."""

    input_shape: tuple[int, ...]
    comparison: Comparison

    @property
    def max_rel_diff(self) -> float:
        """The file's largest relative difference from the fp64 reference."""
        return self.comparison.error


@dataclass(frozen=True)
class ExportReport:
    """What ``export_model`` wrote and how the written file compared with the eager model."""

    path: Path
    format: str
    input_shape: tuple[Union[int, str], ...]  # symbolic axes by name: ('batch', 3, 'height', 'width')
    output_names: tuple[str, ...]
    opset: Optional[int]  # ONNX only
    num_bytes: int
    tolerance: Optional[float]  # the limit given instead of the derived one, if any
    checks: tuple[Check, ...] = field(default_factory=tuple)  # empty when verify=False

    @property
    def max_rel_diff(self) -> float:
        """The file's largest relative difference from fp64 over every check (NaN when nothing was verified)."""
        return max((c.max_rel_diff for c in self.checks), default=math.nan)

    def summary(self) -> str:
        """Human-readable lines: the file, its signature and each verification check."""
        shape = ", ".join(str(d) for d in self.input_shape)
        opset = f", opset {self.opset}" if self.opset is not None else ""
        lines = [
            f"wrote {self.path} ({self.format}{opset}, {self.num_bytes / 1e6:.1f} MB)",
            f"  input {INPUT_NAME!r} ({shape}) -> outputs {', '.join(repr(n) for n in self.output_names)}",
        ]
        if not self.checks:
            lines.append("  not verified (verify=False)")
            return "\n".join(lines)
        for check in self.checks:
            lines.append(f"  input {tuple(check.input_shape)}: {check.comparison.describe()}")
        limit = "the given tolerance" if self.tolerance is not None else "4x the eager model's own error"
        lines.append(
            f"verified against fp64 on natural images: every check within {limit} "
            f"(largest error {self.max_rel_diff:.3g})"
        )
        return "\n".join(lines)


def check_export_options(path: Union[str, os.PathLike], format: str = "onnx", opset: Optional[int] = None) -> Path:
    """Validate the format (a name in :data:`EXPORT_FORMATS`), the opset and the output path; return the output path.

    ``export_model`` and ``export_onnx_int8`` call this first; the CLI calls it before loading any weights, so
    mistakes cost nothing.

    Raises:
        ValueError: unknown ``format``, or an ``opset`` outside 7–20 (or given for a non-ONNX format).
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: ``path``'s folder does not exist.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if opset is not None:
        if not EXPORT_FORMATS[format].onnx:
            raise ValueError(f"opset applies to format='onnx' only, not {format!r}")
        if opset not in ONNX_OPSETS:
            raise ValueError(
                f"ONNX opset {opset} is not supported: choose {ONNX_OPSETS.start}–{ONNX_OPSETS.stop - 1} "
                f"(default {DEFAULT_ONNX_OPSET})"
            )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"output {str(path)!r} is a directory; give a file path such as {str(path / 'model')!r}"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist; create it first")
    return path


def export_model(
    model: nn.Module,
    path: Union[str, os.PathLike],
    format: str = "onnx",
    *,
    img_size: Optional[Union[int, tuple[int, int]]] = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    opset: Optional[int] = None,
    optimize: bool = False,
    verify: bool = True,
    tolerance: Optional[float] = None,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ``path`` and check the written file reproduces the eager model's outputs.

    Args:
        model: an effnetv2 model (classifier or ``features_only``), or any module taking one image batch and
            returning a tensor or a list of tensors. It is run in eval mode; its mode is restored afterwards.
        path: the output file, written atomically (:func:`effnetv2.atomic.atomic_path`), mode ``0644`` as usual.
        format: one of :data:`FORMATS`: ``'onnx'`` (checked with onnxruntime), ``'torchscript'``
            (``torch.jit.script``) or ``'exported-program'`` (``torch.export``); int8 ONNX: ``export_onnx_int8``.
        img_size: ``H`` or ``(H, W)`` of the example input; default: the model's ``pretrained_cfg`` input size.
        batch_size: the batch size of a static (``dynamic_batch=False``) export.
        dynamic_batch: make the batch axis dynamic (verified at batch 1 and 3).
        dynamic_size: make height and width dynamic too (also verified at a second, non-square size).
            TorchScript modules are shape-generic whatever these flags say.
        opset: ONNX opset, 7–20; default 17.
        optimize: export ``effnetv2.optimize_for_inference(model)`` (BatchNorm folded into the convs) instead,
            still verified against ``model`` itself.
        verify: run the check; with ``False`` the file is written unchecked.
        tolerance: the largest accepted error from fp64 (max|file - fp64| / max|fp64| over each output) instead
            of the derived limit (4x the eager model's own error on the same images, plus 4 ulps).
        seed: seed of the natural example and verification images (crops of the sample photo, smooth fields).

    Returns an :class:`ExportReport` (``report.summary()`` prints it). Raises ``ValueError``,
    ``IsADirectoryError``, ``FileNotFoundError`` for bad options (:func:`check_export_options`); ``OSError`` for an
    unwritable folder; ``TypeError`` for ``optimize=True`` on a module that is no effnetv2 model; ``ImportError``
    without onnx or onnxruntime; :class:`~effnetv2.errors.ExportError` when the exporter fails or the file is
    farther from fp64 than the limit (the message gives both errors). Nothing is written then.
    """
    path = check_export_options(path, format, opset)
    _check_export_model_options(format, batch_size, tolerance, verify)
    plan = _plan(model, img_size, batch_size, dynamic_batch, dynamic_size, seed)
    exported = fold_for_inference(model) if optimize else model
    with atomic_path(path) as tmp:  # written beside ``path``, moved onto it only once verified
        _check_writable(tmp, path)
        with eval_mode(model), eval_mode(exported):
            _write(format, exported, plan, tmp, opset)
            checks = _verify_file(model, format, tmp, plan, tolerance, seed) if verify else []
    return _report(path, format, plan, opset, tolerance, checks)


# ---------------------------------------------------------------------------------------------------------------
# export_model's steps.


@dataclass(frozen=True)
class _Plan:
    """What a traced export writes and checks: the example input, the check shapes and the file's signature."""

    example: Tensor
    shapes: list[tuple[int, int, int]]  # (batch, H, W) of each verification check
    output_names: list[str]
    input_shape: tuple[Union[int, str], ...]
    dynamic_batch: bool
    dynamic_size: bool


def _check_export_model_options(format: str, batch_size: int, tolerance: Optional[float], verify: bool) -> None:
    """Refuse what ``export_model`` cannot do before anything slow runs; import the format's packages."""
    entry = EXPORT_FORMATS[format]
    if entry.source is not None:
        raise ValueError(
            f"format {format!r} is made from a verified {entry.source} export and calibration images: use "
            f"effnetv2.export.export_onnx_int8(model, path, calibration)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    for package in (*entry.write_needs, *(entry.load_needs if verify else ())):
        require(package)  # fail before the slow export, not after


def _plan(
    model: nn.Module,
    img_size: Optional[Union[int, Sequence[int]]],
    batch_size: int,
    dynamic_batch: bool,
    dynamic_size: bool,
    seed: int,
) -> _Plan:
    height, width = _resolve_img_size(model, img_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    # A dynamic batch is traced at batch 2: torch.export specialises axes of size 1 to constants.
    example = model_natural_images(model, 2 if dynamic_batch else batch_size, (height, width), seed)
    example = example.to(device=device, dtype=dtype)
    shapes = [(1, height, width), (3, height, width)] if dynamic_batch else [(batch_size, height, width)]
    if dynamic_size:
        shapes.append((shapes[0][0], height + 32, width + 64))  # non-square, so swapped axes would show
    with eval_mode(model), torch.no_grad():
        num_outputs = len(as_list(model(example)))
    input_shape = (
        "batch" if dynamic_batch else example.shape[0],
        int(getattr(model, "in_chans", 3)),
        "height" if dynamic_size else height,
        "width" if dynamic_size else width,
    )
    return _Plan(example, shapes, _output_names(num_outputs), input_shape, dynamic_batch, dynamic_size)


def _check_writable(tmp: Path, path: Path) -> None:
    try:
        tmp.touch()  # an unwritable folder fails here, before the slow export
    except OSError as e:
        raise type(e)(e.errno, f"cannot write to the output folder {str(path.parent)!r}: {e.strerror}") from e


def _write(format: str, module: nn.Module, plan: _Plan, file: Path, opset: Optional[int]) -> None:
    try:
        EXPORT_FORMATS[format].write(
            module, plan.example, file, plan.output_names, plan.dynamic_batch, plan.dynamic_size, opset
        )
    except OSError:
        raise  # disk full, permissions: the fault, with the file's name, not an exporter failure
    except Exception as e:
        raise ExportError(f"{format} export failed: {type(e).__name__}: {first_line(e)}") from e


def _verify_file(
    model: nn.Module, format: str, file: Path, plan: _Plan, tolerance: Optional[float], seed: int
) -> list[Check]:
    """Load ``file`` back with its runtime and check it at every planned shape."""
    device = plan.example.device
    try:
        run = EXPORT_FORMATS[format].load(file, device)
    except Exception as e:
        raise ExportError(f"the written {format} file does not load: {type(e).__name__}: {first_line(e)}") from e
    fp64 = copy.deepcopy(model).double()  # the reference of every check
    return [_verify(model, fp64, run, shape, format, tolerance, seed) for shape in plan.shapes]


def _verify(
    model: nn.Module,
    fp64: nn.Module,
    run: Runner,
    shape: tuple[int, int, int],
    format: str,
    limit: Optional[float],
    seed: int,
) -> Check:
    """Run the loaded file on natural images of ``shape`` (batch, H, W), judge it against fp64 next to the eager
    model (:func:`effnetv2.inference.compare.compare`); raise ExportError when it is outside the limit."""
    batch, height, width = shape
    images = model_natural_images(model, batch * -(-CHECK_IMAGES // batch), (height, width), seed)
    ref = reference(model, images, batch=batch, fp64_model=fp64)
    with torch.no_grad():
        try:
            outputs = run_batched(run, images, batch)
        except Exception as e:
            raise ExportError(
                f"the loaded {format} export failed on an input of shape {(batch, images.shape[1], height, width)}: "
                f"{type(e).__name__}: {first_line(e)}"
            ) from e
    if len(outputs) != len(ref.fp64):
        raise ExportError(f"the {format} export returns {len(outputs)} outputs, the eager model {len(ref.fp64)}")
    for i, (a, e) in enumerate(zip(outputs, ref.fp64, strict=True)):
        if tuple(a.shape) != tuple(e.shape):
            raise ExportError(
                f"output {i} of the {format} export has shape {tuple(a.shape[1:])} per image, the eager model's "
                f"{tuple(e.shape[1:])}"
            )
    comparison = compare(outputs, ref, limit=limit)
    if not comparison.accepted:
        raise ExportError(
            f"the {format} export does not match the eager model at input shape {(batch, *images.shape[1:])}: "
            f"{comparison.describe()}; nothing was written"
        )
    return Check((batch, *images.shape[1:]), comparison)


def _report(
    path: Path, format: str, plan: _Plan, opset: Optional[int], tolerance: Optional[float], checks: list[Check]
) -> ExportReport:
    """What was written, with the checks it passed."""
    return ExportReport(
        path=path,
        format=format,
        input_shape=plan.input_shape,
        output_names=tuple(plan.output_names),
        opset=(opset or DEFAULT_ONNX_OPSET) if EXPORT_FORMATS[format].onnx else None,
        num_bytes=path.stat().st_size,
        tolerance=tolerance,
        checks=tuple(checks),
    )


def _output_names(num_outputs: int) -> list[str]:
    """``output`` for one tensor; ``features.0`` ... for a list (one per feature level)."""
    return ["output"] if num_outputs == 1 else [f"features.{i}" for i in range(num_outputs)]


def _resolve_img_size(model: nn.Module, img_size: Optional[Union[int, Sequence[int]]]) -> tuple[int, int]:
    if img_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if "input_size" not in cfg:
            raise ValueError("the model has no pretrained_cfg['input_size']; pass img_size=(H, W)")
        img_size = tuple(cfg["input_size"][-2:])
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"img_size must be a positive int or (H, W), got {img_size!r}")
    return size[0], size[1]


# ---------------------------------------------------------------------------------------------------------------
# Writers. Traced formats: (module, example, file, output names, dynamic batch, dynamic size, opset) -> the file.


def _export_onnx(
    model: nn.Module,
    example: Tensor,
    file: Path,
    output_names: list[str],
    dynamic_batch: bool,
    dynamic_size: bool,
    opset: Optional[int],
) -> None:
    input_axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        input_axes.update({2: "height", 3: "width"})
    output_axes = {0: "batch"} if dynamic_batch else {}
    dynamic_axes = {INPUT_NAME: input_axes, **dict.fromkeys(output_names, output_axes)}
    with warnings.catch_warnings():
        # We choose the TorchScript-based exporter on purpose (see README): it needs no onnxscript, runs ~4x
        # faster on this model and supports dynamic_axes; its deprecation notice is not the user's concern.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        # The input checks compare x.shape[1] (traced as a tensor) with in_chans; the channel axis is static,
        # so the constant the tracer records is right.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"effnetv2\.")
        torch.onnx.export(
            model,
            (example,),
            str(file),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes={name: axes for name, axes in dynamic_axes.items() if axes} or None,
            opset_version=opset or DEFAULT_ONNX_OPSET,
            do_constant_folding=True,
        )


def _export_torchscript(model: nn.Module, example: Tensor, file: Path, *_: Any) -> None:
    # Scripting (not tracing) keeps every shape symbolic and the input checks in the graph. Saved to memory first:
    # torch.jit.save's own file writer aborts the process when the disk fills, where Python's raises OSError.
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    file.write_bytes(buffer.getbuffer())


def _export_program(
    model: nn.Module,
    example: Tensor,
    file: Path,
    output_names: list[str],
    dynamic_batch: bool,
    dynamic_size: bool,
    opset: Optional[int],
) -> None:
    Dim = torch.export.Dim
    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = Dim("batch", min=1)
    if dynamic_size:
        # AUTO lets torch.export derive the valid range: the network needs a final map larger than 1x1.
        axes.update({2: Dim.AUTO, 3: Dim.AUTO})
    program = torch.export.export(model, (example,), dynamic_shapes=(axes,) if axes else None)
    with open(file, "wb") as f:  # a file object: torch.export.save warns about names not ending in .pt2
        torch.export.save(program, f)


# Made from another format's verified file: (source file, file, calibration images) -> the file.


def _quantize_onnx(source: Path, file: Path, images: Tensor) -> None:
    """ONNX Runtime's static quantization of the float ONNX file ``source`` into ``file``: QDQ, int8 weights per
    output channel, uint8 activations with percentile ranges (99.999th) calibrated on ``images``, one at a time;
    :data:`QUANTIZED_OPS` only, and none of the nodes the int8 policy keeps in float."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            # one image at a time: a static export takes its own batch size only, and every export takes batch 1
            self.batches: Iterator[Any] = (images[i : i + 1].numpy() for i in range(images.shape[0]))

        def get_next(self) -> Optional[dict[str, Any]]:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = source.with_name(f"{source.stem}.prepared.onnx")
    with redirect_stdout(sys.stderr), contextlib.ExitStack() as cleanup:  # stdout holds the report only
        cleanup.callback(prepared.unlink, missing_ok=True)  # an intermediate file: never left beside the source
        quant_pre_process(str(source), str(prepared))
        nodes = [node.name for node in onnx.load(str(prepared)).graph.node]
        quantize_static(
            str(prepared),
            str(file),
            Images(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=kept_float_nodes(nodes),
        )


def onnx_module_name(node_name: str) -> str:
    """The module an ONNX node of torch's exporter comes from: ``"/stages.3/stages.3.0/se/fc1/Conv"`` ->
    ``"stages.3.0.se.fc1"`` (a scope is the module's attribute name, or its full name under a ``Sequential``)."""
    name = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        name = scope if not name or scope.startswith(f"{name}.") else f"{name}.{scope}"
    return name


def kept_float_nodes(node_names: Sequence[str]) -> list[str]:
    """The nodes of an exported graph that the int8 policy (:mod:`effnetv2.inference.int8_policy`) keeps in float."""
    return [name for name in node_names if is_kept_float(onnx_module_name(name))]


# ---------------------------------------------------------------------------------------------------------------
# Loaders: read the written file back with the runtime that will run it; return a callable x -> [outputs].


def _load_onnx(file: Path, device: torch.device) -> Runner:
    return onnx_runner(file)


def _load_torchscript(file: Path, device: torch.device) -> Runner:
    module = torch.jit.load(str(file), map_location=device)
    return lambda x: as_list(module(x))


def _load_program(file: Path, device: torch.device) -> Runner:
    with open(file, "rb") as f:
        module = torch.export.load(f).module()
    return lambda x: as_list(module(x))


# ---------------------------------------------------------------------------------------------------------------
# The table.


@dataclass(frozen=True)
class ExportFormat:
    """One export format: how its file is written, and how it is read back by the runtime that will run it.

    A traced format (``source`` None) is written from the module:
    ``write(module, example, file, output_names, dynamic_batch, dynamic_size, opset)``. A format with a ``source``
    is made from that format's verified file and calibration images: ``write(source_file, file, images)``.
    """

    suffix: str  # the usual file-name ending
    write: Callable[..., None]
    load: Callable[[Path, torch.device], Runner]
    write_needs: tuple[str, ...] = ()  # optional packages the writer imports
    load_needs: tuple[str, ...] = ()  # ... and the loader
    source: Optional[str] = None
    onnx: bool = False  # an ONNX file: takes an opset


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", _export_onnx, _load_onnx, ("onnx",), ("onnxruntime",), onnx=True),
    "torchscript": ExportFormat(".pt", _export_torchscript, _load_torchscript),
    "exported-program": ExportFormat(".pt2", _export_program, _load_program),
    "onnx-int8": ExportFormat(
        ".onnx", _quantize_onnx, _load_onnx, ("onnx", "onnxruntime"), ("onnxruntime",), source="onnx", onnx=True
    ),
}
# FORMATS (effnetv2.defaults, read by the CLI without torch) names the table's traced rows, in order
# (tests/test_export.py holds the two together).


__all__ = [
    "CHECK_IMAGES",
    "DEFAULT_ONNX_OPSET",
    "EXPORT_FORMATS",
    "FORMATS",
    "ONNX_OPSETS",
    "QUANTIZED_OPS",
    "Check",
    "ExportFormat",
    "ExportReport",
    "check_export_options",
    "export_model",
    "kept_float_nodes",
    "onnx_module_name",
]
