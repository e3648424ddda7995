"""int8 inference in PyTorch: post-training static quantization through PT2E and the x86 inductor quantizer.

``optimize_for_inference(model, dtype=torch.int8, calibration=IMAGES)`` calls :func:`quantize_int8`:

1. the fp32 inference copy (BatchNorm folded, channels_last) is captured with ``torch.export``, batch size dynamic;
2. torchao's PT2E flow (``prepare_pt2e`` / ``convert_pt2e`` with ``X86InductorQuantizer``, PyTorch's maintained
   route since ``torch.ao.quantization``'s PT2E moved to torchao) quantizes the convolutions: int8 weights per
   output channel (symmetric), uint8 activations per tensor with ranges from a histogram of the calibration
   images' activations. **Kept in float: what the one int8 policy names**
   (:mod:`effnetv2.inference.int8_policy`, shared with int8 ONNX export): SiLU and the squeeze-excite gates, the
   stem convolution, squeeze-excite (its ``Linear`` layers on the pooled vector), the last convolution and the
   classifier, where quantization cost the most top-1 agreement (:data:`KEPT_FLOAT`);
3. ``torch.compile`` with weight freezing lowers the result to oneDNN's int8 convolutions (VNNI / AMX-INT8 where
   the CPU has them), with the dequantize, SiLU and requantize steps fused around them. Without compiling, the
   quantized graph runs as reference float ops: right numbers, slower than fp32 (for checking accuracy only).

Needs ``torchao`` (``pip install "effnetv2[int8]"``). Every 4th calibration image (when there are 8 or more) is held
out and checks the result: :attr:`Int8EfficientNetV2.agreement` (a :class:`~effnetv2.inference.compare.Comparison`)
holds its error from an fp64 copy of the model next to fp32's own, and its top-1 agreement with fp64, as the
quantized graph's reference ops compute it; where the compiled kernels compute less exactly (no VNNI:
:mod:`effnetv2.inference.int8_kernels`), :attr:`Int8EfficientNetV2.kernel_caveat` says so.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from effnetv2.inference.calibration import (
    Calibration,
    calibration_images,
    split_holdout,
)
from effnetv2.inference.compare import Comparison, compare, reference
from effnetv2.inference.compiled import FrozenCompiled, compile_mode
from effnetv2.inference.folded import fold_for_inference
from effnetv2.inference.int8_kernels import int8_pair_sums_saturate
from effnetv2.inference.int8_policy import KEPT_FLOAT_MODULES
from effnetv2.model import EfficientNetV2, EfficientNetV2Features, check_input

CALIBRATION_BATCH = 8  # images per calibration forward pass
# Modules of the inference copy left in float by default: the int8 policy's module names (fnmatch patterns; the
# inference copy names its modules as the model does). keep_float= also takes module types. Adding "*.project" (the
# blocks' 1x1 projections and residual adds) buys accuracy at small inputs for about a third of the int8 speed-up
# (BENCHMARKS.md).
KEPT_FLOAT: tuple[Union[str, type[nn.Module]], ...] = KEPT_FLOAT_MODULES
TORCHAO_HINT = 'int8 inference needs torchao: pip install "effnetv2[int8]" (or pip install torchao)'


def _torchao() -> Any:
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as e:
        raise ImportError(f"{TORCHAO_HINT} ({e})") from e
    return quantize_pt2e, x86_inductor_quantizer


# --------------------------------------------------------------------------------------------------------------
# The int8 model


class Int8EfficientNetV2(nn.Module):
    """The int8 classifier or feature extractor made by :func:`quantize_int8` (inference only, CPU).

    ``forward`` takes float images at the calibrated size (any batch size; each new batch size compiles once) and
    returns float32 outputs like the model's. ``agreement`` compares the quantized graph (before compiling) with an
    fp64 copy of the model on held-out calibration images, next to the fp32 model's own error there.
    """

    def __init__(
        self,
        graph: nn.Module,
        source: nn.Module,
        img_size: tuple[int, int],
        agreement: Optional[Comparison],
        calibration_images: int,
        compiled: bool,
        kept_float: str,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.in_chans = source.in_chans
        self.img_size = img_size
        self.pretrained_cfg = dict(source.pretrained_cfg)
        self.feature_info = source.feature_info
        self.num_classes = getattr(source, "num_classes", 0)
        self.num_features = getattr(source, "num_features", None)
        self.agreement = agreement
        self.calibration_images = calibration_images
        self.compiled = compiled
        self.kept_float = kept_float
        self.training = False

    @property
    def saturating_kernels(self) -> bool:
        """Whether this model runs oneDNN int8 kernels that saturate pair sums (compiled, on a CPU without VNNI)."""
        return self.compiled and bool(int8_pair_sums_saturate())

    @property
    def kernel_caveat(self) -> Optional[str]:
        """Where this compiled model computes less exactly than ``agreement`` (the quantized graph's reference ops)
        says, in words; None where it computes the same sums (VNNI, AMX; or not compiled)."""
        if not self.saturating_kernels:
            return None
        return (
            "this CPU's int8 kernels (no VNNI) add pairs of products in saturating 16-bit sums: the compiled model "
            "lands a little further from fp64 than this check (rw_m at 320 px: 98.7 % of clear answers kept against "
            "99.4 %, BENCHMARKS.md)"
        )

    def forward(self, x: Tensor) -> Union[Tensor, list[Tensor]]:
        x = check_input(x, self.in_chans)
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"this int8 model was calibrated and captured for {self.img_size[0]}x{self.img_size[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; resize the images or quantize again at that size"
            )
        out = self.graph(x.float().contiguous(memory_format=torch.channels_last))
        return list(out) if isinstance(out, (tuple, list)) else out

    def train(self, mode: bool = True) -> Int8EfficientNetV2:
        if mode:
            raise RuntimeError("an int8 model is for inference only; train the original model instead")
        self.training = False  # an exported graph refuses train()/eval(): it is traced in eval mode already
        return self

    def extra_repr(self) -> str:
        saturating = ", int8 pair sums saturate (no VNNI)" if self.saturating_kernels else ""
        return f"img_size={self.img_size}, compiled={self.compiled}{saturating}, kept in float: {self.kept_float}"


def _quantizer(
    x86: Any, fp32: nn.Module, keep_float: Optional[Sequence[Union[str, type[nn.Module]]]]
) -> tuple[Any, str]:
    """The quantizer leaving ``keep_float`` (default :data:`KEPT_FLOAT`) in float, and what it keeps, in words."""
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    names = [name for name, _ in fp32.named_modules() if name]
    strict = keep_float is not None  # the defaults name "head" and "classifier", which features_only lacks
    kept_names: list[str] = ["SiLU", "sigmoid"]
    for kept in KEPT_FLOAT if keep_float is None else keep_float:
        if isinstance(kept, str):
            matched = fnmatch.filter(names, kept)
            if matched:
                kept_names.append(kept)
            elif strict:
                raise ValueError(f"keep_float: no module of the inference copy is named like {kept!r}")
            for name in matched:
                quantizer.set_module_name_qconfig(name, None)
        elif isinstance(kept, type) and issubclass(kept, nn.Module):
            quantizer.set_module_type_qconfig(kept, None)
            kept_names.append(kept.__name__)
        else:
            raise TypeError(f"keep_float takes module names (patterns) or nn.Module types, got {kept!r}")
    return quantizer, ", ".join(kept_names)


def _batches(images: Tensor) -> Iterator[Tensor]:
    for i in range(0, images.shape[0], CALIBRATION_BATCH):
        yield images[i : i + CALIBRATION_BATCH].contiguous(memory_format=torch.channels_last)


def _run(module: nn.Module, images: Tensor) -> list[Tensor]:
    outs = [module(batch) for batch in _batches(images)]
    if isinstance(outs[0], Tensor):
        return [torch.cat(outs)]
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


def quantize_int8(
    model: Union[EfficientNetV2, EfficientNetV2Features],
    calibration: Calibration,
    *,
    calibration_limit: Optional[int] = None,
    compile: Union[bool, str] = True,
    keep_float: Optional[Sequence[Union[str, type[nn.Module]]]] = None,
) -> Int8EfficientNetV2:
    """An int8 copy of ``model`` for CPU inference, calibrated on ``calibration`` (see the module docstring).

    Args:
        model: an fp32 :class:`EfficientNetV2` or :class:`EfficientNetV2Features` on the CPU (not changed).
        calibration: normalised images (N, C, H, W), a DataLoader of them, or a folder of image files (read through
            the model's eval transform). The int8 model takes inputs of the calibration images' size.
        calibration_limit: at most this many images are used (every 4th of them checks the result); default: all of a
            tensor, :data:`~effnetv2.inference.calibration.DEFAULT_CALIBRATION_IMAGES` of files or a loader.
        compile: lower to oneDNN's int8 kernels with ``torch.compile`` (the fast path; the first call at each
            batch size compiles, ~20 s for ``tf_efficientnetv2_b0`` on 2 cores). ``False`` runs the quantized
            graph as reference float ops (same numbers, slower than fp32: for checking accuracy). A
            ``torch.compile`` mode name (``"max-autotune"``) compiles in that mode
            (:func:`~effnetv2.inference.compiled.compile_mode`).
        keep_float: modules left in float, by name in the fp32 inference copy (``fnmatch`` patterns such as
            ``"*.project"``) or by type; default :data:`KEPT_FLOAT`. SiLU and the gates are float in any case.

    Raises ``ImportError`` without torchao, ``ValueError``/``TypeError`` for bad calibration data or a model that is
    not on the CPU, ``RuntimeError`` when the int8 model returns non-finite values.
    """
    mode = compile_mode(compile)
    quantize_pt2e, x86 = _torchao()
    _check_model(model)
    images = calibration_images(calibration, model, calibration_limit)
    check_input(images, model.in_chans)
    calibrate, check = split_holdout(images)
    graph, kept = _quantized_graph(quantize_pt2e, x86, model, calibrate, keep_float)
    reference_model = Int8EfficientNetV2(graph, model, tuple(images.shape[-2:]), None, calibrate.shape[0], False, kept)
    reference_model.agreement = _held_out_check(reference_model, model, check)
    if mode is None:
        return reference_model
    return Int8EfficientNetV2(
        FrozenCompiled(graph, mode),
        model,
        reference_model.img_size,
        reference_model.agreement,
        calibrate.shape[0],
        True,
        kept,
    )


def _check_model(model: nn.Module) -> None:
    """Refuse what PT2E int8 cannot quantize: another kind of module, or a model off the CPU."""
    if not isinstance(model, (EfficientNetV2, EfficientNetV2Features)):
        raise TypeError(f"expected an effnetv2 EfficientNetV2 or EfficientNetV2Features, got {type(model).__name__}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 inference is for CPUs (oneDNN's int8 kernels); move the model to the CPU first")


def _quantized_graph(
    quantize_pt2e: Any,
    x86: Any,
    model: nn.Module,
    calibrate: Tensor,
    keep_float: Optional[Sequence[Union[str, type[nn.Module]]]],
) -> tuple[nn.Module, str]:
    """The fp32 inference copy captured (batch dynamic), calibrated on ``calibrate`` and converted to int8; and what
    it keeps in float, in words."""
    fp32 = fold_for_inference(model)  # BatchNorm folded: the quantizer sees conv + bias, as inference runs
    with torch.no_grad():
        batch = torch.export.Dim("batch", min=1, max=65536)
        example = next(_batches(calibrate))
        exported = torch.export.export(fp32, (example,), dynamic_shapes=({0: batch},)).module()
        quantizer, kept = _quantizer(x86, fp32, keep_float)
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        _run(prepared, calibrate)
        return quantize_pt2e.convert_pt2e(prepared), kept


def _held_out_check(int8: Int8EfficientNetV2, model: nn.Module, check: Tensor) -> Comparison:
    """The quantized graph on the held-out images against an fp64 copy of ``model``, next to fp32 (unjudged)."""
    # Checked before lowering: the quantized graph's reference ops (the compiled kernels compute the same
    # quantized convolutions, fused; tests/test_quantize.py holds them to it; on CPUs without VNNI their u8 x s8
    # pair sums saturate at int16, a little further from fp64, which kernel_caveat says). A check through the
    # compiled model would cost a compile at the check's batch size on top of the user's, and the user's next
    # batch size other than 1 would compile with a dynamic batch dimension (torch.compile's automatic dynamic
    # shapes; batch 1 is always specialised).
    with torch.no_grad():
        ours = _run(int8, check)
        ref = reference(model, check, batch=CALIBRATION_BATCH)
    if not all(o.isfinite().all() for o in ours):
        raise RuntimeError(f"int8 quantization failed its check on {check.shape[0]} images: NaN or infinite outputs")
    # int8 has no eager counterpart to be judged against: its error from fp64 is reported next to fp32's
    return compare(ours, ref, torch.int8, logits=int8.num_classes > 0)


__all__ = ["KEPT_FLOAT", "Calibration", "Int8EfficientNetV2", "calibration_images", "quantize_int8"]
