"""``effnetv2 embed``: one pooled embedding (the classifier's input: num_features values) per image, to a file or
a sharded folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from effnetv2.cli import CLIError
from effnetv2.cli.options import FOLDER_HELP, add_extraction_options, add_input_options

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
        "(effnetv2.path_escape.decode_path reverses it). Images that fail are skipped. A folder (OUTPUT without a "
        "suffix) gets shards written as the images are read: " + FOLDER_HELP,
    )
    add_input_options(parser)
    add_extraction_options(parser, "output file (.npy or .safetensors), or a folder for sharded output", required=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    import torch

    from effnetv2.cli.extraction import Extraction, run_extraction
    from effnetv2.cli.inputs import input_images
    from effnetv2.cli.model_setup import load_model, model_metadata
    from effnetv2.cli.outputs import paths_file, save_npy_with_paths, save_safetensors
    from effnetv2.path_escape import encode_path

    def check_file(output: Path) -> None:
        if output.suffix.lower() == ".npy" and paths_file(output).is_dir():
            raise CLIError(f"{encode_path(paths_file(output))}: is a folder; the paths of a .npy output go there")

    def write_file(output: Path, tensors: dict[str, Any], paths: list[str], metadata: dict[str, Any]) -> str:
        if output.suffix.lower() == ".npy":
            save_npy_with_paths(output, tensors["embeddings"].numpy(), paths)
            return f"{encode_path(output)} (+ {encode_path(paths_file(output))})"
        save_safetensors(output, tensors, paths, **metadata)
        return encode_path(output)

    extraction = Extraction(
        "embed",
        load=lambda: load_model(args, num_classes=0),  # no classifier: the model's output is the pooled pre-logits
        to_tensors=lambda model, rows: {"embeddings": torch.cat(rows)},
        describe=lambda model, config: {**model_metadata(args, model), "input_size": config["input_size"]},
        row_bytes=lambda model, config: 4 * model.head_hidden_size,
        rows=lambda model, count: f"{count} × {model.head_hidden_size} embeddings",
    )
    return run_extraction(args, input_images(args), extraction, SUFFIXES, write_file, check_file)
