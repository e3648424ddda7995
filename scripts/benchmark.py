#!/usr/bin/env python
"""effnetv2 against timm, side by side: inference and training speed and memory, reduced-precision agreement.

One process, the same weights (timm's model gets ours through the key map) and the same inputs for every
configuration; timed calls are interleaved (one call of each configuration per round), so load from other
processes hits all of them alike. Memory is measured in separate, untimed calls. See BENCHMARKS.md for
the method and the results on the reference machine.

    python scripts/benchmark.py --write-markdown BENCHMARKS.md      # the full run (~15 min on 2 cores)
    python scripts/benchmark.py --smoke --json                      # tiny CI run, JSON on stdout
    python scripts/benchmark.py --family efficientnetv2_rw_t efficientnetv2_s efficientnetv2_rw_m efficientnetv2_l \
        --batch-size 1 --write-markdown BENCHMARKS.md                 # eager speed across the family
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from _bench import (
    ARCH,
    channels_last,
    import_timm,
    log,
    machine_info,
    paired_ratio,
    paired_rounds,
    percentile,
    sync,
    timed,
    timm_twin,
    write_markdown,
)
from torch import nn

import effnetv2
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import Comparison, compare, reference, run_batched
from effnetv2.testing import condition, make_calibrated_model, mixed_images, smooth_images

MIB = 2**20


# The goals of issue 6, checked against the measurements (never asserted by tests).
GOALS = dict(
    fp32_speedup=1.25,  # optimised fp32 vs timm eager, batch 8 @ 320
    bf16_speedup=2.2,  # bf16 vs timm eager fp32
    bf16_agreement=0.99,  # top-1 agreement of bf16 with fp64
    ckpt_memory=0.40,  # checkpointed step peak vs timm's plain step, batch 8 @ 224
    plain_time=1.0,  # plain step time vs timm's
)


# ----------------------------------------------------------------------------------------------------------
# Measuring


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak of live tensor bytes during ``fn()`` above those live before it.

    CUDA: the caching allocator's own peak counter. CPU: the allocation and free events torch's profiler
    records for every CPU tensor (``profile_memory=True``), replayed in time order — the CPU analogue of
    ``torch.cuda.max_memory_allocated``; it counts oneDNN workspaces too, which go through torch's allocator.
    """
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def slow_bf16_profile(device: torch.device) -> bool:
    """Whether profiling bfloat16 inference is slow here: a CPU without native bf16 runs grouped convolutions as one
    small convolution per channel (~70 k calls per image, measured), and the profiler behind :func:`peak_bytes` then
    takes ~25 s for one 64 px image: ``--smoke`` leaves that one measurement out."""
    from effnetv2.inference.folded import _cpu_has_native_bf16

    return device.type == "cpu" and not _cpu_has_native_bf16()


