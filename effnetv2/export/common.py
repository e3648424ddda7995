"""What every export path shares: the input's name, optional packages, eval mode for a block, one-line errors, and
running an ONNX file with onnxruntime."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

INPUT_NAME = "input"

Runner = Callable[[Tensor], list[Tensor]]  # a loaded file: images in, its outputs (one tensor per output) out


def require(package: str) -> Any:
    """Import an optional dependency of ONNX export, or say how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs the {package} package: pip install onnx onnxruntime (or effnetv2[export])"
        ) from e


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore each submodule's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (exporters' messages run to pages)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def onnx_runner(file: Path) -> Runner:
    """Run the ONNX file ``file`` with onnxruntime on the CPU."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(y) for y in session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})]

    return run


__all__ = ["INPUT_NAME", "Runner", "eval_mode", "first_line", "onnx_runner", "require"]
