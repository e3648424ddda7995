"""``effnetv2 embed``: one pooled embedding (the classifier's input, 2152 values) per image, saved to a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from effnetv2.cli.images import find_images
from effnetv2.cli.outputs import atomic_path, check_output, save_safetensors, write_lines
from effnetv2.cli.runtime import (
    add_model_options,
    add_run_options,
    exit_status,
    image_run,
    load_model,
    resolve_device,
    run_model,
)

SUFFIXES = (".npy", ".safetensors")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="pooled image embeddings to .npy or .safetensors",
        description="Save the pooled features the classifier reads (one row of num_features values per image). "
        ".safetensors: tensor 'embeddings' (N, D) and the image paths, in row order, as a JSON list under the "
        "header metadata key 'paths'. .npy: the (N, D) float32 array, and the paths one per line in "
        "OUTPUT with the suffix .paths.txt (emb.npy -> emb.paths.txt). Images that fail are skipped.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="output file: .npy or .safetensors"
    )
    add_model_options(parser)
    add_run_options(parser)
    parser.set_defaults(func=run)


def paths_file(output: Path) -> Path:
    """Where the image paths of a ``.npy`` output go: ``emb.npy`` → ``emb.paths.txt``."""
    return output.with_suffix(".paths.txt")


def run(args: argparse.Namespace) -> int:
    files = find_images(args.paths)
    output = check_output(args.output, SUFFIXES)
    device = resolve_device(args.device)
    model = load_model(args).to(device)
    images, config = image_run(files, args, model, device)

    def embed(x: Tensor) -> Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)

    paths: list[str] = []
    rows: list[Tensor] = []
    for batch_paths, batch in run_model(embed, images, device, args.amp):
        paths.extend(map(str, batch_paths))
        rows.append(batch)
    if not paths:
        print(f"effnetv2: no image could be read; {output} not written", file=sys.stderr)
        return 1
    embeddings = torch.cat(rows)

    if output.suffix.lower() == ".npy":
        write_lines(paths_file(output), paths)
        with atomic_path(output) as tmp, open(tmp, "wb") as f:
            np.save(f, embeddings.numpy())
    else:
        save_safetensors(output, {"embeddings": embeddings}, paths, model=args.model, input_size=config["input_size"])
    return exit_status(images)
