"""``effnetv2 predict``: the top-k ImageNet classes of images (of the bundled sample photo when given none)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any, TextIO

from effnetv2.cli import CLIError
from effnetv2.cli.options import add_input_options, add_model_options, add_run_options, positive_int

DEFAULT_TOPK = 5

# One result per image: {"path": str, "topk": [{"index": int, "label": str, "prob": float}, ...]}.
Prediction = dict[str, Any]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify images: top-k classes (ImageNet, or a fine-tuned model's)",
        description="Classify images and print the top-k classes of each: ImageNet-1k classes, or the label_names of "
        "a fine-tuned model (--checkpoint RUN_FOLDER). "
        "With no PATH, classifies a sample photo shipped with effnetv2. Paths are printed as UTF-8 with backslash "
        "escapes for backslashes, control characters and bytes that are not UTF-8, as embed --help says.",
    )
    add_input_options(parser, default="the bundled sample photo")
    add_model_options(parser)
    parser.add_argument(
        "--topk", type=positive_int, metavar="K", help="classes per image (default: 5, or the class count if fewer)"
    )
    add_run_options(parser)
    parser.add_argument("--format", choices=tuple(WRITERS), default="table", help="output format (default: table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    from effnetv2.cli.batches import run_model, strided_batches
    from effnetv2.cli.inputs import input_images
    from effnetv2.cli.model_setup import class_labels, image_run, inference_model, load_model, resolve_device
    from effnetv2.data.assets import sample_image_path
    from effnetv2.distributed import (
        COMMAND_TIMEOUT,
        broadcast_object,
        close_distributed,
        gather_to_main,
        init_distributed,
        rank_device,
    )
    from effnetv2.path_escape import encode_path

    files = input_images(args, default=sample_image_path())
    device = resolve_device(args.device)
    env = init_distributed(
        device, COMMAND_TIMEOUT
    )  # under torchrun each process classifies every K-th image; rank 0 prints all
    device = rank_device(device, env)
    model = load_model(args)
    if model.num_classes < 1:
        raise CLIError("the model has no classifier (num_classes=0): use effnetv2 embed for its embeddings")
    topk = min(DEFAULT_TOPK, model.num_classes) if args.topk is None else args.topk
    if topk > model.num_classes:
        raise CLIError(f"--topk {topk} is more than the model's {model.num_classes} classes")
    labels = class_labels(model.num_classes, model.pretrained_cfg.get("label_names"))
    plan = strided_batches(len(files), args.batch_size, env.rank, env.world_size)
    images, _ = image_run(files, args, model, device, batches=plan)
    runner, amp = inference_model(model, args, device)

    predictions: list[tuple[int, Prediction]] = []  # (position in files, prediction)
    decoded = ((batch.indices, batch.images) for batch in images.batches() if batch.images is not None)
    for positions, logits in run_model(runner, decoded, device, amp):
        probs, indices = logits.softmax(dim=1).topk(topk, dim=1)
        for position, prob_row, index_row in zip(positions, probs.tolist(), indices.tolist(), strict=True):
            top = [dict(index=i, label=labels[i], prob=p) for i, p in zip(index_row, prob_row, strict=True)]
            predictions.append((position, dict(path=encode_path(files[position]), topk=top)))
    shares = gather_to_main((predictions, len(images.failed)), env)
    status = broadcast_object(1 if any(failed for _, failed in shares) else 0, env)
    if env.is_main:
        merged = sorted((item for share, _ in shares for item in share), key=lambda item: item[0])
        WRITERS[args.format]([prediction for _, prediction in merged], sys.stdout)
    close_distributed(env)
    return status


def write_table(predictions: list[Prediction], out: TextIO) -> None:
    for n, prediction in enumerate(predictions):
        out.write(("\n" if n else "") + f"{prediction['path']}\n  rank  class  prob    label\n")
        for rank, top in enumerate(prediction["topk"], start=1):
            out.write(f"  {rank:>4}  {top['index']:>5}  {top['prob']:.4f}  {top['label']}\n")


def write_json(predictions: list[Prediction], out: TextIO) -> None:
    json.dump(predictions, out, indent=2)
    out.write("\n")


def write_csv(predictions: list[Prediction], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "rank", "index", "label", "prob"])
    for prediction in predictions:
        for rank, top in enumerate(prediction["topk"], start=1):
            writer.writerow([prediction["path"], rank, top["index"], top["label"], top["prob"]])


WRITERS = {"table": write_table, "json": write_json, "csv": write_csv}
