#!/usr/bin/env python
"""int8 with the squeeze-excite input in uint8, against the default int8: speed and agreement (issue 30, item 2).

By default the depthwise conv before each squeeze-excite writes float (SE is kept float, so nothing quantizes its
input), and SE's pooling and scaling read that float map. This variant also quantizes the depthwise conv's SiLU
output (the quantizer annotates it), so the conv writes uint8 and SE reads uint8: less memory traffic, one more
rounding. Measured and not kept (BENCHMARKS.md): the default stays as :mod:`effnetv2.inference.int8` builds it.

``speed``: both int8 models compiled, with compiled bf16 beside them, in paired rounds at batch 8 and 1.
``agreement``: both quantized graphs (reference ops, uncompiled) against an fp64 copy on blended images through the
project's one comparison (top-1 as fp64 where the answer is clear).

    python scripts/int8_se_input_ab.py speed [--model efficientnetv2_rw_m --img-size 320 --calibration 256]
    python scripts/int8_se_input_ab.py agreement [--test-images 192]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator
from typing import Any

import torch
from _bench import ARCH, int8_calibration_images, int8_test_images, log, paired_rounds, stand_in_pair

import effnetv2.inference.int8 as int8_module
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, reference, run_batched
from effnetv2.testing import mixed_images


def annotate_se_inputs(graph: torch.fx.GraphModule, config: Any) -> int:
    """Quantize the output of every SiLU that feeds a squeeze-excite's pooling (``mean``) and that the quantizer left
    unannotated; how many it found."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    found = 0
    for node in graph.graph.nodes:
        if node.target != torch.ops.aten.mean.dim:
            continue
        source = node.args[0]
        if "silu" in str(source.target) and source.meta.get("quantization_annotation") is None:
            source.meta["quantization_annotation"] = QuantizationAnnotation(
                output_qspec=config.output_activation, _annotated=True
            )
            found += 1
    return found


@contextlib.contextmanager
def se_input_in_uint8() -> Iterator[None]:
    """While active, :func:`effnetv2.inference.int8.quantize_int8` also quantizes each squeeze-excite's input."""
    original = int8_module._quantizer

    def quantizer(x86: Any, fp32: torch.nn.Module, keep_float: Any) -> tuple[Any, str]:
        base, kept = original(x86, fp32, keep_float)
        annotate = base.annotate

        def annotate_too(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
            graph = annotate(graph)
            log(f"squeeze-excite inputs quantized: {annotate_se_inputs(graph, base.global_config)}")
            return graph

        base.annotate = annotate_too
        return base, kept + "; the squeeze-excite inputs in uint8"

    int8_module._quantizer = quantizer
    try:
        yield
    finally:
        int8_module._quantizer = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("speed", "agreement"))
    p.add_argument("--model", default=ARCH)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--test-images", type=int, default=192, help="agreement: blended test images")
    p.add_argument("--rounds", type=int, default=8, help="speed: paired rounds at batch 8 (batch 1: twice as many)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ours, exemplars, _ = stand_in_pair(args.model, args.img_size)
    calibration = int8_calibration_images(exemplars, args.calibration, args.img_size)
    compiled = args.what == "speed"
    models = {"int8 (default)": int8_module.quantize_int8(ours, calibration, compile=compiled)}
    with se_input_in_uint8():
        models["int8, squeeze-excite input in uint8"] = int8_module.quantize_int8(ours, calibration, compile=compiled)
    if args.what == "agreement":
        test = int8_test_images(exemplars, args.test_images)
        ref = reference(ours, test)
        for name, model in models.items():
            print(f"{name}: {compare(run_batched(model, test), ref, torch.int8).describe()}", flush=True)
        return 0
    models["bf16 compiled"] = optimize_for_inference(ours, torch.bfloat16, compile=True)
    for batch in (8, 1):
        x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
        runs = {name: (lambda m=model, x=x: m(x)) for name, model in models.items()}
        times = paired_rounds(runs, args.rounds * (2 if batch == 1 else 1), 2, label=f"batch {batch}")
        for name, t in times.items():
            print(f"batch {batch} {name}: {1e3 * statistics.median(t):.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
