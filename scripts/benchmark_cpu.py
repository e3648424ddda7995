#!/usr/bin/env python
"""Issue 16's CPU goals in one run: optimised fp32, bf16 and int8 against timm's best eager fp32, and their quality.

Speed: paired rounds (each round runs every path once, so a slow moment of the machine hits all alike) at batch 8
and batch 1 of ``--img-size`` px, against timm eager fp32 in channels_last (timm's fastest eager layout). Paths:
``optimize_for_inference`` fp32 and bf16, each also compiled (``compile=True``), and int8
(``optimize_for_inference(dtype=torch.int8)``: PT2E, compiled to oneDNN int8 kernels). Compiling happens in the
warm-up rounds. The CPU's own peaks (large fp32/bf16 matmuls, int8 ``torch._int_mm``) are measured in the same run.

Quality, on the well-conditioned stand-in (:mod:`effnetv2.testing`: 10-class nearest-prototype classifier,
blended images from confident to near ties), through the project's one comparison
(:mod:`effnetv2.inference.compare`): each path's largest relative error against an fp64 copy and its limit, top-1
agreement with fp64 (overall and on the images with a clear answer, issue 16's ≥ 99 % bar), next to timm's own bf16
autocast on the same images.

    python scripts/benchmark.py --cpu-goals --write-markdown BENCHMARKS.md    # the same as:
    python scripts/benchmark_cpu.py --write-markdown BENCHMARKS.md             # ~15 min for rw_m on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch
from _bench import (
    ARCH,
    channels_last,
    comparison_dict,
    log,
    machine_info,
    matmul_gflops,
    paired_ratio,
    paired_rounds,
    stand_in_pair,
    write_markdown,
)

import effnetv2
from effnetv2.atomic import write_text
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, reference, run_batched
from effnetv2.testing import mixed_images, smooth_images

GOALS = {"fp32": 1.3, "bf16": 4.0, "int8": 3.0}  # × timm eager fp32 channels_last (issue 16)
CLEAR_BAR = 0.99  # top-1 agreement with fp32 on images with a clear fp32 answer


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=ARCH, choices=effnetv2.list_models())
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1])
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per batch size (batch 1: twice as many)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compiles happen here)")
    p.add_argument("--calibration", type=int, default=256, help="int8 calibration images (every 4th held out)")
    p.add_argument("--quality-images", type=int, default=96, help="blended images for top-1 agreement")
    p.add_argument("--skip-compile", action="store_true", help="leave out the compiled fp32/bf16 paths")
    p.add_argument("--write-markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    size = args.img_size

    log(f"building {args.model} at {size} px (stand-in weights) and timm's copy")
    ours, exemplars, theirs = stand_in_pair(args.model, size)
    timm_cl = channels_last(theirs)
    calibration = torch.cat(
        [smooth_images(args.calibration // 2, size, seed=7), mixed_images(exemplars, args.calibration // 2, seed=11)]
    )
    log("quantizing to int8 (PT2E) ...")
    start = time.perf_counter()
    int8 = optimize_for_inference(ours, torch.int8, calibration=calibration)
    quantize_s = time.perf_counter() - start
    paths: dict[str, torch.nn.Module] = {
        "timm eager fp32 channels_last": timm_cl,
        "effnetv2 optimised fp32": optimize_for_inference(ours),
        "effnetv2 optimised bf16": optimize_for_inference(ours, torch.bfloat16),
        "effnetv2 int8 (PT2E, compiled)": int8,
    }
    if not args.skip_compile:
        paths["effnetv2 optimised fp32 compiled"] = optimize_for_inference(ours, compile=True)
        paths["effnetv2 optimised bf16 compiled"] = optimize_for_inference(ours, torch.bfloat16, compile=True)

    log("matmul peaks ...")
    peaks = {
        name: matmul_gflops(dtype)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8))
    }
    speed: dict[int, dict[str, Any]] = {}
    for batch in args.batch_sizes:
        x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
        log(f"batch {batch}: timing (the first calls at a new batch size compile)")
        rounds = args.rounds * (2 if batch == 1 else 1)
        runs = {name: (lambda m=m, x=x: m(x)) for name, m in paths.items()}
        times = paired_rounds(runs, rounds, args.warmup, label=f"batch {batch}")
        base = times["timm eager fp32 channels_last"]
        speed[batch] = {
            name: dict(ms=1e3 * statistics.median(t), vs_timm_cl=paired_ratio(base, t), times_s=t)
            for name, t in times.items()
        }

    log("quality: each path against an fp64 copy on the blended images (slow: fp64 runs ~7x fp32) ...")
    test = mixed_images(exemplars, args.quality_images, seed=5)
    ref = reference(ours, test, precisions=(torch.bfloat16,))
    quality: dict[str, Any] = {}
    for name, precision in (
        ("effnetv2 optimised fp32", torch.float32),
        ("effnetv2 optimised bf16", torch.bfloat16),
        ("effnetv2 int8 (PT2E, compiled)", torch.int8),
    ):
        quality[name] = compare(run_batched(paths[name], test), ref, precision)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quality["timm eager, bf16 autocast"] = compare(run_batched(theirs, test), ref, torch.bfloat16)
    quality = {name: comparison_dict(c) for name, c in quality.items()}

    result = dict(
        model=args.model,
        img_size=size,
        machine=machine_info(torch.device("cpu")),
        cpu_flags={
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "amx": torch.cpu._is_amx_tile_supported(),
            "vnni": torch.cpu._is_vnni_supported() if hasattr(torch.cpu, "_is_vnni_supported") else None,
        },
        matmul_peaks=peaks,
        int8_quantize_s=quantize_s,
        int8_calibration_images=int8.calibration_images,
        int8_heldout=comparison_dict(int8.agreement),
        eager_fp32_error=ref.eager_error,
        speed=speed,
        quality=quality,
    )
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")  # atomic
    if args.write_markdown:
        write_markdown(args.write_markdown, markdown(result, args), section="cpu-goals")
    return result


def markdown(r: dict[str, Any], args: argparse.Namespace) -> str:
    m, peaks = r["machine"], r["matmul_peaks"]
    flags = ", ".join(k for k, v in r["cpu_flags"].items() if v) or "none of AVX512-BF16, AMX, VNNI"
    names = list(next(iter(r["speed"].values())))
    batches_ = list(r["speed"])
    head = " | ".join(f"batch {b} ms | batch {b} × timm" for b in batches_)
    rows = []
    for name in names:
        cells = " | ".join(
            f"{r['speed'][b][name]['ms']:.0f} | {r['speed'][b][name]['vs_timm_cl']:.2f}" for b in batches_
        )
        rows.append(f"| {name} | {cells} |")
    q = r["quality"]

    def agreement(name: str) -> str:
        a = q[name]
        if a.get("top1") is None:
            return "– | – | –"
        share, count = a["clear"]
        limit = f"{a['limit']:.3g}" if a["limit"] is not None else "not judged"
        return f"{100 * a['top1']:.1f} % | {100 * share:.1f} % of {count} | {a['error']:.3g} | {limit}"

    qrows = (
        "\n".join(
            f"| {name} | {agreement(name)} |"
            for name in (
                "effnetv2 optimised fp32",
                "effnetv2 optimised bf16",
                "effnetv2 int8 (PT2E, compiled)",
                "timm eager, bf16 autocast",
            )
        )
        + f"\n| effnetv2 eager fp32 | – | – | {r['eager_fp32_error']:.3g} | – |"
    )

    def best(kind: str) -> tuple[str, dict[int, float]]:
        candidates = [n for n in names if kind in n and "effnetv2" in n]
        top = max(candidates, key=lambda n: r["speed"][batches_[0]][n]["vs_timm_cl"])
        return top, {b: r["speed"][b][top]["vs_timm_cl"] for b in batches_}

    goal_rows = []
    for kind, target in GOALS.items():
        top, ratios = best(kind)
        measured = ", ".join(f"{v:.2f}× (batch {b})" for b, v in ratios.items())
        met = "yes" if all(v >= target for v in ratios.values()) else "**no**"
        goal_rows.append(f"| {kind} ≥ {target}× timm eager fp32 channels_last | {top}: {measured} | {met} |")
    for kind, name in (("bf16", "effnetv2 optimised bf16"), ("int8", "effnetv2 int8 (PT2E, compiled)")):
        share, count = q[name]["clear"]
        met = "yes" if share >= CLEAR_BAR else "**no**"
        goal = f"{kind} top-1 agreement ≥ 99 % where fp64 is clear"
        goal_rows.append(f"| {goal} | {100 * share:.1f} % of {count} | {met} |")
    peak_text = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v)
    return f"""### CPU inference goals (issue 16): `{r["model"]}` at {r["img_size"]} px

