"""``effnetv2 train DATA --output DIR``: fine-tune on an ImageFolder tree with the RW recipe; DDP under torchrun.

This module parses and checks the options; :func:`effnetv2.train.runner.fit` runs the training and
:mod:`effnetv2.train.run_folder` owns the output folder (lock, resume state, metrics, best model).

The parser also notes which options the command line gave (``args.given``): ``--resume`` takes every other one from
the run folder, so that ``effnetv2 train DATA -o DIR --resume`` needs nothing retyped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from effnetv2.cli import CLIError
from effnetv2.cli.options import (
    add_amp_option,
    add_batch_size_option,
    add_device_option,
    add_image_size_option,
    add_model_options,
    add_workers_option,
    image_size,
    integer,
    non_negative_int,
    number,
    positive_int,
)
from effnetv2.defaults import STATE_FILE

# Options that describe this machine or this terminal, not the run: --resume takes them from its own command line,
# never the folder (a run started with --log-format json resumes with readable lines unless told again).
THIS_COMMAND = ("data", "output", "resume", "device", "workers", "log_format")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune on an ImageFolder tree (DATA/train/<class>/*, DATA/val/<class>/*)",
        description="Fine-tune with the RW recipe: SGD-Nesterov, adaptive gradient clipping, cosine LR with "
        "linear warmup, optional EMA. Run under `torchrun --nproc_per_node N -m effnetv2 train ...` for DDP. "
        "--resume continues an interrupted run with the options it was started with (read from the run folder; "
        "only --device, --workers and --log-format are this command's); with a larger --epochs it extends a "
        "finished or interrupted one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    _note_given_options(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder holding train/<class>/<image> and val/<class>/<image>")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        help="run folder: model.safetensors, config.json, metrics.jsonl, last_state.pt, curves.png",
    )
    add_model_options(
        p,
        checkpoint_help="start from local weights: a timm- or effnetv2-format file, or a model folder (an earlier "
        "train --output, or one saved by save_pretrained); its classifier is kept when the data has as many classes",
        num_classes_help=None,
        pretrained_flag=True,
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="total epochs; with --resume a larger value extends")
    add_batch_size_option(p, 32, "images per batch, per process")
    add_image_size_option(p, "the model's train size", what="train/val size")
    _add_optimizer_options(p)
    _add_regularization_options(p)
    _add_progressive_options(p)
    add_amp_option(p, "mixed precision")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory")
    p.add_argument(
        "--freeze-backbone-epochs", type=non_negative_int, default=0, help="train only the classifier at first"
    )
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP)")
    add_workers_option(p, "data-loading processes per training process")
    p.add_argument("--seed", type=integer(0, 2**31 - 1), default=42, help="random seed (rank r uses seed + r)")
    add_device_option(p)
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="write TensorBoard event files (loss, LR and gradient norm per step; val loss/top-1/top-5 and images/s "
        "per epoch) to OUTPUT/tensorboard; needs pip install 'effnetv2[tensorboard]'",
    )
    p.add_argument("--tensorboard-dir", metavar="DIR", help="--tensorboard, into DIR instead")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --output from its {STATE_FILE}, with the options it was started with; an option "
        "given here replaces the run's (one that shapes the schedule or the data order is refused if it differs); a "
        "larger --epochs extends the run",
    )
    p.add_argument(
        "--save-state",
        choices=("last", "none"),
        default="last",
        help=f"last: keep {STATE_FILE} (the weights, optimizer and EMA of the last epoch, about twice the model's "
        "size) so that --resume can continue the run; none: write only the best model and the metrics (the run "
        "cannot be resumed)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="progress on stdout: one readable line per epoch, or the JSON rows of OUTPUT/metrics.jsonl",
    )


def _note_given_options(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` set ``args.given``: the destinations of the options its command line gave, values equal to
    the defaults included.

    The same arguments are parsed a second time by a copy of the parser whose every default is SUPPRESS: what that
    parse returns is exactly what was given. (The subcommand's parser is called with its own arguments, through
    ``parse_known_args``; it has already refused any error when the copy runs.)"""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = parse(args, namespace)
        explicit = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
        _add_arguments(explicit)
        for action in explicit._actions:
            action.default = argparse.SUPPRESS
        given, _ = explicit.parse_known_args(args)
        parsed.given = frozenset(vars(given))
        return parsed, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _add_optimizer_options(p: argparse.ArgumentParser) -> None:
    """Learning rate, its schedule, and the optimizer's settings."""
    p.add_argument("--lr", type=number(0, low_open=True), default=0.01, help="peak LR for --batch-size × processes")
    p.add_argument("--momentum", type=number(0, 1, high_open=True), default=0.9, help="SGD Nesterov momentum")
    p.add_argument("--warmup-epochs", type=number(0), default=1.0, help="linear warmup length (may be fractional)")
    p.add_argument("--weight-decay", type=number(0), default=1e-5, help="not applied to norms and biases")
    p.add_argument(
        "--layer-decay",
        type=number(0, 1, low_open=True),
        default=None,
        help="layer-wise LR decay factor in (0, 1] (None: off)",
    )
    p.add_argument("--agc", type=number(0), default=0.01, help="adaptive clip factor; 0 turns clipping off")


