"""Write a tiny labelled image folder for trying ``effnetv2 train`` and ``validate`` offline.

    python scripts/make_demo_data.py demo-data
    effnetv2 train demo-data --checkpoint demo-model --output runs/demo --epochs 1 --img-size 64 --batch-size 4
    effnetv2 validate demo-data --checkpoint runs/demo

The layout is the one ``train`` reads: ``OUT/{train,val}/{cat,colours}/*.jpg``. ``cat`` holds random crops (some
mirrored) of the photo shipped with effnetv2 (Chelsea the cat, CC0); ``colours`` holds smooth random colour fields.
A few dozen small images: enough to run every command in seconds, far too few to learn anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from effnetv2.atomic import atomic_folder
from effnetv2.data import open_image, sample_image_path

SIZE = 96
COUNTS = {"train": 8, "val": 4}


def cat_crops(n: int, rng: np.random.Generator) -> list[Image.Image]:
    photo = open_image(sample_image_path())
    crops = []
    for _ in range(n):
        side = int(rng.integers(180, min(photo.size) + 1))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        crops.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return crops


def colour_fields(n: int, rng: np.random.Generator) -> list[Image.Image]:
    fields = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # upsampled smoothly: a soft colour gradient
        fields.append(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return fields


def write_demo_data(out: Path, seed: int = 0) -> None:
    """``out/{train,val}/{cat,colours}/*.jpg``, written as one step (:func:`effnetv2.atomic.atomic_folder`)."""
    rng = np.random.default_rng(seed)
    with atomic_folder(out) as tmp:
        for split, n in COUNTS.items():
            for name, make in (("cat", cat_crops), ("colours", colour_fields)):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i, image in enumerate(make(n, rng)):
                    image.save(folder / f"{i}.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_demo_data(args.output, args.seed)
    total = 2 * sum(COUNTS.values())
    print(f"wrote {args.output}: {total} images in {args.output}/{{train,val}}/{{cat,colours}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
