#!/usr/bin/env python
"""int8 quantization variants against the default int8: speed and agreement (issue 30, item 2).

Each variant changes what the PT2E x86 quantizer annotates, after it has annotated the graph as
:mod:`effnetv2.inference.int8` asks:

- ``se-uint8``: the depthwise conv's SiLU output before each squeeze-excite is quantized too, so the conv writes
  uint8 and SE's pooling and scaling read uint8 (by default they read float: SE is kept float, so nothing quantizes
  its input). Less memory traffic, one more rounding.
- ``residual-float``: the residual stream stays float. By default each block's residual add reads the skip input
  quantized and its sum is stored in uint8 (the next block's conv and the next add both read that one copy), so the
  stream is rounded to 8 bits once per block; here the add reads the float skip input and the next add reads the
  float sum, while each conv still reads a uint8 copy of it. The projection conv then writes float.
- ``se-uint8-full-range``: ``se-uint8`` with the squeeze-excite inputs' ranges from the calibration's minimum and
  maximum (no clipping) instead of the histogram observer's (which clips the tail to lower the rounding error).
- ``both``: ``se-uint8`` and ``residual-float`` together.
- ``se-bf16``: after conversion, the squeeze-excite ``Linear`` layers (kept float) in bf16 instead of float32, so
  inductor runs them as oneDNN bf16 matmuls (AMX where the CPU has it); their input is cast to bf16 and their output
  back to float32.
- ``se-path-bf16``: after conversion, the depthwise conv before each squeeze-excite computes in bf16 and writes bf16
  (PyTorch's int8-mixed-bf16 lowering, applied to that conv only), and the squeeze-excite and its gated map stay
  bf16 until the projection conv's input is quantized: half the bytes of the float32 map it writes and reads.

- ``head-int8``: the last 1×1 convolution (``head``, 1280-2152 channels) quantized too; the default keeps it float
  (:data:`effnetv2.inference.int8_policy.KEPT_FLOAT_PARTS`). Its agreement was measured the same (rw_m on AMX,
  rw_t on AVX2); its speed is what this variant measures.
- ``strided-float``: a ``tf_`` network's strided convs with TensorFlow's "SAME" padding kept float, as they were
  until the inference copy made them plain convolutions that the quantizer recognises (four in
  ``tf_efficientnetv2_b0`` and ``_s``; none in the ``rw`` networks, where this is the default).
- ``reduce-range``, ``weights-7bit``, ``min-max``, ``moving-average``, ``histogram-4096``: the quantizer's config
  changed (:data:`CONFIGS`): 7-bit activations (what the quantizer advises for CPUs without VNNI, whose int8 pair
  sums can saturate), or weights in [-64, 63] (the other way to keep those sums from saturating), or every
  activation's range from the calibration's minimum and maximum, from a moving average of each batch's, or from a
  histogram of 4096 bins instead of 2048.

``speed``: the default and each variant compiled, with compiled bf16 beside them, in paired rounds at batch 8 and 1.
``agreement``: the quantized graphs (reference ops, uncompiled) against an fp64 copy on blended test images through
the project's one comparison (top-1 as fp64 where the answer is clear, error from fp64).

    python scripts/int8_variants_ab.py speed [--variants se-uint8 residual-float both] [--model ... --img-size 320]
    python scripts/int8_variants_ab.py agreement [--test-images 192 --calibration 256] [--compiled]

``agreement --compiled`` also compiles each graph and compares the compiled copy (this CPU's oneDNN int8 kernels)
with fp64 and with the graph's reference ops, and says whether those kernels saturate
(``effnetv2.inference.int8_kernels``: CPUs without VNNI). ``--variants`` with no names runs the default int8 alone
(``agreement --variants --compiled``: what this CPU's kernels give against the quantized graph).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _bench import (
    ARCH,
    int8_calibration_images,
    int8_test_images,
    log,
    paired_ratio,
    paired_rounds,
    stand_in_pair,
)

import effnetv2.inference.int8 as int8_module
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, reference, run_batched
from effnetv2.inference.compiled import FrozenCompiled
from effnetv2.inference.int8_kernels import int8_pair_sums_saturate
from effnetv2.testing import mixed_images

ADDS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)


def annotate_se_inputs(graph: torch.fx.GraphModule, config: Any, observer: Any = None) -> int:
    """Quantize the output of every SiLU that feeds a squeeze-excite's pooling (``mean``) and that the quantizer left
    unannotated (its range from the quantizer's activation observer, or ``observer``); how many it found."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    qspec = config.output_activation
    if observer is not None:
        qspec = dataclasses.replace(qspec, observer_or_fake_quant_ctr=observer)
    found = 0
    for node in graph.graph.nodes:
        if node.target != torch.ops.aten.mean.dim:
            continue
        source = node.args[0]
        if "silu" in str(source.target) and source.meta.get("quantization_annotation") is None:
            source.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=qspec, _annotated=True)
            found += 1
    return found