def _add_regularization_options(p: argparse.ArgumentParser) -> None:
    """Label smoothing, mixing, augmentation, stochastic depth, dropout and EMA."""
    p.add_argument("--label-smoothing", type=number(0, 1, high_open=True), default=0.1, help="in [0, 1)")
    p.add_argument("--mixup", type=number(0), default=0.0, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=number(0), default=0.0, help="CutMix alpha (0: off)")
    p.add_argument(
        "--auto-augment", choices=("rand", "trivial"), default=None, help="torchvision RandAugment / TrivialAugmentWide"
    )
    p.add_argument(
        "--drop-path", type=number(0, 1, high_open=True), default=0.2, help="stochastic depth rate of the last block"
    )
    p.add_argument("--drop", type=number(0, 1, high_open=True), default=0.0, help="dropout before the classifier")
    p.add_argument(
        "--ema",
        type=number(0, 1, low_open=True, high_open=True),
        nargs="?",
        const=0.9998,
        default=None,
        metavar="DECAY",
        help="keep an EMA of the weights (--ema alone: decay 0.9998); it is evaluated and saved",
    )


def _add_progressive_options(p: argparse.ArgumentParser) -> None:
    """Progressive learning (the EfficientNetV2 paper's Algorithm 1): stages, a preset, the start values."""
    p.add_argument(
        "--progressive",
        type=positive_int,
        default=None,
        metavar="STAGES",
        help="progressive learning in STAGES stages: the train size grows from --min-img-size to --img-size and "
        "RandAugment, MixUp, CutMix and dropout from their --*-start values to their end values (the plain "
        "options); evaluation stays at --img-size; the schedule is printed before training",
    )
    p.add_argument(
        "--progressive-preset",
        choices=("s", "m", "l"),
        default=None,
        help="the paper's Table 6 values for every progressive option not given (s: 128->300 px, RandAugment "
        "5->15, dropout 0.1->0.3; m: 128->380, 5->20, MixUp 0->0.2, 0.1->0.4; l: 128->380, 5->25, 0->0.4, 0.1->0.5)",
    )
    p.add_argument(
        "--progressive-batch",
        action="store_true",
        help="constant-memory batches: each stage's batch is --batch-size x (img-size / stage size)^2, at most "
        "4x, and its LR is scaled alike (linear scaling); the LR schedule still spans the whole run",
    )
    p.add_argument(
        "--min-img-size",
        type=image_size,
        metavar="N",
        default=None,
        help="first stage's size (None: --img-size / 2)",
    )
    p.add_argument(
        "--randaug-magnitude",
        type=integer(0, 30),
        default=None,
        help="RandAugment magnitude, torchvision's 0-30 (paper/TF magnitude L = 3L here); with --progressive the "
        "last stage's (None: torchvision's 9)",
    )
    p.add_argument(
        "--randaug-magnitude-start",
        type=number(0, 30),
        default=None,
        help="first stage's RandAugment magnitude (None: the paper's 5, or --randaug-magnitude if lower)",
    )
    p.add_argument("--mixup-start", type=number(0), default=None, help="first stage's MixUp alpha (None: 0)")
    p.add_argument("--cutmix-start", type=number(0), default=None, help="first stage's CutMix alpha (None: 0)")
    p.add_argument(
        "--drop-start",
        type=number(0, 1, high_open=True),
        default=None,
        help="first stage's dropout (None: the paper's 0.1, or --drop if lower)",
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file or folder")
    # TrainOptions.tensorboard: None (off), "" (OUTPUT/tensorboard) or a folder
    args.tensorboard = args.tensorboard_dir or ("" if args.tensorboard else None)
    if args.tensorboard is not None:
        from effnetv2.train.reporting import tensorboard_writer_class

        try:
            tensorboard_writer_class()
        except ImportError as e:
            raise CLIError(str(e)) from None


def _options(args: argparse.Namespace):
    from effnetv2.train.runner import TrainOptions

    fields = TrainOptions.__dataclass_fields__
    return TrainOptions(**{k: v for k, v in vars(args).items() if k in fields})


def _given(args: argparse.Namespace) -> frozenset[str]:
    """The TrainOptions fields the command line set, and :data:`THIS_COMMAND`'s: a resume takes the others from
    the run folder. ``--pretrained``/``--checkpoint`` are one choice (the starting weights): either gives both."""
    given = set(getattr(args, "given", ())) | set(THIS_COMMAND)
    if "tensorboard_dir" in given:
        given.add("tensorboard")
    if given & {"pretrained", "checkpoint"}:
        given |= {"pretrained", "checkpoint"}
    return frozenset(given)


def run(args: argparse.Namespace) -> int:
    from effnetv2.cli.model_setup import pretrained_unavailable, resolve_device
    from effnetv2.errors import CheckpointError
    from effnetv2.train.data import DatasetError, UnreadableImageError
    from effnetv2.train.engine import NonFiniteLossError
    from effnetv2.train.run_folder import TrainError
    from effnetv2.train.runner import fit
    from effnetv2.weights.hub import PretrainedWeightsUnavailable

    _check_args(args)
    args.device = resolve_device(args.device)
    try:
        result = fit(_options(args), given=_given(args))
    except PretrainedWeightsUnavailable as e:  # the command line's way out (--checkpoint PATH), not the API's
        model = args.model if not args.resume or "model" in getattr(args, "given", ()) else "the run's --model"
        raise pretrained_unavailable(model, e) from None
    except (TrainError, DatasetError, CheckpointError, NonFiniteLossError) as e:
        # (a RunFolderWriteError is an OSError: main's fault handler gives its message with exit status 1, not 2)
        raise CLIError(str(e)) from None
    except (UnreadableImageError, RuntimeError) as e:
        # a worker re-raises the loader's error with its traceback in the message: keep the last line
        lines = str(e).strip().splitlines()
        if isinstance(e, UnreadableImageError) or (lines and "UnreadableImageError" in lines[-1]):
            raise CLIError(lines[-1].split("UnreadableImageError: ")[-1]) from None
        raise
    if result.nothing_to_do:
        print(
            f"effnetv2: {args.output}: all {result.epochs} epochs of this run are done; nothing to do "
            "(pass a larger --epochs to extend it)",
            file=sys.stderr,
        )
    return 0
