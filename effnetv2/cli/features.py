"""``effnetv2 features``: the multi-scale feature maps of images (``features_only=True``), saved to .safetensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from effnetv2.cli.images import find_images
from effnetv2.cli.outputs import check_output, save_safetensors
from effnetv2.cli.paths import encode_path
from effnetv2.cli.runtime import (
    add_model_options,
    add_run_options,
    exit_status,
    image_run,
    load_model,
    model_metadata,
    resolve_device,
    run_model,
)


def index_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated feature-level indices, e.g. ``1,2,4``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,2,4, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="multi-scale feature maps to .safetensors",
        description="Save the feature maps of the selected levels (timm's features_only=True) to a .safetensors "
        "file: tensor 'features.{level}' of shape (N, C, H/stride, W/stride) per level, images in the order of "
        "the JSON list under the header metadata key 'paths' (escaped as embed --help says). All maps are held "
        "in memory until written. Images that fail are skipped.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="output .safetensors file")
    parser.add_argument(
        "--out-indices",
        type=index_list,
        default=(0, 1, 2, 3, 4),
        metavar="I,J,...",
        help="feature levels, 0 (stride 2) to 4 (stride 32) (default: all: 0,1,2,3,4)",
    )
    add_model_options(parser, num_classes=False)
    add_run_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = find_images(args.paths)
    output = check_output(args.output, (".safetensors",))
    device = resolve_device(args.device)
    model = load_model(args, features_only=True, out_indices=args.out_indices).to(device)
    info = model.feature_info
    images, config = image_run(files, args, model, device)

    paths: list[str] = []
    maps: list[list[Tensor]] = [[] for _ in info.out_indices]
    for batch_paths, features in run_model(model, images, device, args.amp):
        paths.extend(map(str, batch_paths))
        for level_maps, feature in zip(maps, features, strict=True):
            level_maps.append(feature)
    if not paths:
        print(f"effnetv2: no image could be read; {encode_path(output)} not written", file=sys.stderr)
        return 1

    levels = zip(info.out_indices, maps, strict=True)
    tensors = {f"features.{level}": torch.cat(level_maps) for level, level_maps in levels}
    save_safetensors(
        output,
        tensors,
        paths,
        **model_metadata(args, model),
        input_size=config["input_size"],
        out_indices=info.out_indices,
        channels=info.channels(),
        reductions=info.reduction(),
    )
    return exit_status(images)