def tensor_bytes(*objects: Any) -> int:
    """Bytes of the distinct tensors held by modules (parameters, buffers) and optimizers (state)."""
    seen: dict[int, int] = {}
    for obj in objects:
        if isinstance(obj, nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [v for state in obj.state.values() for v in state.values() if torch.is_tensor(v)]
        else:
            continue
        for t in tensors:
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def load_average() -> Optional[list[float]]:
    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def other_python_processes() -> int:
    """Busy python processes other than this one (a rough "is the machine quiet" signal)."""
    count = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            if name.startswith("python") and state == "R":
                count += 1
    return count


# ----------------------------------------------------------------------------------------------------------
# Models


def make_models(
    img_size: int, device: torch.device, calib_images: int, with_timm: bool = True, arch: str = ARCH
) -> tuple[nn.Module, Optional[nn.Module]]:
    """Our model made well-conditioned as the test oracle is (O(1) activations), and timm's with the same weights."""
    torch.manual_seed(0)
    ours = condition(effnetv2.create_model(arch), smooth_images(calib_images, img_size, seed=1))
    theirs = timm_twin(arch, ours).to(device) if with_timm and import_timm() is not None else None
    return ours.eval().to(device), theirs


# ----------------------------------------------------------------------------------------------------------
# Inference


def bench_inference(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    ours, theirs = make_models(args.img_size, device, args.calib_images, arch=args.model)
    x = smooth_images(args.batch_size, args.img_size, seed=3).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    reduced = torch.bfloat16 if device.type == "cpu" else torch.float16

    configs: list[tuple[str, str, nn.Module, torch.Tensor]] = []
    if theirs is not None:
        configs.append(("timm eager fp32", "timm", theirs, x))
        configs.append(("timm eager fp32 channels_last", "timm", channels_last(theirs), x_cl))
    configs.append(("effnetv2 eager fp32", "effnetv2", ours, x))
    configs.append(("effnetv2 optimised fp32", "effnetv2", optimize_for_inference(ours), x))
    configs.append(("effnetv2 optimised bf16", "effnetv2", optimize_for_inference(ours, torch.bfloat16), x))
    if device.type == "cuda":
        configs.append(("effnetv2 optimised fp16", "effnetv2", optimize_for_inference(ours, reduced), x))
    if not args.skip_compile:
        log("compiling the optimised fp32 model (torch.compile; the first call takes minutes on a small CPU)")
        compiled = optimize_for_inference(ours, compile=True)
        with torch.inference_mode():
            compile_s = timed(lambda: compiled(x), device)
        log(f"  compiled in {compile_s:.0f} s")
        configs.append(("effnetv2 optimised fp32 compiled", "effnetv2", compiled, x))

    runs = {name: (lambda m=model, i=inp: m(i)) for name, _, model, inp in configs}
    with torch.inference_mode():
        latencies = paired_rounds(runs, args.iters, args.warmup, device, label="inference")
        memory: dict[str, Optional[float]] = {}
        for name, _, model, inp in configs:
            if args.smoke and name == "effnetv2 optimised bf16" and slow_bf16_profile(device):
                memory[name] = None
                continue
            memory[name] = tensor_bytes(model) + peak_bytes(lambda m=model, i=inp: m(i), device)

    rows = []
    for name, library, _, _ in configs:
        p50 = percentile(latencies[name], 50)
        rows.append(
            dict(
                name=name,
                library=library,
                img_per_s=args.batch_size / p50,
                latency_ms_p50=1000 * p50,
                latency_ms_p90=1000 * percentile(latencies[name], 90),
                peak_memory_mib=None if memory[name] is None else memory[name] / MIB,
                latencies_s=latencies[name],
            )
        )
    # Speed-ups as paired ratios (_bench.paired_ratio): a reference's time over the configuration's, round by round.
    for ref_name, label in (("timm eager fp32", "vs_timm"), ("timm eager fp32 channels_last", "vs_timm_cl")):
        for row in rows:
            ref = latencies.get(ref_name)
            row[f"img_per_s_{label}"] = paired_ratio(ref, latencies[row["name"]]) if ref else None
    return rows


def bench_family(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Eager fp32 inference of each ``--family`` architecture, timm and effnetv2 with the same weights, and the
    optimised copy: at the architecture's test size (``--img-size`` when given), rounds interleaved as above."""
    rows = []
    for arch in args.family:
        _, cfg = effnetv2.get_pretrained_cfg(arch)
        size = args.img_size if args.img_size_given else cfg["test_input_size"][-1]
        log(f"{arch} @ {size} px")
        ours, theirs = make_models(size, device, args.calib_images, arch=arch)
        x = smooth_images(args.batch_size, size, seed=3).to(device)
        configs = {"timm eager": theirs, "effnetv2 eager": ours, "effnetv2 optimised": optimize_for_inference(ours)}
        configs = {name: model for name, model in configs.items() if model is not None}
        runs = {name: (lambda m=model, i=x: m(i)) for name, model in configs.items()}
        with torch.inference_mode():
            latencies = paired_rounds(runs, args.iters, args.warmup, device)
        row: dict[str, Any] = dict(
            model=arch, img_size=size, params=sum(p.numel() for p in ours.parameters()), latencies_s=latencies
        )
        for name, times in latencies.items():
            row[f"{name} img/s"] = args.batch_size / percentile(times, 50)
            row[f"{name} × timm"] = paired_ratio(latencies["timm eager"], times) if theirs is not None else None
        rows.append(row)
        del ours, theirs, configs
    return rows


def bench_agreement(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Optimised fp32 and bf16 (fp16 on CUDA) against an fp64 copy on natural-looking images, with a classifier that
    can be right or wrong: the project's one comparison (:mod:`effnetv2.inference.compare`)."""
    model, exemplars = make_calibrated_model(lambda: effnetv2.create_model(args.model), args.img_size)
    model = model.to(device)
    images = mixed_images(exemplars, args.agreement_images, seed=4)
    reduced = torch.bfloat16 if device.type == "cpu" else torch.float16
    ref = reference(model, images, precisions=(reduced,), batch=args.batch_size)
    with torch.inference_mode():
        fp32 = compare(run_batched(optimize_for_inference(model), images, args.batch_size), ref)
        low = compare(run_batched(optimize_for_inference(model, reduced), images, args.batch_size), ref, reduced)
    return dict(
        images=len(images),
        img_size=args.img_size,
        classes=len(exemplars),
        reduced_dtype=str(reduced).replace("torch.", ""),
        fp64_distinct_predictions=int(ref.fp64[0].argmax(1).unique().numel()),
        eager_fp32_error=ref.eager_error,
        **{f"fp32_{key}": value for key, value in summary(fp32).items()},
        **{f"reduced_{key}": value for key, value in summary(low).items()},
    )


def summary(c: Comparison) -> dict[str, Any]:
    """A comparison's numbers for the JSON results."""
    share, count = c.clear if c.clear is not None else (None, 0)
    return dict(error=c.error, limit=c.limit, accepted=c.accepted, top1=c.top1, clear_top1=share, clear_images=count)


# ----------------------------------------------------------------------------------------------------------
# Training


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


# name → (library, checkpointing granularity or None); timm's checkpointing has no granularity ("block").
TRAIN_CONFIGS: dict[str, tuple[str, Optional[str]]] = {
    "timm plain": ("timm", None),
    "timm checkpointed (per block)": ("timm", "block"),
    "effnetv2 plain": ("effnetv2", None),
    "effnetv2 checkpointed (nested, default)": ("effnetv2", "nested"),
    "effnetv2 checkpointed (block)": ("effnetv2", "block"),
    "effnetv2 checkpointed (bn_act)": ("effnetv2", "bn_act"),
}


def configure_training(model: nn.Module, name: str) -> nn.Module:
    """Put ``model`` (in place) in train mode with the checkpointing of configuration ``name``."""
    library, granularity = TRAIN_CONFIGS[name]
    model.train()
    if granularity is not None:
        if library == "timm":
            model.set_grad_checkpointing(True)
        else:
            model.set_grad_checkpointing(True, granularity=granularity)
    return model


def train_configs(ours: nn.Module, theirs: Optional[nn.Module]) -> list[tuple[str, str, nn.Module]]:
    """Every training configuration, each on its own copy of the weights."""
    configs = []
    for name, (library, _) in TRAIN_CONFIGS.items():
        base = theirs if library == "timm" else ours
        if base is not None:
            configs.append((name, library, configure_training(copy.deepcopy(base), name)))
    return configs


def bench_training(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    ours, theirs = make_models(args.train_img_size, device, args.calib_images, arch=args.model)
    x = smooth_images(args.train_batch_size, args.train_img_size, seed=5).to(device)
    y = torch.arange(args.train_batch_size, device=device) % 1000
    if args.train_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    configs = []
    for name, library, model in train_configs(ours, theirs):
        if args.train_channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        configs.append((name, library, model, opt))

    warmup = 1 if args.warmup else 0  # one round warms up and creates the optimizer state
    steps = {name: (lambda m=model, o=opt: train_step(m, o, x, y)) for name, _, model, opt in configs}
    times = paired_rounds(steps, args.train_iters, warmup, device, label="training")
    rows = []
    for name, library, model, opt in configs:
        resident = tensor_bytes(model, opt)  # weights, buffers, momentum; gradients are freed between steps
        step_peak = peak_bytes(lambda m=model, o=opt: train_step(m, o, x, y), device)
        p50 = percentile(times[name], 50)
        rows.append(
            dict(
                name=name,
                library=library,
                step_s_p50=p50,
                img_per_s=args.train_batch_size / p50,
                peak_memory_mib=(resident + step_peak) / MIB,
                step_memory_mib=step_peak / MIB,
                step_s=times[name],
            )
        )
    by_name = {row["name"]: row for row in rows}
    ref = by_name.get("timm plain")
    for row in rows:
        row["time_vs_timm_plain"] = paired_ratio(times[row["name"]], times["timm plain"]) if ref else None
        row["memory_vs_timm_plain"] = row["peak_memory_mib"] / ref["peak_memory_mib"] if ref else None
    if args.rss:
        for row in rows:
            row["peak_rss_mib"] = rss_probe(args, row["name"])
        ref_rss = ref.get("peak_rss_mib") if ref else None
        for row in rows:
            row["rss_vs_timm_plain"] = row["peak_rss_mib"] / ref_rss if ref_rss else None
    return rows


def rss_probe(args: argparse.Namespace, name: str) -> Optional[float]:
    """Peak resident memory (VmHWM) of a fresh process that builds one configuration and trains 2 steps."""
    argv = [
        "--rss-probe",
        name,
        "--device",
        args.device,
        "--train-batch-size",
        str(args.train_batch_size),
        "--train-img-size",
        str(args.train_img_size),
        "--calib-images",
        str(args.calib_images),
        "--model",
        args.model,
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.train_channels_last:
        argv.append("--train-channels-last")
    log(f"  peak RSS of a fresh process: {name}")
    out = run_script(Path(__file__).name, argv, capture_output=True, text=True)
    if out.returncode != 0:
        log(f"  RSS probe failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def run_script(name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` with ``argv`` in a fresh process that imports the effnetv2 this one did (installed or
    not); ``kwargs`` go to :func:`subprocess.run`."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(Path(__file__).with_name(name)), *argv], env=env, check=False, **kwargs)


def run_rss_probe(args: argparse.Namespace, device: torch.device) -> None:
    """The child side of :func:`rss_probe`: only what one configuration needs is imported and built.

    Random weights (memory does not depend on their values) and no BatchNorm calibration pass, whose own
    peak would otherwise count.
    """
    torch.manual_seed(0)
    library, _ = TRAIN_CONFIGS[args.rss_probe]
    model = (import_timm() if library == "timm" else effnetv2).create_model(args.model)
    model = configure_training(model.to(device), args.rss_probe)
    x = smooth_images(args.train_batch_size, args.train_img_size, seed=5).to(device)
    y = torch.arange(args.train_batch_size, device=device) % 1000
    if args.train_channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    for _ in range(2):
        train_step(model, opt, x, y)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps(dict(peak_rss_mib=int(hwm.split()[1]) / 1024)))


# ----------------------------------------------------------------------------------------------------------
# Goals and report


def check_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    inf = {row["name"]: row for row in results.get("inference", [])}
    train = {row["name"]: row for row in results.get("training", [])}
    agree = results.get("agreement") or {}
    goals = []

    def goal(text: str, measured: Optional[float], target: float, higher_is_better: bool) -> None:
        met = None if measured is None else (measured >= target if higher_is_better else measured <= target)
        goals.append(dict(goal=text, target=target, measured=measured, met=met))

    opt32 = inf.get("effnetv2 optimised fp32", {})
    goal("optimised fp32 img/s ÷ timm eager fp32 (NCHW)", opt32.get("img_per_s_vs_timm"), GOALS["fp32_speedup"], True)
    goal(
        "optimised fp32 img/s ÷ timm eager fp32 channels_last",
        opt32.get("img_per_s_vs_timm_cl"),
        GOALS["fp32_speedup"],
        True,
    )
    bf16 = inf.get("effnetv2 optimised bf16", {})
    goal("optimised bf16 img/s ÷ timm eager fp32 (NCHW)", bf16.get("img_per_s_vs_timm"), GOALS["bf16_speedup"], True)
    goal("bf16 top-1 agreement with fp64", agree.get("reduced_top1"), GOALS["bf16_agreement"], True)
    ckpt = train.get("effnetv2 checkpointed (nested, default)", {})
    goal("checkpointed step peak ÷ timm plain step peak", ckpt.get("memory_vs_timm_plain"), GOALS["ckpt_memory"], False)
    if "rss_vs_timm_plain" in ckpt:
        goal("same, as peak process RSS", ckpt.get("rss_vs_timm_plain"), GOALS["ckpt_memory"], False)
    plain = train.get("effnetv2 plain", {})
    goal("plain step time ÷ timm plain step time", plain.get("time_vs_timm_plain"), GOALS["plain_time"], False)
    return goals


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"Generated by `python scripts/benchmark.py {' '.join(s['argv'])}` on {results['date']}.",
        "",
        "**Machine.** "
        f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), ISA {', '.join(m['cpu_isa']) or '–'}; "
        f"torch {m['torch']} (CPU kernels: {m['torch_cpu_capability']}), torchvision {m.get('torchvision')}, "
        f"timm {m.get('timm')}, Python {m['python']}"
        + (f"; GPU {m['gpu']}" if m.get("gpu") else "")
        + f". Device: `{s['device']}`.",
        "",
        f"**Load.** Load average {results['load_before']} before and {results['load_after']} after the run "
        f"(the benchmark's own threads add up to {m['torch_threads']}); "
        f"{results['busy_python_before']} other running Python process(es) at the start.",
        "",
    ]
    if results.get("family"):
        lines += [
            f"### Family: eager fp32 inference, batch {s['batch_size']}, {s['iters']} interleaved rounds",
            "",
            "| architecture | px | parameters | timm eager img/s | effnetv2 eager img/s | × timm | "
            "effnetv2 optimised img/s | × timm |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["family"]:
            lines.append(
                f"| `{r['model']}` | {r['img_size']} | {r['params']:,} | {fmt(r.get('timm eager img/s'))} | "
                f"{fmt(r['effnetv2 eager img/s'])} | {fmt(r['effnetv2 eager × timm'])} | "
                f"{fmt(r['effnetv2 optimised img/s'])} | {fmt(r['effnetv2 optimised × timm'])} |"
            )
        lines.append("")
    if results.get("inference"):
        lines += [
            f"### Inference: {s['model']}, batch {s['batch_size']} @ {s['img_size']} px, "
            f"{s['iters']} interleaved rounds",
            "",
            "| configuration | img/s | × timm | × timm channels_last | p50 ms | p90 ms | peak MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["inference"]:
            lines.append(
                f"| {r['name']} | {fmt(r['img_per_s'])} | {fmt(r.get('img_per_s_vs_timm'))} | "
                f"{fmt(r.get('img_per_s_vs_timm_cl'))} | {fmt(r['latency_ms_p50'], 0)} | "
                f"{fmt(r['latency_ms_p90'], 0)} | {fmt(r['peak_memory_mib'], 0)} |"
            )
        lines.append("")
    if results.get("agreement"):
        a = results["agreement"]
        lines += [
            f"### Reduced precision: {a['reduced_dtype']} and fp32 against fp64",
            "",
            f"{a['images']} natural-looking images at {a['img_size']} px, {a['classes']}-class prototype "
            f"classifier (see `effnetv2/testing.py`); fp64 predicts {a['fp64_distinct_predictions']} distinct "
            f"classes. Each path against an fp64 copy (`effnetv2.inference.compare`: limit 4× the eager model's own "
            f"error in the path's precision); eager fp32's own error is {a['eager_fp32_error']:.2e}.",
            "",
            "| path | max relative error vs fp64 | limit | top-1 as fp64 | where fp64 is clear |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind, name in (("fp32", "optimised fp32"), ("reduced", f"optimised {a['reduced_dtype']}")):
            clear = a[f"{kind}_clear_top1"]
            lines.append(
                f"| {name} | {a[f'{kind}_error']:.2e} | {a[f'{kind}_limit']:.2e} | {fmt(100 * a[f'{kind}_top1'], 1)} % "
                f"| {fmt(None if clear is None else 100 * clear, 1)} % of {a[f'{kind}_clear_images']} |"
            )
        lines.append("")
    if results.get("training"):
        rss = any("peak_rss_mib" in r for r in results["training"])
        lines += [
            f"### Training step: batch {s['train_batch_size']} @ {s['train_img_size']} px, SGD + momentum, "
            f"{s['train_iters']} interleaved rounds" + (", channels_last" if s["train_channels_last"] else ""),
            "",
            "| configuration | step s (p50) | img/s | time × timm plain | peak MiB | memory × timm plain"
            + (" | peak RSS MiB | RSS × timm plain |" if rss else " |"),
            "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if rss else ""),
        ]
        for r in results["training"]:
            line = (
                f"| {r['name']} | {fmt(r['step_s_p50'])} | {fmt(r['img_per_s'])} | {fmt(r['time_vs_timm_plain'])} | "
                f"{fmt(r['peak_memory_mib'], 0)} | {fmt(r['memory_vs_timm_plain'])} |"
            )
            if rss:
                line += f" {fmt(r.get('peak_rss_mib'), 0)} | {fmt(r.get('rss_vs_timm_plain'))} |"
            lines.append(line)
        lines.append("")
    if results.get("goals"):
        lines += ["### Goals", "", "| goal | target | measured | met |", "|---|---:|---:|:---:|"]
        for g in results["goals"]:
            lines.append(f"| {g['goal']} | {fmt(g['target'])} | {fmt(g['measured'])} | {fmt(g['met'])} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch (default 8)")
    p.add_argument("--model", default=ARCH, choices=effnetv2.list_models(), help=f"architecture (default {ARCH})")
    p.add_argument(
        "--family",
        nargs="+",
        choices=effnetv2.list_models(),
        metavar="MODEL",
        help="only eager fp32 inference of these architectures, each at its test size, vs timm",
    )
    p.add_argument("--img-size", type=int, help="inference image size (default 320; --family: each test size)")
    p.add_argument("--iters", type=int, default=14, help="timed inference rounds (default 14)")
    p.add_argument("--warmup", type=int, default=2, help="untimed inference rounds first (default 2; training: 1)")
    p.add_argument("--train-batch-size", type=int, default=8, help="training batch (default 8)")
    p.add_argument("--train-img-size", type=int, default=224, help="training image size (default 224)")
    p.add_argument("--train-iters", type=int, default=7, help="timed training rounds (default 7)")
    p.add_argument("--train-channels-last", action="store_true", help="train every model in channels_last")
    p.add_argument("--agreement-images", type=int, default=128, help="images for the bf16 agreement check")
    p.add_argument("--calib-images", type=int, default=16, help="images that calibrate BatchNorm statistics")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--rss", action="store_true", help="also measure each training configuration's peak RSS")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CI run: 1 round, 64 px, batch 1, no compile (and no bf16 memory profile on CPUs that emulate bf16)",
    )
    p.add_argument(
        "--cpu-goals",
        action="store_true",
        help="issue 16's CPU goals instead: optimised fp32, bf16 and int8 vs timm at batch 8 and 1; runs "
        "scripts/benchmark_cpu.py (its own options: --help there) with --model, --img-size, --write-markdown",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--write-markdown", type=Path, metavar="PATH", help="write the results into PATH (BENCHMARKS.md)")
    p.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.img_size_given = args.img_size is not None
    if args.img_size is None:
        args.img_size = 320
    if args.smoke:
        args.batch_size = args.train_batch_size = 1
        args.img_size = args.train_img_size = 64
        args.img_size_given = True
        args.iters = args.train_iters = 1
        args.warmup = 0
        args.agreement_images = 2
        args.calib_images = 2
        args.skip_compile = True
    for name in ("batch_size", "img_size", "iters", "train_batch_size", "train_img_size", "train_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.img_size < 32 or args.train_img_size < 32:
        p.error("image sizes must be at least 32 px (the network downsamples 32×)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda, but torch sees no CUDA device")
        return 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        run_rss_probe(args, device)
        return 0
    if args.cpu_goals:
        forwarded = ["--model", args.model, "--img-size", str(args.img_size or 320)]
        forwarded += ["--write-markdown", str(args.write_markdown)] if args.write_markdown else []
        return run_script("benchmark_cpu.py", forwarded).returncode
    results: dict[str, Any] = dict(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine_info(device),
        settings=dict(vars(args), argv=sys.argv[1:] if argv is None else argv, write_markdown=None),
        load_before=load_average(),
        busy_python_before=other_python_processes(),
    )
    if args.family:
        results["family"] = bench_family(args, device)
    elif not args.skip_inference:
        log("inference")
        results["inference"] = bench_inference(args, device)
        log("reduced-precision agreement")
        results["agreement"] = bench_agreement(args, device)
    if not args.skip_training and not args.family:
        log("training")
        results["training"] = bench_training(args, device)
    results["load_after"] = load_average()
    results["goals"] = [] if args.family else check_goals(results)
    if args.write_markdown:
        write_markdown(args.write_markdown, markdown(results), "family" if args.family else "benchmark")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
