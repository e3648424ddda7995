"""How many data-loading workers make ``train`` and ``predict`` fastest on this machine (issue 27 item 6).

    python scripts/benchmark_workers.py [--rounds 3] [--cpus 1,2]

For each CPU count (this process's affinity narrowed to that many CPUs, torch's threads set to match) and each
``--workers`` value (0, 1, 2, ...), in paired rounds (every configuration once per round, after a warm-up round):

- train: :func:`effnetv2.train.runner.fit`, one epoch of a small model (``--model``, default tf_efficientnetv2_b0)
  at ``--img-size`` on a folder of crops of the packaged sample photo; images/s of the training loop (the
  ``images_per_s`` of its metrics row: worker start-up, decoding, augmentation and the optimizer steps);
- predict: the command's decode-and-batch path (:class:`effnetv2.cli.batches.ImageRun`) and the model's forward
  pass under ``torch.inference_mode``, images/s over the whole folder.

Two image sets: ``small``, crops of the sample photo as it ships (451×300 px, saved at about 300 px), and
``large``, the same crops upscaled to 1600 px on the long side (a downscaled phone photo: decoding costs more).
Prints a markdown table (the numbers are medians over the rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import cpu_model, log
from PIL import Image

from effnetv2.cli.batches import ImageRun
from effnetv2.cli.model_setup import eval_transform
from effnetv2.data import open_image, sample_image_path
from effnetv2.registry import create_model
from effnetv2.train.runner import TrainOptions, fit

LONG_SIDE = {"small": 300, "large": 1600}


def write_images(folder: Path, count: int, long_side: int, rng: np.random.Generator) -> None:
    """``count`` random crops of the sample photo, resized to ``long_side`` on the long side, as JPEG."""
    photo = open_image(sample_image_path())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = int(rng.integers(200, photo.width + 1)), int(rng.integers(150, photo.height + 1))
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        crop = photo.crop((left, top, left + w, top + h))
        scale = long_side / max(crop.size)
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC)
        crop.save(folder / f"{i}.jpg", quality=90)


def make_data(root: Path, kind: str, train: int, val: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for name in ("a", "b"):
            write_images(root / kind / split / name, n // 2, LONG_SIDE[kind], rng)
    return root / kind


def train_rate(data: Path, out: Path, args: argparse.Namespace, workers: int) -> float:
    """images/s of one training epoch with ``workers`` loader processes."""
    opts = TrainOptions(
        data=data,
        output=out,
        model=args.model,
        epochs=1,
        batch_size=args.batch_size,
        img_size=args.img_size,
        workers=workers,
        save_state="none",
        log_format="json",
    )
    with contextlib.redirect_stdout(sys.stderr):  # the run's progress lines; stdout carries the table
        fit(opts)
    rate = _last_rate(out)
    for f in out.iterdir():  # the next round writes a new run
        if f.is_file():
            f.unlink()
    return rate


def _last_rate(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return float(rows[-1]["images_per_s"])


def predict_rate(files: list[Path], model: torch.nn.Module, args: argparse.Namespace, workers: int) -> float:
    """images/s of predict's decode, batch and forward path over ``files``."""
    transform, _ = eval_transform(model, args.img_size)
    start = time.perf_counter()
    with torch.inference_mode():
        for _, images in ImageRun(files, transform, args.batch_size, workers):
            model(images).softmax(1)
    return len(files) / (time.perf_counter() - start)


def measure(cpus: int, all_cpus: list[int], args: argparse.Namespace, root: Path) -> list[tuple]:
    os.sched_setaffinity(0, set(all_cpus[:cpus]))  # loader workers inherit it
    torch.set_num_threads(cpus)
    rows = []
    model = create_model(args.model).eval()
    for kind in args.images:
        data = root / kind
        files = sorted((data / "train").rglob("*.jpg"))
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds + 1):  # round 0: warm-up, not counted
            for w in args.workers:
                t = train_rate(data, root / "run", args, w)
                p = predict_rate(files, model, args, w)
                if round_:
                    rates.setdefault(("train", w), []).append(t)
                    rates.setdefault(("predict", w), []).append(p)
            log(f"  {cpus} CPU(s), {kind} images: round {round_}/{args.rounds}")
        for (task, w), values in sorted(rates.items()):
            rows.append((cpus, kind, task, w, statistics.median(values), min(values), max(values)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnetv2_b0")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="1,2", help="comma-separated CPU counts to try")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated --workers values")
    parser.add_argument("--images", default="small,large", help="image sets: small, large")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.images = args.images.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for kind in args.images:
            make_data(root, kind, args.train_images, 16)
        rows, all_cpus, load = [], sorted(os.sched_getaffinity(0)), os.getloadavg()
        for cpus in (int(c) for c in args.cpus.split(",")):
            rows += measure(cpus, all_cpus, args, root)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"load average (1, 5, 15 min) at the start {load}, at the end {os.getloadavg()}")
    print(
        f"{args.model} at {args.img_size} px, batch {args.batch_size}, {args.train_images} images, {args.rounds} rounds"
    )
    print("\n| CPUs | images | task | --workers | images/s (median) | min–max |\n|---|---|---|---|---|---|")
    for cpus, kind, task, w, med, low, high in rows:
        print(f"| {cpus} | {kind} | {task} | {w} | {med:.1f} | {low:.1f}–{high:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