def annotate_se_inputs_full_range(graph: torch.fx.GraphModule, config: Any) -> int:
    """:func:`annotate_se_inputs` with each range the calibration's minimum to maximum: the default histogram
    observer clips the tail of the SiLU output, which biases the squeeze-excite's mean; this one clips nothing."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    return annotate_se_inputs(graph, config, MinMaxObserver.with_args(eps=2**-12))


def keep_residuals_float(graph: torch.fx.GraphModule, config: Any) -> int:
    """Let every conv + add pattern read its skip input in float (the quantizer asks for it quantized); how many."""
    found = 0
    for node in graph.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if node.target in ADDS and annotation is not None and annotation.input_qspec_map:
            annotation.input_qspec_map.clear()
            found += 1
    return found


def _cast_inputs(graph: torch.fx.Graph, node: torch.fx.Node, dtype: torch.dtype) -> None:
    """Make ``node`` read each of its tensor arguments (input, weight, bias) cast to ``dtype``."""
    with graph.inserting_before(node):
        node.args = tuple(
            graph.call_function(torch.ops.aten.to.dtype, (arg, dtype)) if isinstance(arg, torch.fx.Node) else arg
            for arg in node.args
        )


def _is_se_linear(node: torch.fx.Node) -> bool:
    weight = node.args[1] if node.target == torch.ops.aten.linear.default else None
    return isinstance(weight, torch.fx.Node) and weight.op == "get_attr" and ".se." in str(weight.target)


def se_linears_in_bf16(graph: torch.fx.GraphModule) -> int:
    """After conversion: every squeeze-excite ``Linear`` (kept float) reads its input, weight and bias in bf16 and
    its result is cast back to float32, so that inductor runs it as a oneDNN bf16 matmul (AMX); how many."""
    found = 0
    for node in [n for n in graph.graph.nodes if _is_se_linear(n)]:
        _cast_inputs(graph.graph, node, torch.bfloat16)
        with graph.graph.inserting_after(node):
            back = graph.graph.call_function(torch.ops.aten.to.dtype, (node, torch.float32))
        node.replace_all_uses_with(back, delete_user_cb=lambda user, back=back: user is not back)
        found += 1
    graph.graph.lint()
    graph.recompile()
    return found


def se_path_in_bf16(graph: torch.fx.GraphModule) -> int:
    """After conversion: the depthwise conv before each squeeze-excite reads its dequantized input, weight and bias
    in bf16, so its SiLU output, the squeeze-excite (pooling, ``Linear`` layers, gate) and the gated map stay bf16
    until the projection's input is quantized (inductor's int8-mixed-bf16 patterns: the conv writes bf16); how many
    squeeze-excites."""
    found = 0
    for node in list(graph.graph.nodes):
        if node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.graph.erase_node(node)  # export's dtype checks: float32 no longer holds
        elif _is_se_linear(node):
            _cast_inputs(graph.graph, node, torch.bfloat16)
        elif node.target == torch.ops.aten.mean.dim and "silu" in str(node.args[0].target):
            conv = node.args[0].args[0]
            if conv.target == torch.ops.aten.conv2d.default:
                _cast_inputs(graph.graph, conv, torch.bfloat16)
                found += 1
    graph.graph.lint()
    graph.recompile()
    return found


def _observed_with(observer: str, **kwargs: Any) -> Callable[[Any, Any], Any]:
    """A change of the quantizer's config: every activation's range from torchao's ``observer`` (with ``kwargs``)
    instead of the default config's histogram observer."""

    def change(x86: Any, config: Any) -> Any:
        from torchao.quantization.pt2e import observer as observers

        ctr = getattr(observers, observer).with_args(eps=2**-12, **kwargs)  # eps: the default config's
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
        return dataclasses.replace(config, input_activation=spec, output_activation=spec)

    return change