Generated by `python scripts/benchmark_cpu.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
**Machine.** {m["cpu"]}, {m["cores"]} cores ({m["torch_threads"]} torch threads), ISA {", ".join(m["cpu_isa"])};
reduced-precision hardware: {flags}; torch {m["torch"]} (CPU kernels: {m["torch_cpu_capability"]}), timm {m["timm"]}.
Matmul peaks measured in this run (2048³, GFLOP/s; int8: `torch._int_mm`, GOP/s): {peak_text}.

Median latency of {args.rounds} paired rounds (batch 1: {2 * args.rounds}), after {args.warmup} warm-up rounds that
include compiling; "× timm" is the median of per-round ratios against timm eager fp32 in channels_last.

| path | {head} |
|---|{"---:|---:|" * len(batches_)}
{chr(10).join(rows)}

Quality on {q["effnetv2 optimised fp32"]["images"]} blended images (stand-in weights, 10-class prototype classifier),
each path against an fp64 copy of the model (`effnetv2.inference.compare`: limit 4× the eager model's own error in
the path's precision; int8 is reported, not judged). int8: calibrated on {r["int8_calibration_images"]} images in
{r["int8_quantize_s"]:.0f} s (its own held-out check: {100 * (r["int8_heldout"]["top1"] or 0):.1f} % top-1 as fp64).

| path | top-1 as fp64 | where fp64 is clear | max rel. error vs fp64 | limit |
|---|---:|---:|---:|---:|
{qrows}

| goal | measured | met |
|---|---|:---:|
{chr(10).join(goal_rows)}"""


if __name__ == "__main__":
    main()
