#!/usr/bin/env python
"""Where the time of ``optimize_for_inference``'s model goes, by op kind, against this CPU's peaks.

The model (well-conditioned stand-in weights, :mod:`effnetv2.testing`) runs under ``torch.profiler`` with
input shapes recorded; each aten op's self CPU time is put in a kind (depthwise conv, 1×1 conv, k×k conv, SiLU,
squeeze-excite, residual add, layout copies, other). Convs get their FLOPs from forward hooks (each conv's weight
and output shape). Peaks measured by the same run: a large fp32 (and, with ``--bf16``, bf16) matmul for compute,
a large tensor copy for memory bandwidth. Each kind's achieved GFLOP/s (convs) or GB/s (element-wise ops, bytes
read + written) is shown against them.

``--bf16`` profiles the bfloat16 model too: on a CPU without AVX512-BF16/AMX oneDNN emulates it, slowly, and the
profiler's trace then takes many GB of memory at batch 8.

    python scripts/profile_ops.py --model efficientnetv2_rw_m --batch-size 8 --img-size 224 \\
        --write-markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from _bench import machine_info, matmul_gflops, write_markdown
from torch.profiler import ProfilerActivity, profile

import effnetv2
from effnetv2.inference import optimize_for_inference
from effnetv2.testing import condition, smooth_images

CONV_KERNELS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::_mkldnn_convolution_pointwise")
SE_OPS = (
    "aten::addmm",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::mean",
    "aten::sum",
    "aten::div_",
    "aten::mul",
    "aten::mul_",
)
COPY_OPS = ("aten::copy_", "aten::contiguous", "aten::to", "aten::_to_copy", "aten::clone")


def peak_bandwidth(mib: int = 512, rounds: int = 5) -> float:
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(rounds):
        dst.copy_(src)
    return 2 * src.numel() * 4 * rounds / (time.perf_counter() - start) / 1e9  # read + write


def conv_kind(weight_shape: list[int], groups: int) -> str:
    _, in_per_group, kh, kw = weight_shape
    if in_per_group == 1 and groups > 1:
        return "depthwise conv"
    return "1x1 conv" if kh == kw == 1 else f"{kh}x{kw} conv"


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOPs per conv kind of one forward, from each conv's weight and actual output shape (forward hooks)."""
    totals: dict[str, float] = defaultdict(float)

    def hook(module: torch.nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        totals[conv_kind(list(module.weight.shape), module.groups)] += 2 * output.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return dict(totals)


def _numel(shape: list[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def classify(name: str, shapes: list[list[int]], element_size: int) -> tuple[str, float]:
    """(kind, bytes moved) of one profiled op."""
    if name in CONV_KERNELS and len(shapes) >= 2 and len(shapes[0]) == 4 and len(shapes[1]) == 4:
        x, w = shapes[0], shapes[1]
        return conv_kind(w, x[1] // w[1] if w[1] else 1), 0.0
    first = _numel(shapes[0]) if shapes and shapes[0] else 0
    if name in ("aten::silu", "aten::silu_"):
        return "SiLU", 2 * element_size * first
    if name in SE_OPS:
        return "squeeze-excite (pool, linears, gate, scale)", element_size * sum(_numel(s) for s in shapes if s)
    if name in ("aten::add", "aten::add_"):
        return "residual add", 3 * element_size * first
    if name in COPY_OPS:
        return "copies / layout conversions", 2 * element_size * first
    return "other (dispatch, framework)", 0.0


def profile_model(model: torch.nn.Module, x: torch.Tensor, iterations: int) -> tuple[dict[str, dict], float]:
    element_size = next(model.parameters()).element_size()
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(iterations):
            model(x)
        wall = (time.perf_counter() - start) / iterations
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iterations):
                model(x)
    kinds: dict[str, dict] = defaultdict(lambda: dict(ms=0.0, flops=0.0, bytes=0.0))
    for kind, flops in conv_flops(model, x).items():
        kinds[kind]["flops"] = flops
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total <= 0:
            continue
        kind, moved = classify(event.key, event.input_shapes, element_size)
        kinds[kind]["ms"] += event.self_cpu_time_total / 1e3 / iterations
        kinds[kind]["bytes"] += moved * event.count / iterations
    return {k: v for k, v in kinds.items() if v["ms"] > 0}, wall * 1e3


def markdown(out: dict[str, Any]) -> str:
    m, peaks, results = out["machine"], out["peaks"], out["results"]
    runs = list(results)
    lines = [
        f"### Where the time goes: `optimize_for_inference`, `{out['model']}`, batch {out['batch']} × "
        f"{out['img_size']} px",
        "",
        f"Generated by `python scripts/profile_ops.py` on {m['cpu']}, ISA {', '.join(m['cpu_isa'])}, "
        f"{m['torch_threads']} threads, torch {m['torch']}. Peaks measured in the same run: fp32 matmul "
        f"{peaks['fp32_gflops']:.0f} GFLOP/s"
        + (f", bf16 matmul {peaks['bf16_gflops']:.0f} GFLOP/s" if "bf16_gflops" in peaks else "")
        + f", copy bandwidth {peaks['bandwidth_gbs']:.1f} GB/s. Self CPU time per forward under torch.profiler; "
        "convs in GFLOP/s (FLOPs from each conv's weight and output shape) against the matmul peak, other ops in "
        "GB/s (bytes read + written) against the copy bandwidth.",
        "",
        "| op kind | " + " | ".join(f"{r} ms | {r} share | {r} rate" for r in runs) + " |",
        "|---|" + "---:|---:|---:|" * len(runs),
    ]
    order = sorted(results[runs[0]]["kinds"], key=lambda k: -results[runs[0]]["kinds"][k]["ms"])

    def cells(run: str, kind: str) -> str:
        k = results[run]["kinds"].get(kind)
        if not k:
            return "– | – | –"
        total = sum(v["ms"] for v in results[run]["kinds"].values())
        peak = peaks[f"{run}_gflops"]
        if k["flops"]:
            gflops = k["flops"] / k["ms"] / 1e6
            rate = f"{gflops:.0f} GFLOP/s ({100 * gflops / peak:.0f} %)"
        elif k["bytes"]:
            gbs = k["bytes"] / k["ms"] / 1e6
            rate = f"{gbs:.1f} GB/s ({100 * gbs / peaks['bandwidth_gbs']:.0f} %)"
        else:
            rate = "–"
        return f"{k['ms']:.1f} | {100 * k['ms'] / total:.0f} % | {rate}"

    lines += [f"| {kind} | " + " | ".join(cells(r, kind) for r in runs) + " |" for kind in order]
    lines.append(
        "| **wall time (unprofiled)** | " + " | ".join(f"{results[r]['wall_ms']:.0f} | | " for r in runs) + "|"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnetv2_rw_m", choices=effnetv2.list_models())
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="profile the bfloat16 model too")
    p.add_argument("--write-markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    model = condition(effnetv2.create_model(args.model), smooth_images(8, 128, seed=1)).eval()
    x = smooth_images(args.batch_size, args.img_size, seed=3)
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if args.bf16 else {})}
    peaks = {f"{name}_gflops": matmul_gflops(dtype) for name, dtype in dtypes.items()}
    peaks["bandwidth_gbs"] = peak_bandwidth()
    results = {}
    for name, dtype in dtypes.items():
        kinds, wall = profile_model(optimize_for_inference(model, dtype), x, args.iterations)
        results[name] = dict(wall_ms=wall, kinds=kinds)
    out = dict(
        model=args.model,
        batch=args.batch_size,
        img_size=args.img_size,
        peaks=peaks,
        machine=machine_info(torch.device("cpu")),
        results=results,
    )
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.write_markdown:
        write_markdown(args.write_markdown, markdown(out), section="profile")


if __name__ == "__main__":
    main()
