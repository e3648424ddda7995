#!/usr/bin/env python
"""int8 ONNX (``effnetv2 export --int8``) against the float paths, on this CPU, in one run.

Latency (median of paired rounds, batch 1 and 8) of: timm eager fp32 (NCHW and channels_last; ratios are against
the faster of the two),
effnetv2 ``optimize_for_inference`` fp32, ONNX Runtime fp32 (the verified float export) and ONNX Runtime int8
(:func:`effnetv2.export.export_onnx_int8`). Quality of int8 against an fp64 copy (the project's one
comparison, :mod:`effnetv2.inference.compare`) on the well-conditioned stand-in model with a nearest-prototype
classifier (:mod:`effnetv2.testing`): top-1 agreement on blended images, on those with a clear answer, and
the largest relative error next to eager fp32's own.

    python scripts/benchmark_int8.py --model tf_efficientnetv2_b0 --img-size 224 --write-markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _bench import channels_last, machine_info, medians, paired_rounds, stand_in_pair, write_markdown

import effnetv2
from effnetv2.export import export_onnx_int8
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, describe_agreement, reference, run_batched
from effnetv2.testing import mixed_images, smooth_images


def int8_hardware(isa: list[str]) -> str:
    """What this CPU runs int8 dot products on, from its ISA flags."""
    if "amx_int8" in isa:
        return "AMX-INT8"
    if "avx512_vnni" in isa or "avx_vnni" in isa:
        return "VNNI, no AMX"
    return "no VNNI or AMX: int8 runs on AVX2 integer instructions"


def median_ms(runs: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median milliseconds of each path on ``x`` over paired rounds, after one untimed round."""
    times = paired_rounds({name: (lambda fn=fn: fn(x)) for name, fn in runs.items()}, rounds, warmup=1)
    return {name: 1e3 * seconds for name, seconds in medians(times).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tf_efficientnetv2_b0", choices=effnetv2.list_models())
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--calibration", type=int, default=64, help="calibration images (every 4th held out)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--write-markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_grad_enabled(False)
    size = args.img_size
    ours, exemplars, theirs_nchw = stand_in_pair(args.model, size)
    theirs = channels_last(theirs_nchw)
    optimized = optimize_for_inference(ours)

    with tempfile.TemporaryDirectory() as work:
        report = export_onnx_int8(ours, Path(work, "int8.onnx"), smooth_images(args.calibration, size, seed=7))
        effnetv2.export_model(ours, Path(work, "float.onnx"), "onnx", img_size=size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # ORT's threads spin after a run by default, stealing the cores from whatever runs next in the round
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {
            kind: ort.InferenceSession(str(Path(work, f"{kind}.onnx")), options, providers=["CPUExecutionProvider"])
            for kind in ("float", "int8")
        }

    def ort_run(kind):
        return lambda x: torch.from_numpy(sessions[kind].run(None, {"input": x.numpy()})[0])

    runs = {
        "timm eager fp32 (NCHW)": theirs_nchw,
        "timm eager fp32 (channels_last)": lambda x: theirs(x.contiguous(memory_format=torch.channels_last)),
        "effnetv2 optimize_for_inference fp32": optimized,
        "onnxruntime fp32": ort_run("float"),
        "onnxruntime int8": ort_run("int8"),
    }
    latency = {b: median_ms(runs, smooth_images(b, size, seed=3), args.rounds) for b in (1, 8)}

    test = mixed_images(exemplars, 200, seed=11)
    comparison = compare(run_batched(ort_run("int8"), test), reference(ours, test), torch.int8)
    quality = dict(
        images=len(test),
        top1_agreement=comparison.top1,
        clear_images=comparison.clear[1],
        clear_agreement=comparison.clear[0] if comparison.clear[1] else None,
        max_rel_diff=comparison.error,
        eager_fp32_error=comparison.eager_error,
        report=report.summary(),
    )
    result = dict(
        model=args.model, img_size=size, machine=machine_info(torch.device("cpu")), latency_ms=latency, quality=quality
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_markdown:
        m = result["machine"]
        best = {b: min(latency[b][n] for n in runs if n.startswith("timm")) for b in (1, 8)}  # timm at its best
        rows = "\n".join(
            f"| {name} | {latency[1][name]:.1f} | {best[1] / latency[1][name]:.2f}x | "
            f"{latency[8][name]:.1f} | {best[8] / latency[8][name]:.2f}x |"
            for name in runs
        )
        clear_text = (
            describe_agreement(quality["clear_agreement"], quality["clear_images"])
            if quality["clear_agreement"] is not None
            else "-"
        )
        body = f"""### int8 ONNX (`effnetv2 export --int8`) on this CPU

`{args.model}` at {size} px, median of {args.rounds} paired rounds; CPU: {m["cpu"]}, ISA {", ".join(m["cpu_isa"])}
({int8_hardware(m["cpu_isa"])}), {m["torch_threads"]} threads, torch {m["torch"]},
onnxruntime {ort.__version__}.

| path | batch 1 ms | vs timm's best | batch 8 ms | vs timm's best |
|---|---|---|---|---|
{rows}

int8 quality against an fp64 copy ({quality["images"]} blended images, the stand-in model with a 10-class
prototype classifier): top-1 agreement {100 * quality["top1_agreement"]:.1f} %; on the {quality["clear_images"]}
images with a clear answer (top-1 probability ≥ 0.2 above the second): {clear_text}; largest relative logit
error {quality["max_rel_diff"]:.3g} (eager fp32: {quality["eager_fp32_error"]:.3g})."""
        write_markdown(args.write_markdown, body, section="int8")


if __name__ == "__main__":
    main()
