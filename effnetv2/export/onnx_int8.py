"""int8 ONNX: the verified float export, statically quantized by ONNX Runtime, and its agreement with the model.

``export_onnx_int8(model, path, calibration)`` exports ``model`` to ONNX (verified as :func:`export_model` does),
then writes the table's ``onnx-int8`` format from it (:data:`effnetv2.export.formats.EXPORT_FORMATS`): ONNX Runtime's
post-training static quantization (``onnxruntime.quantization.quantize_static``), QDQ format, int8 weights per
output channel, uint8 activations with ranges calibrated on ``calibration`` images (percentile calibration,
99.999th). Convolutions, residual adds and the pooling are quantized; **kept in float: what the one int8 policy
names** (:mod:`effnetv2.inference.int8_policy`, shared with PyTorch's int8 path): SiLU and the squeeze-excite gates,
the stem convolution, squeeze-excite, the last convolution and the classifier. An int8 model has no eager
counterpart to be held to, so the report gives the project's one comparison (:mod:`effnetv2.inference.compare`) on
held-out calibration images (every 4th one), unjudged: the int8 file's error from an fp64 copy of the model next to
the fp32 model's own error, and top-1 agreement with fp64 (classifiers; also on the images whose answer is clear).
The file is written atomically, only once that check has run. A killed export's work folder
(``.effnetv2-int8-PID-*`` beside the output) is removed by the next export into that folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from effnetv2.atomic import atomic_path, pid_alive
from effnetv2.errors import ExportError
from effnetv2.export.common import require
from effnetv2.export.formats import EXPORT_FORMATS, QUANTIZED_OPS, ExportReport, check_export_options, export_model
from effnetv2.inference.calibration import Calibration, calibration_images, split_holdout
from effnetv2.inference.compare import Comparison, compare, reference, run_batched
from effnetv2.inference.int8_policy import describe_kept_float

FORMAT = "onnx-int8"  # its row of the export formats table
WORK_PREFIX = ".effnetv2-int8-"  # + "{pid}-{random}": the work folder beside the output


@dataclass(frozen=True)
class Int8Report:
    """What :func:`export_onnx_int8` wrote and how the int8 model agrees with the float model."""

    path: Path
    num_bytes: int
    float_bytes: int
    calibration_images: int
    check_images: int  # held out from calibration (all images when there were fewer than 8)
    comparison: Comparison  # the int8 file against fp64 on the check images
    float_max_rel_diff: float  # of the float export, before quantization: its error from fp64

    @property
    def top1_agreement(self) -> Optional[float]:
        """Top-1 equal to fp64's on the check images (None for a features model)."""
        return self.comparison.top1

    @property
    def clear_agreement(self) -> Optional[tuple[float, int]]:
        """The same on the images with a clear fp64 answer, and their count."""
        return self.comparison.clear

    @property
    def max_rel_diff(self) -> float:
        """The int8 file's largest relative difference from fp64."""
        return self.comparison.error

    def summary(self) -> str:
        held = "held-out" if self.check_images < self.calibration_images + self.check_images else "calibration"
        return "\n".join(
            [
                f"wrote {self.path} (onnx, int8 QDQ, {self.num_bytes / 1e6:.1f} MB; float: "
                f"{self.float_bytes / 1e6:.1f} MB, verified: error {self.float_max_rel_diff:.3g} from fp64)",
                f"  calibrated on {self.calibration_images} images; kept in float: {describe_kept_float()}",
                f"int8 on {self.check_images} {held} images: {self.comparison.describe()}",
            ]
        )


def export_onnx_int8(
    model: nn.Module,
    path: Union[str, os.PathLike],
    calibration: Calibration,
    *,
    opset: Optional[int] = None,
    dynamic_batch: bool = True,
) -> Int8Report:
    """Export ``model`` to an int8 ONNX file at ``path``, calibrated on ``calibration``: normalised images
    (N, C, H, W) as the model takes them, at the export size, or files or a loader read as every int8 path reads
    them (:func:`effnetv2.inference.calibration.calibration_images`). Raises ``ImportError`` without onnx/onnxruntime,
    ``ValueError`` for fewer than 2 images, :class:`~effnetv2.errors.ExportError` when a step fails or the int8
    model returns non-finite values (nothing is written then)."""
    path = check_export_options(path, FORMAT, opset)
    for package in EXPORT_FORMATS[FORMAT].write_needs:
        require(package)  # before the float export, not after
    images = calibration_images(calibration, model)
    calibrate, check = split_holdout(images)
    _remove_stale_work_folders(path.parent)
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=path.parent) as work:
        source = Path(work, "float.onnx")
        float_report = _export_source(model, source, images, opset, dynamic_batch)
        with atomic_path(path) as tmp:
            _quantize(source, tmp, calibrate)
            comparison = _compare(model, tmp, check)
    return Int8Report(
        path=path,
        num_bytes=path.stat().st_size,
        float_bytes=float_report.num_bytes,
        calibration_images=calibrate.shape[0],
        check_images=check.shape[0],
        comparison=comparison,
        float_max_rel_diff=float_report.max_rel_diff,
    )


def _export_source(
    model: nn.Module, file: Path, images: Tensor, opset: Optional[int], dynamic_batch: bool
) -> ExportReport:
    """The verified float export the int8 file is made from, at the calibration images' size."""
    source = str(EXPORT_FORMATS[FORMAT].source)
    size = tuple(images.shape[-2:])
    return export_model(model, file, source, img_size=size, opset=opset, dynamic_batch=dynamic_batch)


def _quantize(source: Path, file: Path, images: Tensor) -> None:
    """Write the int8 file through the table's writer; its failures become ExportError (disk faults stay OSError)."""
    try:
        EXPORT_FORMATS[FORMAT].write(source, file, images)
    except OSError:
        raise  # disk full, permissions: the fault, with the file's name
    except Exception as e:
        raise ExportError(f"int8 quantization failed: {type(e).__name__}: {e}") from e


def _remove_stale_work_folders(folder: Path) -> None:
    """Remove work folders that killed exports left in ``folder`` (their process is gone)."""
    for work in folder.glob(f"{WORK_PREFIX}*"):
        pid = work.name[len(WORK_PREFIX) :].split("-", 1)[0]
        if work.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _compare(model: nn.Module, file: Path, images: Tensor) -> Comparison:
    """The int8 file, loaded as the table says, against an fp64 copy of ``model`` on ``images``, next to the eager
    model (unjudged)."""
    try:
        run = EXPORT_FORMATS[FORMAT].load(file, torch.device("cpu"))
        # one image at a time: a static export takes its own batch size only, and every export takes batch 1
        ours = run_batched(run, images, 1)
    except Exception as e:  # onnxruntime's own errors derive from Exception only
        raise ExportError(f"the int8 file does not run: {type(e).__name__}: {e}") from e
    if not all(torch.isfinite(o).all() for o in ours):
        raise ExportError("the int8 model returns NaN or infinite values on the calibration images; nothing written")
    return compare(ours, reference(model, images), torch.int8)


__all__ = ["FORMAT", "QUANTIZED_OPS", "WORK_PREFIX", "Int8Report", "export_onnx_int8"]
