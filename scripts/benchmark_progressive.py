"""Progressive learning measured, not asserted (issue 26 item 6): the same run with and without ``--progressive``.

    python scripts/benchmark_progressive.py [--model tf_efficientnetv2_b0] [--epochs 15] [--stages 3]
        [--progressive-batch]

Trains the same small model from random init, same epochs, seed and recipe, on a real offline image set, once
with a fixed image size and once with ``progressive=STAGES`` (sizes from ``--min-img-size`` to ``--img-size``,
RandAugment magnitude and dropout growing with them), and prints the wall time and the final and best val top-1 of
both as a markdown table, with the schedule the progressive run printed. The fixed-size run trains with the
progressive run's end values (RandAugment magnitude, dropout), so the schedule is the only difference.

The recipe learns from random init in the budget: SGD at lr 0.02 without adaptive gradient clipping (train's
fine-tuning defaults, lr 0.01 with ``--agc 0.01``, reached 28 % val top-1 after 5 epochs at 64 px, this recipe
82 %).

The data: scikit-learn's ``load_digits`` (1,797 8×8 handwritten digits, upscaled) when scikit-learn is
installed; otherwise the digits 0-9 rendered from the fonts that matplotlib ships (DejaVu, STIX and Computer
Modern, 22 faces), each image a random rotation, scale, shift and grey level; training and validation use
different fonts. Either way: 10 classes, real glyph shapes, no network.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import cpu_model, log
from PIL import Image, ImageDraw, ImageFont

from effnetv2.train.runner import TrainOptions, fit

FONT_PREFIXES = ("DejaVu", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10", "cmmi10")


def _save(root: Path, split: str, label: int, index: int, image: Image.Image) -> None:
    folder = root / split / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{index:05d}.png")


def digits_from_sklearn(root: Path, size: int) -> str:
    """scikit-learn's 8×8 digits, upscaled to ``size``; every fifth image held out for validation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        _save(root, "val" if i % 5 == 0 else "train", int(label), i, grey.convert("RGB"))
    return f"scikit-learn load_digits ({len(digits.images)} images, 8×8 upscaled to {size} px)"


def _font_files() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(p for p in folder.glob("*.ttf") if p.name.startswith(FONT_PREFIXES) and "Display" not in p.name)


def _glyph(font_path: Path, digit: int, size: int, rng: random.Random) -> Image.Image:
    font = ImageFont.truetype(str(font_path), int(size * rng.uniform(0.55, 0.85)))
    ink, paper = sorted((rng.randrange(0, 110), rng.randrange(150, 256)))
    canvas = Image.new("L", (size * 2, size * 2), paper)
    ImageDraw.Draw(canvas).text((size, size), str(digit), fill=ink, font=font, anchor="mm")
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, fillcolor=paper)
    dx, dy = (rng.randint(-size // 8, size // 8) for _ in range(2))
    left, top = size // 2 + dx, size // 2 + dy
    return canvas.crop((left, top, left + size, top + size)).convert("RGB")


def digits_from_fonts(root: Path, size: int, per_font: int, seed: int = 0) -> str:
    """Digits rendered from matplotlib's fonts; one font in four held out for validation."""
    rng = random.Random(seed)
    fonts = _font_files()
    count = 0
    for f, font in enumerate(fonts):
        split = "val" if f % 4 == 3 else "train"
        for digit in range(10):
            for _ in range(per_font if split == "train" else max(1, per_font // 2)):
                _save(root, split, digit, count, _glyph(font, digit, size, rng))
                count += 1
    return f"digits rendered from {len(fonts)} fonts matplotlib ships ({count} images at {size} px)"


def make_data(root: Path, size: int, per_font: int) -> str:
    try:
        return digits_from_sklearn(root, size)
    except ImportError:
        return digits_from_fonts(root, size, per_font)


def run(data: Path, out: Path, args: argparse.Namespace, progressive: int) -> dict:
    opts = TrainOptions(
        data=data,
        output=out,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        img_size=args.img_size,
        lr=args.lr,
        agc=args.agc,
        warmup_epochs=1.0,
        drop_path=0.0,
        workers=0,
        seed=args.seed,
        log_format="json",
        save_state="none",
        auto_augment="rand",
        progressive=progressive or None,
        min_img_size=args.min_img_size if progressive else None,
        randaug_magnitude=args.randaug_magnitude,
        drop=args.drop,
        progressive_batch=bool(progressive) and args.progressive_batch,
    )
    start = time.perf_counter()
    fit(opts)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "final": rows[-1]["val_top1"], "best": max(r["val_top1"] for r in rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tf_efficientnetv2_b0")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--min-img-size", type=int, default=64)
    p.add_argument("--randaug-magnitude", type=int, default=9)
    p.add_argument("--drop", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--agc", type=float, default=0.0, help="adaptive gradient clipping (0: none; see above)")
    p.add_argument("--per-font", type=int, default=4, help="training images per font and digit (font set only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progressive-batch", action="store_true", help="the progressive run with constant-memory batches")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        described = make_data(data, args.img_size, args.per_font)
        log(f"data: {described}")
        fixed = run(data, Path(tmp, "fixed"), args, 0)
        log(f"fixed size: {fixed}")
        prog = run(data, Path(tmp, "progressive"), args, args.stages)
        log(f"progressive: {prog}")
    print(
        f"{args.model}, random init, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, agc {args.agc}, "
        f"RandAugment {args.randaug_magnitude}, dropout {args.drop}, seed {args.seed}; "
    )
    print(f"{described}; {torch.get_num_threads()} threads on {cpu_model()}\n")
    print("| run | wall time | final val top-1 | best val top-1 |")
    print("|---|---|---|---|")
    print(f"| fixed {args.img_size} px | {fixed['seconds']:.0f} s | {fixed['final']:.1f} % | {fixed['best']:.1f} % |")
    print(
        f"| --progressive {args.stages}{' --progressive-batch' if args.progressive_batch else ''} "
        f"({args.min_img_size}→{args.img_size} px) | {prog['seconds']:.0f} s "
        f"({prog['seconds'] / fixed['seconds']:.2f}×) | {prog['final']:.1f} % | {prog['best']:.1f} % |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
