#!/usr/bin/env python
"""Issue 16, item 4: effnetv2 against timm on one GPU, in one command.

    python scripts/benchmark_gpu.py --write-markdown BENCHMARKS.md            # ~10 min on a recent GPU
    python scripts/benchmark_gpu.py --device cpu --smoke                        # checks the script itself (CI)

On the same weights (timm's model gets ours through the key map; both well-conditioned as the test oracle is):

1. **CUDA parity** of every effnetv2 path with timm eager fp32: eager fp32 and ``optimize_for_inference`` fp32
   (relative difference of the logits, which should be ~1e-6; TF32 is switched off for this part), the training-mode
   loss and the gradients of one step;
2. **AMP**: effnetv2 and timm under the same ``torch.autocast`` (fp16 and bf16) against fp32, and the optimised copy's
   own fp16/bf16 weights, each against an fp64 copy (effnetv2.inference.compare): error, limit, top-1;
3. **throughput** at ``--batch-size`` (default 256) × ``--img-size`` (320): eager and ``torch.compile`` inference
   (fp32 and the AMP dtype), and one training step (SGD, AMP), effnetv2 and timm interleaved round by round.

The card's name, torch/CUDA/cuDNN versions and every figure go to BENCHMARKS.md (section ``gpu``) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from _bench import ARCH, comparison_dict, log, machine_info, medians, paired_rounds, stand_in_pair, write_markdown

import effnetv2
from effnetv2.atomic import write_text
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compare import compare, reference, relative_difference, run_batched
from effnetv2.testing import mixed_images
from effnetv2.weights import KeyMap


def parity(ours: torch.nn.Module, theirs: torch.nn.Module, key_map: KeyMap, x: torch.Tensor) -> dict[str, float]:
    """fp32 logits, train-mode loss and gradients of effnetv2 against timm on the same device (TF32 off)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            expected = theirs(x)
            out = {"eager fp32 logits": relative_difference(ours(x), expected)}
            out["optimised fp32 logits"] = relative_difference(optimize_for_inference(ours)(x), expected)
        target = torch.arange(len(x), device=x.device) % ours.num_classes
        losses, grads = [], []
        for model in (ours, theirs):
            model.train()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
            model.zero_grad(set_to_none=True)
            model.eval()
        out["train-mode loss"] = relative_difference(losses[0], losses[1])
        worst = max(relative_difference(g, grads[1][key_map.to_timm(n)]) for n, g in grads[0].items())
        out["gradients (worst tensor)"] = worst
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default=ARCH, choices=effnetv2.list_models())
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (torch.compile compiles here)")
    p.add_argument("--quality-images", type=int, default=256)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny run that checks the script: 64 px, batch 2, 1 round")
    p.add_argument("--write-markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.smoke:
        args.img_size, args.batch_size, args.rounds, args.warmup, args.quality_images = 64, 2, 1, 0, 8
        args.skip_compile = True
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine (--device cpu --smoke checks it on a CPU)")
    size, batch = args.img_size, args.batch_size
    amp = [torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.bfloat16]

    log(f"{args.model} at {size} px on {device}: stand-in weights, timm's copy")
    ours, exemplars, theirs = stand_in_pair(args.model, size)
    key_map = KeyMap(ours.spec)
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    exemplars = exemplars.to(device)

    log("parity ...")
    parity_result = parity(ours, theirs, key_map, mixed_images(exemplars, min(batch, 16), seed=1))

    log("AMP against an fp64 copy ...")
    test = mixed_images(exemplars, args.quality_images, seed=5)
    ref = reference(ours, test, precisions=amp, batch=32)
    amp_result: dict[str, Any] = {}
    with torch.no_grad():
        for dtype in amp:
            name = str(dtype).removeprefix("torch.")
            for label, model in (("effnetv2", ours), ("timm", theirs)):
                with torch.autocast(device.type, dtype=dtype):
                    got = run_batched(model, test, 32)
                amp_result[f"{label} autocast {name}"] = comparison_dict(compare(got, ref, dtype))
            if device.type == "cuda" or dtype != torch.float16:  # float16 weights are for CUDA only
                got = run_batched(optimize_for_inference(ours, dtype=dtype), test, 32)
                amp_result[f"effnetv2 optimised {name}"] = comparison_dict(compare(got, ref, dtype))

    log("throughput ...")
    x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % ours.num_classes
    timm_cl = theirs.to(memory_format=torch.channels_last)
    runs: dict[str, Callable[[], Any]] = {}
    amp_dtype = amp[0]
    amp_name = str(amp_dtype).removeprefix("torch.")

    def infer(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return model(x)

        return run

    runs["timm eager fp32"] = infer(timm_cl)
    runs["effnetv2 eager fp32"] = infer(ours)
    runs["effnetv2 optimised fp32"] = infer(optimize_for_inference(ours))
    runs[f"timm eager {amp_name} autocast"] = infer(timm_cl, amp_dtype)
    runs[f"effnetv2 eager {amp_name} autocast"] = infer(ours, amp_dtype)
    runs[f"effnetv2 optimised {amp_name}"] = infer(optimize_for_inference(ours, dtype=amp_dtype))
    if not args.skip_compile:
        runs[f"timm compiled {amp_name} autocast"] = infer(torch.compile(timm_cl), amp_dtype)
        runs[f"effnetv2 optimised {amp_name} compiled"] = infer(
            optimize_for_inference(ours, dtype=amp_dtype, compile=True)
        )
    inference = medians(paired_rounds(runs, args.rounds, args.warmup, device))

    def step(model: torch.nn.Module) -> Callable[[], Any]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        def run() -> None:
            with torch.autocast(device.type, dtype=amp_dtype):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

        return run

    steps = {f"timm train step ({amp_name} AMP)": step(theirs.train())}
    steps[f"effnetv2 train step ({amp_name} AMP)"] = step(ours.train())
    training = medians(paired_rounds(steps, max(1, args.rounds // 2), 1 if args.warmup else 0, device))
    machine = machine_info(device)
    if device.type == "cuda":
        machine["cuda"] = torch.version.cuda
        machine["cudnn"] = torch.backends.cudnn.version()
    result = dict(
        model=args.model,
        img_size=size,
        batch_size=batch,
        machine=machine,
        parity=parity_result,
        amp=amp_result,
        eager_fp32_error=ref.eager_error,
        inference_img_per_s={name: batch / t for name, t in inference.items()},
        training_img_per_s={name: batch / t for name, t in training.items()},
    )
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")  # atomic
    if args.write_markdown:
        write_markdown(args.write_markdown, markdown(result), section="gpu")
    print(json.dumps(result, indent=2))
    return result


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    card = m.get("gpu", m["cpu"])
    parity_rows = "\n".join(f"| {name} | {value:.2e} |" for name, value in r["parity"].items())
    amp_rows = "\n".join(
        f"| {name} | {100 * a['top1']:.1f} % | {a['error']:.3g} | {a['limit']:.3g} |" for name, a in r["amp"].items()
    )
    speed = {**r["inference_img_per_s"], **r["training_img_per_s"]}
    speed_rows = "\n".join(f"| {name} | {v:.1f} |" for name, v in speed.items())
    return f"""### GPU: `{r["model"]}` on {card}

Generated by `python scripts/benchmark_gpu.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}: torch
{m["torch"]}, CUDA {m.get("cuda")}, cuDNN {m.get("cudnn")}, timm {m["timm"]}.

| parity with timm eager fp32 (same GPU, TF32 off) | max relative difference |
|---|---:|
{parity_rows}

Reduced precision against an fp64 copy (`effnetv2.inference.compare`: limit 4× effnetv2 eager in that dtype; eager
fp32's own error {r["eager_fp32_error"]:.3g}):

| reduced precision | top-1 as fp64 | max relative error vs fp64 | limit |
|---|---:|---:|---:|
{amp_rows}

Throughput at batch {r["batch_size"]} × {r["img_size"]} px, channels_last, interleaved rounds:

| configuration | img/s |
|---|---:|
{speed_rows}"""


if __name__ == "__main__":
    main()
