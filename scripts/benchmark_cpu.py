#!/usr/bin/env python
"""Issue 16's CPU goals in one run: optimised fp32, bf16 and int8 against timm's best eager fp32, and their quality.

Speed: paired rounds (each round runs every path once, so a slow moment of the machine hits all alike) at batch 8
and batch 1 of ``--img-size`` px, against timm eager fp32 in channels_last (timm's fastest eager layout). Paths:
``optimize_for_inference`` fp32 and bf16, each also compiled (``compile=True``), and int8
(``optimize_for_inference(dtype=torch.int8)``: PT2E, compiled to oneDNN int8 kernels). Each path's first call at
each batch size is timed on its own before the warm-up rounds: for the compiled paths, the compile, in a fresh
inductor cache folder (``--compile-cache`` names another), so nothing is replayed from an earlier run.

The limit (issue 30): the CPU's own peaks measured in the same run (large fp32/bf16 matmuls, each through
the faster of torch.mm and oneDNN's 1×1 convolution; int8 oneDNN quantized linear; a large tensor copy; medians of
short runs) and the model's counts
(:func:`effnetv2.complexity.complexity`) give, per precision, the img/s of every conv at the matmul peak plus every
conv's input and output read and written once at the copy bandwidth (``_bench.limit_estimate``). Each figure is
printed with the limit of its precision and the share of it reached, next to the CPU's ISA flags (AMX-BF16/INT8,
AVX512-BF16, AVX512-VNNI from /proc/cpuinfo). ``--limit-only`` times timm alone, for the limit against timm.

Quality, on the well-conditioned stand-in (:mod:`effnetv2.testing`: 10-class nearest-prototype classifier,
blended images from confident to near ties; the int8 scripts' shared test set, ``_bench.int8_test_images``, which no
calibration uses: 192 images, about 128 with a clear answer, so that one flipped answer is 0.8 %; each agreement is
printed with its 95 % interval, and a goal whose interval spans 99 % is marked undecided: 128 clear images cannot
decide it, 526 of ``--quality-images 768`` narrow it to about 1.5 points), through the project's one comparison
(:mod:`effnetv2.inference.compare`): each path's largest relative error against an fp64 copy and its limit, top-1
agreement with fp64 (overall and on the images with a clear answer, issue 16's ≥ 99 % bar), next to timm's own bf16
autocast on the same images. bf16 is judged only on a CPU with native bf16 (``--bf16-quality``): emulated, it runs
about 10× slower than fp32 (about 75 of the 140 minutes of an AVX2 run) and is not what a bf16 CPU computes.

    python scripts/benchmark.py --cpu-goals --write-markdown BENCHMARKS.md    # the same as:
    python scripts/benchmark_cpu.py --write-markdown BENCHMARKS.md             # ~15 min for rw_m on 2 cores
    python scripts/benchmark_cpu.py --limit-only --batch-sizes 8                # the limit next to timm, ~2 min
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from _bench import (
    ARCH,
    channels_last,
    comparison_dict,
    cpu_kind,
    int8_calibration_images,
    int8_test_images,
    limit_estimate,
    log,
    machine_info,
    machine_peaks,
    paired_ratio,
    paired_rounds,
    precision_of,
    stand_in_pair,
    timed,
    write_markdown,
)

import effnetv2
from effnetv2.atomic import write_text
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import agreement_interval, compare, describe_agreement, reference, run_batched
from effnetv2.inference.compiled import FrozenCompiled
from effnetv2.inference.int8 import Int8EfficientNetV2
from effnetv2.testing import mixed_images

GOALS = {"fp32": 1.3, "bf16": 4.0, "int8": 3.0}  # × timm eager fp32 channels_last (issue 16)
CLEAR_BAR = 0.99  # top-1 agreement with fp64 on images with a clear fp64 answer
TIMM = "timm eager fp32 channels_last"
INT8 = "effnetv2 int8 (PT2E, compiled)"
INT8_AUTOTUNE = "effnetv2 int8 (PT2E, compiled max-autotune)"
ISA_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=ARCH, choices=effnetv2.list_models())
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1])
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per batch size (batch 1: twice as many)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds after each path's timed first call")
    p.add_argument(
        "--compile-cache",
        type=Path,
        help="inductor's cache folder (default: a fresh one, so first calls time cold compiles, as a user's first)",
    )
    p.add_argument("--calibration", type=int, default=256, help="int8 calibration images (every 4th held out)")
    p.add_argument(
        "--quality-images", type=int, default=192, help="blended test images for top-1 agreement (int8_test_images)"
    )
    p.add_argument(
        "--bf16-quality",
        choices=("auto", "on", "off"),
        default="auto",
        help="judge the bf16 paths' quality; auto: only on a CPU with native bf16 (AVX512-BF16 or AMX-BF16), since "
        "emulated bf16 runs ~10x slower than fp32 and takes most of such a run",
    )
    p.add_argument("--skip-compile", action="store_true", help="leave out the compiled fp32/bf16 paths")
    p.add_argument(
        "--max-autotune",
        action="store_true",
        help="add bf16 and int8 compiled with compile='max-autotune' (its compile time: the first-call table)",
    )
    p.add_argument(
        "--limit-only",
        action="store_true",
        help="only the limit estimate next to timm eager fp32 channels_last (no effnetv2 paths, no quality)",
    )
    p.add_argument("--write-markdown", type=Path)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def build_paths(args: argparse.Namespace, ours: torch.nn.Module, exemplars: torch.Tensor, timm_cl: torch.nn.Module):
    """The timed paths (timm first: the base of every ratio) and the int8 quantizing time."""
    paths: dict[str, torch.nn.Module] = {TIMM: timm_cl}
    if args.limit_only:
        return paths, None
    size = args.img_size
    calibration = int8_calibration_images(exemplars, args.calibration, size)
    log("quantizing to int8 (PT2E) ...")
    start = time.perf_counter()
    int8 = optimize_for_inference(ours, torch.int8, calibration=calibration)
    quantize_s = time.perf_counter() - start
    paths["effnetv2 optimised fp32"] = optimize_for_inference(ours)
    paths["effnetv2 optimised bf16"] = optimize_for_inference(ours, torch.bfloat16)
    paths[INT8] = int8
    if not args.skip_compile:
        paths["effnetv2 optimised fp32 compiled"] = optimize_for_inference(ours, compile=True)
        paths["effnetv2 optimised bf16 compiled"] = optimize_for_inference(ours, torch.bfloat16, compile=True)
    if args.max_autotune:
        # the same quantization (one calibration), compiled again in the other mode
        paths[f"{INT8_AUTOTUNE}"] = Int8EfficientNetV2(
            FrozenCompiled(copy.deepcopy(int8.graph._orig_mod), "max-autotune"),
            ours,
            int8.img_size,
            int8.agreement,
            int8.calibration_images,
            True,
            int8.kept_float,
        )
        paths["effnetv2 optimised bf16 compiled max-autotune"] = optimize_for_inference(
            ours, torch.bfloat16, compile="max-autotune"
        )
    return paths, quantize_s


def time_paths(
    args: argparse.Namespace, paths: dict[str, torch.nn.Module], exemplars: torch.Tensor, limit: dict[str, Any]
) -> dict[int, dict[str, Any]]:
    """Per batch size and path: median ms, × timm (paired), img/s, the precision's limit and the share of it."""
    speed: dict[int, dict[str, Any]] = {}
    for batch in args.batch_sizes:
        x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
        log(f"batch {batch}: timing (the first calls at a new batch size compile)")
        rounds = args.rounds * (2 if batch == 1 else 1)
        runs = {name: (lambda m=m, x=x: m(x)) for name, m in paths.items()}
        first = {}
        for name, run in runs.items():
            first[name] = timed(run)
            log(f"  batch {batch} first call of {name}: {first[name]:.1f} s")
        times = paired_rounds(runs, rounds, args.warmup, label=f"batch {batch}")
        speed[batch] = {}
        for name, t in times.items():
            ms = 1e3 * statistics.median(t)
            bound = limit["limits"].get(precision_of(name), {}).get("img_s")
            img_s = 1e3 * batch / ms
            speed[batch][name] = dict(
                ms=ms,
                vs_timm_cl=paired_ratio(times[TIMM], t),
                img_s=img_s,
                limit_img_s=bound,
                of_limit=img_s / bound if bound else None,
                first_call_s=first[name],
                times_s=t,
            )
    return speed


