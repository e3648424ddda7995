"""Verified export: ONNX, TorchScript and ``torch.export`` files checked against an fp64 copy of the model before they
are kept (:mod:`~effnetv2.export.formats`), and int8 ONNX through ONNX Runtime's static quantization
(:mod:`~effnetv2.export.onnx_int8`)."""

from effnetv2.export.formats import (
    DEFAULT_ONNX_OPSET,
    FORMATS,
    ONNX_OPSETS,
    Check,
    ExportReport,
    check_export_options,
    export_model,
)
from effnetv2.export.onnx_int8 import Int8Report, export_onnx_int8

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "FORMATS",
    "ONNX_OPSETS",
    "Check",
    "ExportReport",
    "Int8Report",
    "check_export_options",
    "export_model",
    "export_onnx_int8",
]
