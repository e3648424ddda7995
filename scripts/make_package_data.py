"""Regenerate the files shipped in ``effnetv2/data/``: the ImageNet-1k class names and synsets, and the sample photo.

Run once by a maintainer; the outputs are committed (see ``effnetv2/data/README.md`` for their sources and
licences), so neither torchvision's private module, timm nor scikit-image is needed at run time.

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimage
    unzip -o /tmp/skimage/scikit_image-*.whl skimage/data/chelsea.png -d /tmp/skimage
    python scripts/make_package_data.py --chelsea /tmp/skimage/skimage/data/chelsea.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from effnetv2.atomic import atomic_path, write_text

DATA = Path(__file__).resolve().parents[1] / "effnetv2" / "data"
MAX_SAMPLE_BYTES = 150_000


def write_class_names(path: Path) -> None:
    # torchvision's list: the common ImageNet-1k names (de-duplicated: 'crane bird'/'crane', 'tank suit'/'maillot').
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert len(_IMAGENET_CATEGORIES) == 1000 and len(set(_IMAGENET_CATEGORIES)) == 1000
    write_text(path, "\n".join(_IMAGENET_CATEGORIES) + "\n")


def write_synsets(path: Path) -> None:
    # timm's list (the test extra installs timm): the 1000 ILSVRC-2012 WordNet ids, sorted, i.e. in class-index order.
    from importlib.resources import files

    synsets = files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text(encoding="utf-8").split()
    assert len(synsets) == 1000 and synsets == sorted(set(synsets))
    write_text(path, "\n".join(synsets) + "\n")


def write_sample(source: Path, path: Path) -> None:
    # The photo is kept at its own size (451×300); only re-encoded as JPEG to stay well under the size budget.
    with Image.open(source) as img, atomic_path(path) as tmp:
        img.convert("RGB").save(tmp, format="JPEG", quality=90, optimize=True)
    size = path.stat().st_size
    assert size < MAX_SAMPLE_BYTES, f"{path} is {size} bytes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chelsea", type=Path, help="scikit-image's skimage/data/chelsea.png")
    args = parser.parse_args()
    write_class_names(DATA / "imagenet_classes.txt")
    write_synsets(DATA / "imagenet_synsets.txt")
    if args.chelsea:
        write_sample(args.chelsea, DATA / "sample.jpg")


if __name__ == "__main__":
    main()