# Changes of the quantizer's global config, (x86 quantizer module, default config) -> config
CONFIGS: dict[str, Callable[[Any, Any], Any]] = {
    # the quantizer's advice for CPUs without VNNI: 7-bit activations, so that the u8 x s8 pair sums of AVX2's
    # vpmaddubsw (saturating at int16) cannot overflow
    "reduce-range": lambda x86, config: x86.get_default_x86_inductor_quantization_config(reduce_range=True),
    # the other way to keep those pair sums in int16: weights in [-64, 63] (2 * 255 * 64 < 2**15), 8-bit activations
    "weights-7bit": lambda x86, config: dataclasses.replace(
        config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63)
    ),
    "min-max": _observed_with("MinMaxObserver"),  # no clipping
    "moving-average": _observed_with("MovingAverageMinMaxObserver", averaging_constant=0.1),
    "histogram-4096": _observed_with("HistogramObserver", bins=4096),  # the default's 2048 bins, doubled
}


def strided_same_padded(fp32: torch.nn.Module) -> tuple[str, ...]:
    """The inference copy's strided convs with TensorFlow's padding (``tf_`` networks), the stem aside."""
    return tuple(name for name, m in fp32.named_modules() if getattr(m, "same_padding", False) and name != "stem")


# variants that change what the policy keeps float: their keep_float from the fp32 inference copy
KEEP_FLOAT: dict[str, Callable[[torch.nn.Module], tuple[str, ...]]] = {
    "head-int8": lambda fp32: tuple(name for name in int8_module.KEPT_FLOAT if name != "head"),
    "strided-float": lambda fp32: (*int8_module.KEPT_FLOAT, *strided_same_padded(fp32)),
}

