"""Verified export. :mod:`~effnetv2.export.formats` holds the formats table (ONNX, TorchScript, ``torch.export``,
int8 ONNX) and ``export_model``, whose files are checked against an fp64 copy of the model before they are kept;
:mod:`~effnetv2.export.onnx_int8` makes the table's int8 ONNX format, through ONNX Runtime's static quantization of
a verified float export."""

from effnetv2.export.formats import (
    DEFAULT_ONNX_OPSET,
    EXPORT_FORMATS,
    FORMATS,
    ONNX_OPSETS,
    Check,
    ExportFormat,
    ExportReport,
    check_export_options,
    export_model,
)
from effnetv2.export.onnx_int8 import Int8Report, export_onnx_int8

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "EXPORT_FORMATS",
    "FORMATS",
    "ONNX_OPSETS",
    "Check",
    "ExportFormat",
    "ExportReport",
    "Int8Report",
    "check_export_options",
    "export_model",
    "export_onnx_int8",
]