def native_bf16(cpu_flags: dict[str, bool]) -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16), rather than oneDNN emulating it."""
    return cpu_flags["avx512_bf16"] or cpu_flags["amx_bf16"]


def judge_quality(
    ours: torch.nn.Module, theirs: torch.nn.Module, paths, exemplars, images: int, bf16: bool
) -> dict[str, Any]:
    """Each path and timm's bf16 autocast against an fp64 copy, through the project's one comparison; the bf16
    ones only where ``bf16``."""
    log("quality: each path against an fp64 copy on the blended images (slow: fp64 runs ~7x fp32) ...")
    test = int8_test_images(exemplars, images)
    ref = reference(ours, test, precisions=(torch.bfloat16,) if bf16 else ())
    judged = [("effnetv2 optimised fp32", torch.float32), (INT8, torch.int8)]
    if bf16:
        judged.insert(1, ("effnetv2 optimised bf16", torch.bfloat16))
    quality: dict[str, Any] = {}
    for name, precision in judged:
        quality[name] = compare(run_batched(paths[name], test), ref, precision)
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quality["timm eager, bf16 autocast"] = compare(run_batched(theirs, test), ref, torch.bfloat16)
    quality = {name: comparison_dict(c) for name, c in quality.items()}
    quality["eager_fp32_error"] = ref.eager_error
    return quality


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_cpu-inductor-") as fresh:
        # inductor reads the variable at each compile (importing torch._dynamo sets it to its default folder)
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache or fresh)
        try:
            return run(args)
        finally:
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark with parsed arguments (see the module docstring)."""
    torch.set_grad_enabled(False)
    log(f"building {args.model} at {args.img_size} px (stand-in weights) and timm's copy")
    ours, exemplars, theirs = stand_in_pair(args.model, args.img_size)
    paths, quantize_s = build_paths(args, ours, exemplars, channels_last(theirs))
    log("peaks (matmuls, copy bandwidth) and the limit estimate ...")
    limit = limit_estimate(args.model, args.img_size, machine_peaks())
    speed = time_paths(args, paths, exemplars, limit)
    machine = machine_info(torch.device("cpu"))
    result = dict(
        model=args.model,
        img_size=args.img_size,
        machine=machine,
        cpu_flags={flag: flag in machine["cpu_isa"] for flag in ISA_FLAGS},  # from /proc/cpuinfo
        limit=limit,
        speed=speed,
    )
    if not args.limit_only:
        int8 = paths[INT8]
        bf16 = args.bf16_quality == "on" or (args.bf16_quality == "auto" and native_bf16(result["cpu_flags"]))
        if not bf16:
            log("bf16 quality not judged (--bf16-quality: no native bf16 on this CPU, or off)")
        result.update(
            int8_quantize_s=quantize_s,
            int8_calibration_images=int8.calibration_images,
            int8_heldout=comparison_dict(int8.agreement),
            quality=judge_quality(ours, theirs, paths, exemplars, args.quality_images, bf16),
        )
    print(limit_report(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")  # atomic
    if args.write_markdown:
        # one generated table per kind of CPU: a run on another kind adds its own section, not overwrites this one
        section = f"{'cpu-limit' if args.limit_only else 'cpu-goals'}:{cpu_kind()}"
        write_markdown(args.write_markdown, markdown(result, args), section=section)
    return result


def limit_report(r: dict[str, Any]) -> str:
    """Plain text for stdout: the CPU, its ISA flags, peaks, the limit per precision, and each figure against it."""
    m, limit = r["machine"], r["limit"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["cpu_flags"].items())
    lines = [f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}: {flags}", peaks_text(limit["peaks"])]
    timm_img_s = {b: s[TIMM]["img_s"] for b, s in r["speed"].items()}
    for name, lim in limit["limits"].items():
        versus = ", ".join(f"{lim['img_s'] / v:.2f}× timm at batch {b}" for b, v in timm_img_s.items())
        lines.append(
            f"limit {name}: {lim['compute_ms']:.0f} ms compute + {lim['memory_ms']:.0f} ms memory per image"
            f" = {lim['img_s']:.1f} img/s ({versus})"
        )
    for batch, paths in r["speed"].items():
        for name, s in paths.items():
            share = f"{100 * s['of_limit']:.0f} % of the {precision_of(name)} limit" if s["of_limit"] else "no limit"
            lines.append(
                f"batch {batch} {name}: {s['img_s']:.2f} img/s, {s['vs_timm_cl']:.2f}× timm, {share}; "
                f"first call {s['first_call_s']:.1f} s"
            )
    return "\n".join(lines)


def peaks_text(peaks: dict[str, Optional[float]]) -> str:
    matmuls = ", ".join(f"{k[:4]} {v:.0f}" for k, v in peaks.items() if k.endswith("_gflops") and v)
    return f"matmul peaks (GFLOP/s; int8: GOP/s) {matmuls}; copy bandwidth {peaks['copy_gbs']:.1f} GB/s"


def limit_table(r: dict[str, Any]) -> str:
    """Markdown: the limit per precision, its two parts, and it against timm at each batch size."""
    limit, batches_ = r["limit"], list(r["speed"])
    flops = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in limit["flops"].items() if v)
    versus_head = " | ".join(f"× timm (batch {b})" for b in batches_)
    rows = []
    for name, lim in limit["limits"].items():
        versus = " | ".join(f"{lim['img_s'] / r['speed'][b][TIMM]['img_s']:.2f}" for b in batches_)
        peak = limit["peaks"][f"{name}_gflops"]
        parts = f"{lim['compute_ms']:.0f} | {lim['memory_ms']:.0f} | {lim['img_s']:.1f}"
        rows.append(f"| {name} | {peak:.0f} | {parts} | {versus} |")
    return f"""Limit estimate per image: the FLOPs of every conv and linear layer at the measured matmul peak, plus
their inputs and outputs ({limit["moved_elements"] / 1e6:.1f} M elements per image, read and written once, element-wise
work fused into them) at the measured copy bandwidth of {limit["peaks"]["copy_gbs"]:.1f} GB/s; peaks are medians
of short runs. GFLOP per image: {flops}.

| precision | matmul peak GFLOP/s | compute ms | memory ms | limit img/s | {versus_head} |
|---|---:|---:|---:|---:|{"---:|" * len(batches_)}
{chr(10).join(rows)}"""


def speed_table(r: dict[str, Any]) -> str:
    batches_ = list(r["speed"])
    names = list(r["speed"][batches_[0]])
    head = " | ".join(f"batch {b} ms | × timm | img/s | of limit" for b in batches_)
    rows = []
    for name in names:
        cells = []
        for b in batches_:
            s = r["speed"][b][name]
            share = f"{100 * s['of_limit']:.0f} %" if s["of_limit"] else "–"
            cells.append(f"{s['ms']:.0f} | {s['vs_timm_cl']:.2f} | {s['img_s']:.2f} | {share}")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return f"| path | {head} |\n|---|{'---:|' * 4 * len(batches_)}\n" + "\n".join(rows)


def first_call_table(r: dict[str, Any]) -> str:
    """Markdown: each path's first call per batch size (a compiled path compiles in it, with a cold cache)."""
    batches_ = list(r["speed"])
    rows = [
        f"| {name} | " + " | ".join(f"{r['speed'][b][name]['first_call_s']:.1f}" for b in batches_) + " |"
        for name in r["speed"][batches_[0]]
    ]
    head = " | ".join(f"batch {b} s" for b in batches_)
    return f"""First call at each batch size, in order (a compiled path compiles there, in a fresh inductor cache
folder; int8's quantizing is timed apart, below):

| path | {head} |
|---|{"---:|" * len(batches_)}
""" + "\n".join(rows)


def machine_text(r: dict[str, Any]) -> str:
    m = r["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["cpu_flags"].items())
    isa = ", ".join(m["cpu_isa"])
    saturate = m.get("int8_pair_sums_saturate")  # absent from runs before 2026-12-07
    sums = "" if saturate is None else f"; oneDNN's int8 pair sums {'saturate (no VNNI)' if saturate else 'exact'}"
    return f"""**Machine.** {m["cpu"]}, {m["cores"]} cores ({m["torch_threads"]} torch threads), ISA {isa};
reduced-precision hardware (/proc/cpuinfo): {flags}{sums};
torch {m["torch"]} (CPU kernels: {m["torch_cpu_capability"]}), timm {m["timm"]}. {peaks_text(r["limit"]["peaks"])}."""


def quality_table(r: dict[str, Any]) -> str:
    q = r["quality"]

    def agreement(name: str) -> str:
        if name not in q:
            return "not judged | – | – | –"
        a = q[name]
        if a.get("top1") is None:
            return "– | – | –"
        limit = f"{a['limit']:.3g}" if a["limit"] is not None else "not judged"
        return f"{100 * a['top1']:.1f} % | {describe_agreement(*a['clear'])} | {a['error']:.3g} | {limit}"

    names = ("effnetv2 optimised fp32", "effnetv2 optimised bf16", INT8, "timm eager, bf16 autocast")
    rows = [f"| {name} | {agreement(name)} |" for name in names]
    rows.append(f"| effnetv2 eager fp32 | – | – | {q['eager_fp32_error']:.3g} | – |")
    return (
        "| path | top-1 as fp64 | where fp64 is clear | max rel. error vs fp64 | limit |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(rows)
    )


def agreement_verdict(share: float, count: int) -> str:
    """Whether a top-1 agreement meets :data:`CLEAR_BAR`: by its share, and whether this many images decide it (the
    bar outside the 95 % interval) or not."""
    if count == 0:
        return "**no** (no image with a clear answer)"
    met = "yes" if share >= CLEAR_BAR else "**no**"
    low, high = agreement_interval(round(share * count), count)
    return met if not low < CLEAR_BAR <= high else f"{met} (undecided: the 95 % interval spans 99 %)"


def goal_table(r: dict[str, Any]) -> str:
    speed, q = r["speed"], r["quality"]
    batches_ = list(speed)
    rows = []
    for kind, target in GOALS.items():
        candidates = [n for n in speed[batches_[0]] if kind in n and "effnetv2" in n]
        top = max(candidates, key=lambda n: speed[batches_[0]][n]["vs_timm_cl"])
        ratios = {b: speed[b][top]["vs_timm_cl"] for b in batches_}
        measured = ", ".join(f"{v:.2f}× (batch {b})" for b, v in ratios.items())
        met = "yes" if all(v >= target for v in ratios.values()) else "**no**"
        rows.append(f"| {kind} ≥ {target}× timm eager fp32 channels_last | {top}: {measured} | {met} |")
    for kind, name in (("bf16", "effnetv2 optimised bf16"), ("int8", INT8)):
        if name not in q:
            rows.append(f"| {kind} top-1 agreement ≥ 99 % where fp64 is clear | not judged | – |")
            continue
        share, count = q[name]["clear"]
        rows.append(
            f"| {kind} top-1 agreement ≥ 99 % where fp64 is clear | {describe_agreement(share, count)} "
            f"| {agreement_verdict(share, count)} |"
        )
    return "| goal | measured | met |\n|---|---|:---:|\n" + "\n".join(rows)


def bf16_note(r: dict[str, Any]) -> str:
    if "effnetv2 optimised bf16" in r["quality"]:
        return ""
    if native_bf16(r["cpu_flags"]):
        return "; bf16 not judged (--bf16-quality off)"
    return "; bf16 not judged: this CPU has no native bf16, and emulated bf16 is slow and not what a bf16 CPU computes"


def markdown(r: dict[str, Any], args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    flags = [flag for flag, on in (("--limit-only", args.limit_only), ("--max-autotune", args.max_autotune)) if on]
    command = " ".join(["python scripts/benchmark_cpu.py", *flags])
    timing = f"""Median latency of {args.rounds} paired rounds (batch 1: {2 * args.rounds}), after each path's first
call and {args.warmup} warm-up rounds; "× timm" is the median of per-round ratios against timm eager fp32 in
channels_last; "of limit" is the img/s reached over the limit estimate of the path's precision."""
    text = f"""### CPU inference goals (issue 16): `{r["model"]}` at {r["img_size"]} px

Generated by `{command}` on {when}.
{machine_text(r)}

{limit_table(r)}

{timing}

{speed_table(r)}"""
    if args.limit_only:
        return text
    return f"""{text}

{first_call_table(r)}

Quality on {r["quality"]["effnetv2 optimised fp32"]["images"]} blended images (stand-in weights, 10-class prototype
classifier), each path against an fp64 copy of the model (`effnetv2.inference.compare`: limit 4× the eager model's own
error in the path's precision; int8 is reported, not judged{bf16_note(r)}). int8: calibrated on
{r["int8_calibration_images"]} images in {r["int8_quantize_s"]:.0f} s (its own held-out check:
{100 * (r["int8_heldout"]["top1"] or 0):.1f} % top-1 as fp64).

{quality_table(r)}

{goal_table(r)}"""


if __name__ == "__main__":
    main()
