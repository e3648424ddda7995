"""``effnetv2 embed``: one pooled embedding (the classifier's input, 2152 values) per image, saved to a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from effnetv2.cli import CLIError
from effnetv2.cli.images import add_input_options, input_images
from effnetv2.cli.outputs import check_output, paths_file, save_npy_with_paths, save_safetensors
from effnetv2.cli.paths import encode_path
from effnetv2.cli.runtime import (
    add_model_options,
    add_run_options,
    exit_status,
    image_run,
    inference_model,
    load_model,
    model_metadata,
    resolve_device,
    run_model,
)
from effnetv2.cli.shards import FOLDER_HELP, add_shard_options, check_file_output_options, is_folder_output, run_sharded

SUFFIXES = (".npy", ".safetensors")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="pooled image embeddings to .npy or .safetensors",
        description="Save the pooled features the classifier reads (one row of num_features values per image). "
        ".safetensors: tensor 'embeddings' (N, D) and the image paths, in row order, as a JSON list under the "
        "header metadata key 'paths'. .npy: the (N, D) float32 array, and the paths one per line in "
        "OUTPUT with the suffix .paths.txt (emb.npy -> emb.paths.txt); the pair is replaced so that FILE.npy only "
        "ever exists beside its matching FILE.paths.txt, a crash included (no FILE.npy: no complete output). "
        "Paths are written as UTF-8 with backslash escapes: \\\\ for a backslash, \\n \\r \\t, and \\xHH for "
        "each byte that is not valid UTF-8 or belongs to a control character; other paths are unchanged "
        "(effnetv2.cli.paths.decode_path reverses it). Images that fail are skipped. A folder (OUTPUT without a "
        "suffix) gets shards written as the images are read: " + FOLDER_HELP,
    )
    add_input_options(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTPUT",
        help="output file (.npy or .safetensors), or a folder for sharded output",
    )
    add_model_options(parser, num_classes=False)
    add_run_options(parser)
    add_shard_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = input_images(args)
    if is_folder_output(args.output):
        return run_sharded(
            args,
            files,
            "embed",
            load=lambda: load_model(args, num_classes=0),
            forward=lambda model: model,  # num_classes=0: the pooled pre-logits
            to_tensors=lambda model, rows: {"embeddings": torch.cat(rows)},
            describe=lambda model, config: {**model_metadata(args, model), "input_size": config["input_size"]},
            row_bytes=lambda model, config: 4 * model.head_hidden_size,
        )
    check_file_output_options(args)
    output = check_output(args.output, SUFFIXES)
    if output.suffix.lower() == ".npy" and paths_file(output).is_dir():
        raise CLIError(f"{encode_path(paths_file(output))}: is a folder; the paths of a .npy output go there")
    device = resolve_device(args.device)
    model = load_model(args, num_classes=0)  # embeddings come before the classifier: none is needed
    images, config = image_run(files, args, model, device)
    runner, amp = inference_model(model, args, device)  # num_classes=0: its output is the pooled pre-logits

    paths: list[str] = []
    rows: list[Tensor] = []
    for batch_paths, batch in run_model(runner, images, device, amp):
        paths.extend(map(str, batch_paths))
        rows.append(batch)
    if not paths:
        print(f"effnetv2: no image could be read; {encode_path(output)} not written", file=sys.stderr)
        return 1
    embeddings = torch.cat(rows)

    if output.suffix.lower() == ".npy":
        save_npy_with_paths(output, embeddings.numpy(), paths)
    else:
        save_safetensors(
            output, {"embeddings": embeddings}, paths, **model_metadata(args, model), input_size=config["input_size"]
        )
    return exit_status(images)