VARIANTS: dict[str, tuple[Callable[[torch.fx.GraphModule, Any], int], ...]] = {
    "se-uint8": (annotate_se_inputs,),
    "se-uint8-full-range": (annotate_se_inputs_full_range,),
    "residual-float": (keep_residuals_float,),
    "both": (annotate_se_inputs, keep_residuals_float),
    "se-bf16": (),  # changes to the converted graph: CONVERTED below
    "se-path-bf16": (),
    **{name: () for name in CONFIGS},  # the quantizer's config: CONFIGS
    **{name: () for name in KEEP_FLOAT},  # what stays float: KEEP_FLOAT
}
CONVERTED: dict[str, Callable[[torch.fx.GraphModule], int]] = {
    "se-bf16": se_linears_in_bf16,
    "se-path-bf16": se_path_in_bf16,
}


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """While active, :func:`effnetv2.inference.int8.quantize_int8` quantizes as the variant ``name`` says."""
    original = int8_module._quantizer
    steps = VARIANTS[name]

    def quantizer(x86: Any, fp32: torch.nn.Module, keep_float: Any) -> tuple[Any, str]:
        base, kept = original(x86, fp32, KEEP_FLOAT[name](fp32) if name in KEEP_FLOAT else keep_float)
        if name in CONFIGS:
            base.set_global(CONFIGS[name](x86, base.global_config))
        annotate = base.annotate

        def annotate_too(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
            graph = annotate(graph)
            for step in steps:
                log(f"{name}: {step.__name__} changed {step(graph, base.global_config)} nodes")
            return graph

        base.annotate = annotate_too
        return base, f"{kept}; variant {name}"

    original_graph = int8_module._quantized_graph

    def quantized_graph(*args: Any) -> tuple[torch.nn.Module, str]:
        graph, kept = original_graph(*args)
        if name in CONVERTED:
            log(f"{name}: {CONVERTED[name].__name__} changed {CONVERTED[name](graph)} nodes")
        return graph, kept

    int8_module._quantizer = quantizer
    int8_module._quantized_graph = quantized_graph
    try:
        yield
    finally:
        int8_module._quantizer = original
        int8_module._quantized_graph = original_graph


def compiled_against(model: Any, graph_out: list[torch.Tensor], test: torch.Tensor, ref: Any) -> str:
    """The compiled copy of ``model``'s quantized graph (this CPU's oneDNN int8 kernels) against fp64, and how far it
    lands from the graph's reference ops (``graph_out``): largest difference over the logits' range, top-1 changed."""
    fast = int8_module.Int8EfficientNetV2(
        FrozenCompiled(copy.deepcopy(model.graph), "default"), model, model.img_size, None, 0, True, model.kept_float
    )
    out = run_batched(fast, test)
    apart = float((out[0] - graph_out[0]).abs().max() / graph_out[0].abs().max())
    changed = int((out[0].argmax(1) != graph_out[0].argmax(1)).sum())
    return (
        f"{compare(out, ref, torch.int8).describe()}; against the graph's reference ops: {apart:.3g} apart, "
        f"top-1 changed on {changed} of {test.shape[0]}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("speed", "agreement"))
    p.add_argument(
        "--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS), help="none: the default alone"
    )
    p.add_argument("--model", default=ARCH)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--test-images", type=int, default=192, help="agreement: blended test images")
    p.add_argument("--rounds", type=int, default=8, help="speed: paired rounds at batch 8 (batch 1: twice as many)")
    p.add_argument("--compile", default="True", help="speed: the compile mode (True, or e.g. max-autotune)")
    p.add_argument(
        "--compiled",
        action="store_true",
        help="agreement: each graph's compiled copy too (this CPU's int8 kernels), against fp64 and the graph",
    )
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ours, exemplars, _ = stand_in_pair(args.model, args.img_size)
    calibration = int8_calibration_images(exemplars, args.calibration, args.img_size)
    compiled: bool | str = False
    if args.what == "speed":
        compiled = True if args.compile == "True" else args.compile
    models = {"int8 (default)": int8_module.quantize_int8(ours, calibration, compile=compiled)}
    for name in args.variants:
        with variant(name):
            models[f"int8, {name}"] = int8_module.quantize_int8(ours, calibration, compile=compiled)
    if args.what == "agreement":
        if args.compiled:
            print(f"this CPU's oneDNN int8 pair sums saturate: {int8_pair_sums_saturate()}", flush=True)
        test = int8_test_images(exemplars, args.test_images)
        ref = reference(ours, test)
        for name, model in models.items():
            graph_out = run_batched(model, test)
            print(f"{name}: {compare(graph_out, ref, torch.int8).describe()}", flush=True)
            if args.compiled:
                print(f"{name}, compiled: {compiled_against(model, graph_out, test, ref)}", flush=True)
        return 0
    models["bf16 compiled"] = optimize_for_inference(ours, torch.bfloat16, compile=compiled)
    for batch in (8, 1):
        x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
        runs = {name: (lambda m=model, x=x: m(x)) for name, model in models.items()}
        times = paired_rounds(runs, args.rounds * (2 if batch == 1 else 1), 2, label=f"batch {batch}")
        base = times["int8 (default)"]
        for name, t in times.items():
            ratio = paired_ratio(base, t)
            print(f"batch {batch} {name}: {1e3 * statistics.median(t):.1f} ms, {ratio:.3f}× int8 (default)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
