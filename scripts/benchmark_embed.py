#!/usr/bin/env python
"""End-to-end embedding of a folder of JPEGs (decode + transform + model + write), effnetv2 against timm.

Each configuration runs in a fresh process; the numbers are its wall time (images/s, model loading included) and
its peak resident memory (the largest VmHWM among the process and its DataLoader workers, from
``getrusage(RUSAGE_CHILDREN)`` of a wrapper that runs only it). Configurations:

- ``effnetv2 embed -o FOLDER``: sharded output, written as the images are read;
- ``effnetv2 embed -o FILE.safetensors``: one file, every row held until the end;
- ``timm (inference.py loop)``: timm's own pipeline as its ``inference.py`` runs it (``create_dataset``,
  ``create_loader`` with the model's eval transform, ``forward_head(pre_logits=True)``), every row held until the end.

The same weights (a random ``tf_efficientnetv2_b0`` by default: small enough for tens of thousands of images on
two CPU cores) and the same folder for all.

    python scripts/benchmark_embed.py --counts 1000 20000 --write-markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size: int) -> None:
    """``count`` JPEGs of ``size`` px: smooth random colour fields, 100 per subfolder."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (count % 97 + 8, 4, 4, 3), dtype=np.uint8)
    for i in range(count):
        sub = folder / f"{i // 100:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base[i % len(base)]).resize((size, size), Image.BILINEAR).save(sub / f"{i:06d}.jpg")


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` in a wrapper process that reports its children's peak RSS; wall time from here."""
    wrapper = (
        "import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
        "print(json.dumps(dict(rc=rc, maxrss_kib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} failed ({result['rc']}): {out.stderr[-2000:]}")
    return dict(wall_s=wall, peak_rss_mib=result["maxrss_kib"] / 1024)


def timm_child(args: argparse.Namespace) -> None:
    """What timm's inference.py does for ``--model ... --num-classes 0``-style embeddings: all rows in memory."""
    import timm
    import torch

    model = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=dict(file=args.weights))
    model.reset_classifier(0)
    model.eval()
    config = timm.data.resolve_data_config({"img_size": args.img_size}, model=model, use_test_size=True)
    dataset = timm.data.create_dataset("", root=args.images)
    loader = timm.data.create_loader(
        dataset,
        input_size=config["input_size"],
        batch_size=args.batch_size,
        use_prefetcher=False,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        crop_mode=config["crop_mode"],
        num_workers=args.workers,
    )
    rows = []
    with torch.inference_mode():
        for images, _ in loader:
            rows.append(model(images).numpy())
    np.save(args.output, np.concatenate(rows))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from _bench import machine_info  # imported here: the timm child measured for memory needs none of it

    import effnetv2

    results: dict[str, Any] = dict(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        argv=sys.argv[1:],
        machine=machine_info(torch.device("cpu")),
        settings=dict(
            model=args.model,
            img_size=args.img_size,
            jpeg_size=args.jpeg_size,
            batch_size=args.batch_size,
            workers=args.workers,
            shard_size=args.shard_size,
        ),
        rows=[],
    )
    with tempfile.TemporaryDirectory(prefix="effnetv2-bench-embed-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        effnetv2.save_pretrained(effnetv2.create_model(args.model), tmp / "weights")
        weights = tmp / "weights" / "model.safetensors"
        for count in args.counts:
            images = tmp / f"images-{count}"
            print(f"writing {count} JPEGs", file=sys.stderr)
            make_images(images, count, args.jpeg_size)
            common = ["--model", args.model, "--checkpoint", str(tmp / "weights"), "--img-size", str(args.img_size)]
            common += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
            embed = [sys.executable, "-m", "effnetv2", "embed", str(images), *common]
            configs = {
                "effnetv2 embed -o FOLDER (sharded)": [
                    *embed,
                    "-o",
                    str(tmp / f"out-{count}"),
                    "--shard-size",
                    str(args.shard_size),
                ],
                "effnetv2 embed -o FILE.safetensors": [*embed, "-o", str(tmp / f"out-{count}.safetensors")],
                "timm (inference.py loop)": [
                    sys.executable,
                    __file__,
                    "--timm-child",
                    "--images",
                    str(images),
                    "--weights",
                    str(weights),
                    "--output",
                    str(tmp / f"timm-{count}.npy"),
                    "--model",
                    args.model,
                    "--img-size",
                    str(args.img_size),
                    "--batch-size",
                    str(args.batch_size),
                    "--workers",
                    str(args.workers),
                ],
            }
            for name, cmd in configs.items():
                print(f"{count} images: {name}", file=sys.stderr)
                m = measure(cmd)
                results["rows"].append(dict(name=name, images=count, img_per_s=count / m["wall_s"], **m))
    return results


def markdown(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    lines = [
        f"Generated by `python scripts/benchmark_embed.py {' '.join(results['argv'])}` on {results['date']}: "
        f"{m['cpu']}, {m['cores']} cores, ISA {', '.join(m['cpu_isa']) or '–'}; torch {m['torch']}, timm {m['timm']}.",
        "",
        f"### Embedding a folder of JPEGs end to end: `{s['model']}` (random weights), {s['jpeg_size']} px JPEGs "
        f"at {s['img_size']} px, batch {s['batch_size']}, {s['workers']} decoding workers, shards of "
        f"{s['shard_size']}",
        "",
        "| configuration | images | img/s (wall, model load included) | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['name']} | {r['images']:,} | {r['img_per_s']:.0f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[1000, 20000], help="folder sizes (default 1000 20000)")
    p.add_argument("--model", default="tf_efficientnetv2_b0")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--jpeg-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--write-markdown", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timm-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timm_child:
        timm_child(args)
        return 0
    results = run(args)
    text = markdown(results)
    if args.write_markdown:
        from _bench import write_markdown

        write_markdown(args.write_markdown, text, "embed")
    print(json.dumps(results, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
