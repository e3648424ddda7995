"""Export to ONNX, TorchScript or a ``torch.export`` program, verified against the eager model before it is kept.

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
import importlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from effnetv2.atomic import atomic_path
from effnetv2.errors import ExportError
from effnetv2.inference.compare import Comparison, as_list, compare, model_natural_images, reference, run_batched
from effnetv2.inference.folded import fold_for_inference

FORMATS = ("onnx", "torchscript", "exported-program")

# The TorchScript-based ONNX exporter writes opsets 7–20 (torch.onnx's ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET).
ONNX_OPSETS = range(7, 21)
# 17 is read by every maintained runtime (onnxruntime >= 1.13, TensorRT >= 8.6, OpenVINO), so it is the default.
DEFAULT_ONNX_OPSET = 17

CHECK_IMAGES = 2  # natural images per verification check at least (a batch-1 check runs them one at a time)

INPUT_NAME = "input"

Runner = Callable[[Tensor], list[Tensor]]


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
    """Validate the format, the opset and the output path; return the output path.

    ``export_model`` calls this first; the CLI calls it before loading any weights, so mistakes cost nothing.

    Raises:
        ValueError: unknown ``format``, or an ``opset`` outside 7–20 (or given for a non-ONNX format).
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: ``path``'s folder does not exist.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None:
        if format != "onnx":
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
        path: the output file, written atomically (:func:`effnetv2.atomic.atomic_path`: a temp file beside it,
            renamed onto it once verified), with the usual mode (``0644`` under the usual umask).
        format: ``'onnx'`` (TorchScript-based exporter, checked with onnxruntime), ``'torchscript'``
            (``torch.jit.script``, checked after ``torch.jit.load``) or ``'exported-program'``
            (``torch.export``, checked after ``torch.export.load(...).module()``).
        img_size: ``H`` or ``(H, W)`` of the example input; default: the model's ``pretrained_cfg`` input size.
        batch_size: the batch size of a static (``dynamic_batch=False``) export.
        dynamic_batch: make the batch axis dynamic (verified at batch 1 and 3).
        dynamic_size: make height and width dynamic too (also verified at a second, non-square size).
            TorchScript modules are shape-generic whatever these flags say.
        opset: ONNX opset, 7–20; default 17.
        optimize: export ``effnetv2.optimize_for_inference(model)`` (BatchNorm folded into the
            convs) instead, still verified against ``model`` itself.
        verify: run the check; with ``False`` the file is written unchecked.
        tolerance: the largest accepted error from fp64 (max|file - fp64| / max|fp64| over each output), given
            instead of the derived limit (:mod:`effnetv2.inference.compare`: 4x the eager model's own error on the
            same images, plus 4 ulps); for a model in float32, bfloat16, float16 or float64 alike.
        seed: seed of the natural example and verification images (crops of the sample photo, smooth fields).

    Returns:
        An :class:`ExportReport`; ``report.summary()`` prints it.

    Raises:
        ValueError, IsADirectoryError, FileNotFoundError: bad options (see :func:`check_export_options`).
        OSError: the output folder is not writable.
        TypeError: ``optimize=True`` for a model that is not an effnetv2 model.
        ImportError: ONNX export without the onnx (export) or onnxruntime (verification) package.
        ExportError: the exporter failed, or the file's outputs are farther from fp64 than the limit (the
            message gives both errors). Nothing is written.
    """
    path = check_export_options(path, format, opset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    height, width = _resolve_img_size(model, img_size)
    if format == "onnx":  # fail before the slow export, not after
        _require("onnx")
        if verify:
            _require("onnxruntime")
    exported = fold_for_inference(model) if optimize else model
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    in_chans = int(getattr(model, "in_chans", 3))
    # A dynamic batch is traced at batch 2: torch.export specialises axes of size 1 to constants.
    example = model_natural_images(model, 2 if dynamic_batch else batch_size, (height, width), seed)
    example = example.to(device=device, dtype=dtype)
    shapes = [(1, height, width), (3, height, width)] if dynamic_batch else [(batch_size, height, width)]
    if dynamic_size:
        shapes.append((shapes[0][0], height + 32, width + 64))  # non-square, so swapped axes would show

    with _eval_mode(model), _eval_mode(exported), torch.no_grad():
        num_outputs = len(as_list(model(example)))
    output_names = _output_names(num_outputs)
    input_shape = (
        "batch" if dynamic_batch else example.shape[0],
        in_chans,
        "height" if dynamic_size else height,
        "width" if dynamic_size else width,
    )

    with atomic_path(path) as tmp:  # written beside ``path``, moved onto it only once verified
        try:
            tmp.touch()  # an unwritable folder fails here, before the slow export
        except OSError as e:
            raise type(e)(e.errno, f"cannot write to the output folder {str(path.parent)!r}: {e.strerror}") from e
        with _eval_mode(model), _eval_mode(exported):
            try:
                _EXPORTERS[format](exported, example, tmp, output_names, dynamic_batch, dynamic_size, opset)
            except OSError:
                raise  # disk full, permissions: the fault, with the file's name, not an exporter failure
            except Exception as e:
                raise ExportError(f"{format} export failed: {type(e).__name__}: {_first_line(e)}") from e
            checks: list[Check] = []
            if verify:
                try:
                    run = _LOADERS[format](tmp, device)
                except Exception as e:
                    raise ExportError(
                        f"the written {format} file does not load: {type(e).__name__}: {_first_line(e)}"
                    ) from e
                fp64 = copy.deepcopy(model).double()  # the reference of every check
                checks = [_verify(model, fp64, run, shape, format, tolerance, seed) for shape in shapes]
    return ExportReport(
        path=path,
        format=format,
        input_shape=input_shape,
        output_names=tuple(output_names),
        opset=(opset or DEFAULT_ONNX_OPSET) if format == "onnx" else None,
        num_bytes=path.stat().st_size,
        tolerance=tolerance,
        checks=tuple(checks),
    )


# ---------------------------------------------------------------------------------------------------------------
# Exporters: (module, example, file, output names, dynamic batch, dynamic size, opset) -> writes the file.


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


_EXPORTERS: dict[str, Callable[..., None]] = {
    "onnx": _export_onnx,
    "torchscript": _export_torchscript,
    "exported-program": _export_program,
}


# ---------------------------------------------------------------------------------------------------------------
# Loaders: read the written file back with the runtime that will run it; return a callable x -> [outputs].


def _load_onnx(file: Path, device: torch.device) -> Runner:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(y) for y in session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})]

    return run


def _load_torchscript(file: Path, device: torch.device) -> Runner:
    module = torch.jit.load(str(file), map_location=device)
    return lambda x: as_list(module(x))


def _load_program(file: Path, device: torch.device) -> Runner:
    with open(file, "rb") as f:
        module = torch.export.load(f).module()
    return lambda x: as_list(module(x))


_LOADERS: dict[str, Callable[[Path, torch.device], Runner]] = {
    "onnx": _load_onnx,
    "torchscript": _load_torchscript,
    "exported-program": _load_program,
}


# ---------------------------------------------------------------------------------------------------------------
# Helpers.


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
                f"{type(e).__name__}: {_first_line(e)}"
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


def _require(package: str) -> Any:
    """Import an optional dependency of ONNX export, or say how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs the {package} package: pip install onnx onnxruntime (or effnetv2[export])"
        ) from e


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore each submodule's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
