"""The command line's shared options, each declared once, and the one family of argument types they use.

Commands compose these groups in their ``register``. Nothing here imports torch: ``effnetv2 --help``, a command's
``--help`` and a mistyped argument answer before the model code loads.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from effnetv2.cli import CLIError
from effnetv2.defaults import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MODEL,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    SHARD_SIZE,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_CHOICES = ("bf16", "fp16")


# ---- argument types: every number on the command line is checked by one of these two ----


def integer(low: int, high: Optional[int] = None, why: str = "") -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``; ``why`` is added to the message of a value out of range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text}{why}")
        return value

    return parse


def number(
    low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite float in ``[low, high]`` (an end is open when ``*_open``; None: unbounded)."""
    if low is not None and high is not None:
        where = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        where = f"{'>' if low_open else '>='} {low}"
    else:
        where = f"{'<' if high_open else '<='} {high}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {where}, got {text}")
        return value

    return parse


positive_int = integer(1)
non_negative_int = integer(0)
image_size = integer(
    MIN_IMAGE_SIZE,
    MAX_IMAGE_SIZE,
    f" (the network downsamples by 32; one {MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE} image already needs gigabytes of "
    "activations)",
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's share), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---- option groups ----

CHECKPOINT_HELP = (
    "local weights used instead of the Hub's: a model folder (a train --output folder, or one saved by "
    "save_pretrained) or a timm/effnetv2 weights file; a config.json in the folder or beside the file gives the "
    "classes, label names and preprocessing"
)
NUM_CLASSES_HELP = (
    "classifier size (default: the checkpoint's config.json, else the model's); must match the checkpoint's classifier"
)


def add_model_options(
    parser: argparse.ArgumentParser,
    checkpoint_help: str = CHECKPOINT_HELP,
    num_classes_help: Optional[str] = NUM_CLASSES_HELP,
    num_classes_type: Callable[[str], int] = positive_int,
    pretrained_flag: bool = False,
) -> None:
    """``--model`` and ``--checkpoint`` (and ``--num-classes`` unless its help is None). ``pretrained_flag``: a
    ``--pretrained`` switch beside ``--checkpoint``, one or the other (train starts from random weights by default)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME",
        help="architecture[.tag] (effnetv2.list_models(): the EfficientNetV2 family), its pretrained weights from "
        "the Hugging Face Hub; or local-dir:DIR / hf-hub:ORG/REPO for a saved model (default: %(default)s)",
    )
    source = parser.add_mutually_exclusive_group() if pretrained_flag else parser
    if pretrained_flag:
        source.add_argument("--pretrained", action="store_true", help="start from the published weights (Hub)")
    source.add_argument("--checkpoint", metavar="PATH", help=checkpoint_help)
    if num_classes_help is not None:
        parser.add_argument("--num-classes", type=num_classes_type, metavar="N", help=num_classes_help)


def add_image_size_option(parser: argparse.ArgumentParser, default: str, what: str = "square input size") -> None:
    """``--img-size N``, from :data:`MIN_IMAGE_SIZE` to :data:`MAX_IMAGE_SIZE`; ``default`` says what it falls
    back to."""
    parser.add_argument(
        "--img-size",
        type=image_size,
        metavar="N",
        help=f"{what}, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default: {default})",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, else mps, else cpu")


def default_workers() -> int:
    """Data-loading processes by default: none on 1 or 2 CPUs, where a worker takes a core from the model and
    the main process decodes faster itself; else one CPU left to the main process, at most 4 (BENCHMARKS.md,
    "Data-loading workers")."""
    cpus = available_cpus()
    return 0 if cpus <= 2 else min(4, cpus - 1)


def add_workers_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=default_workers(),
        metavar="N",
        help=f"{what} (default: %(default)s, from the CPUs this process may use)",
    )


def add_amp_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--amp", choices=AMP_CHOICES, help=what)


def add_batch_size_option(parser: argparse.ArgumentParser, default: int, what: str = "images per batch") -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=default, metavar="N", help=f"{what} (default: %(default)s)"
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """What predict, validate, embed and features run with: input size, batching, device, autocast, and the
    optimised (``--optimize``) or int8 (``--int8``) copy of the model."""
    add_image_size_option(parser, "the pretrained config's test size")
    add_batch_size_option(parser, 16)
    add_workers_option(parser, "image-decoding worker processes")
    add_device_option(parser)
    add_amp_option(parser, "autocast dtype (default: off; fp16 is for GPUs, slow on CPUs)")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="run optimize_for_inference's copy of the model (BatchNorm folded into the convs, channels_last); "
        "with --amp, the copy's own bf16/fp16 weights instead of autocast",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="with --optimize, on the CPU: run an int8 copy (post-training static quantization through PT2E, "
        "compiled to oneDNN's int8 kernels; needs torchao), calibrated on --calibration images; its error from fp64 "
        "and top-1 agreement on held-out calibration images are printed to stderr",
    )
    add_calibration_options(parser, "--int8")


def add_calibration_options(parser: argparse.ArgumentParser, flag: str) -> None:
    """``--calibration DIR`` and ``--calibration-images N``, for ``flag`` (predict/embed/... and export's --int8)."""
    parser.add_argument(
        "--calibration", metavar="DIR", help=f"{flag}: images (a folder or files) whose activations set the ranges"
    )
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        metavar="N",
        help=f"{flag}: use the first N images of --calibration, sorted (default: {DEFAULT_CALIBRATION_IMAGES})",
    )


def add_input_options(parser: argparse.ArgumentParser, default: str = "") -> None:
    """The images to read: PATH arguments and/or ``--files-from LIST``."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files and/or folders (searched recursively)" + (f"; default: {default}" if default else ""),
    )
    parser.add_argument(
        "--files-from",
        metavar="LIST",
        help="also read the image files listed in LIST, one path per line ('-': standard input, not under "
        "torchrun); a missing image is reported and skipped; a listed .tar file gives its images and must be readable",
    )


FOLDER_HELP = (
    "OUTPUT/shard-00000.safetensors, ... (--shard-size consecutive input files each: the same tensors, 'paths' "
    "metadata, and the files skipped under 'skipped'), then OUTPUT/index.json (model, count, shards and their "
    "row counts) once all are there. Memory holds about one shard's outputs (by default at most 4096 images and "
    "about 1 GiB of tensors: fewer images per shard for large feature maps). --resume finishes an interrupted run; "
    "under torchrun (torchrun --nproc_per_node K -m effnetv2 ...) the processes share the shards still to write and "
    "the folder is the same as one process writes."
)


def add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        metavar="N",
        help=f"folder output: input images per shard (default: {SHARD_SIZE}, or fewer so that a shard's tensors stay "
        "under about 1 GiB)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="folder output: keep the complete shards there and write the rest"
    )


def add_extraction_options(parser: argparse.ArgumentParser, output_help: str, required: bool) -> None:
    """What ``embed`` and ``features`` share: ``-o`` (a file, or a folder for shards), the model (no
    ``--num-classes``: no classifier runs), the run and the shard folder's options."""
    parser.add_argument("-o", "--output", type=Path, required=required, metavar="OUTPUT", help=output_help)
    add_model_options(parser, num_classes_help=None)
    add_run_options(parser)
    add_shard_options(parser)


# ---- rules between options (checked before any weights load) ----


def check_calibration_options(args: argparse.Namespace) -> bool:
    """``--calibration``/``--calibration-images`` only with ``--int8``, and ``--int8`` only with ``--calibration``
    (every command that has them); whether ``--int8`` was given."""
    if not args.int8:
        for flag, given in (("--calibration", args.calibration), ("--calibration-images", args.calibration_images)):
            if given:
                raise CLIError(f"{flag} is for --int8")
        return False
    if not args.calibration:
        raise CLIError("--int8 needs --calibration DIR: images whose activations set the int8 ranges")
    return True


def check_int8_run_options(args: argparse.Namespace, device_type: str) -> None:
    """``--int8`` with what it needs (--optimize, --calibration, the CPU) and nothing it excludes (--amp)."""
    if args.int8 and not args.optimize:
        raise CLIError("--int8 is an optimised copy of the model: give --optimize --int8 --calibration DIR")
    if not check_calibration_options(args):
        return
    if args.amp:
        raise CLIError(f"--int8 and --amp {args.amp} exclude each other: int8 runs its own precision")
    if device_type != "cpu":
        raise CLIError(f"--int8 runs on the CPU (oneDNN's int8 kernels), not {device_type}: add --device cpu")
