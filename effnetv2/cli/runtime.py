"""What predict, embed and features share: their options, the model, the device, autocast and the batch loop."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import torch
from torch import Tensor, nn
from tqdm import tqdm

from effnetv2.cli import CLIError
from effnetv2.cli.images import ImageRun
from effnetv2.cli.paths import encode_path
from effnetv2.data import create_transform, resolve_model_data_config
from effnetv2.data.images import MAX_IMAGE_SIZE
from effnetv2.errors import CheckpointError, ClassifierNotLoadedWarning
from effnetv2.inference.calibration import DEFAULT_CALIBRATION_IMAGES
from effnetv2.registry import create_model
from effnetv2.weights.hub import PretrainedWeightsUnavailable

DEFAULT_MODEL = "efficientnetv2_rw_m.agc_in1k"
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Output = Union[Tensor, list[Tensor]]


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


MIN_IMG_SIZE = 32  # the network downsamples by 32: anything smaller leaves no pixel for the last stage


def image_size(text: str) -> int:
    """argparse type of ``--img-size`` (every command): an integer from 32 to :data:`MAX_IMAGE_SIZE` (4096)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < MIN_IMG_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMG_SIZE} (the network downsamples by 32), got {text}")
    if value > MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be <= {MAX_IMAGE_SIZE}, got {text} (one {value}x{value} image would need gigabytes of activations)"
        )
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_model_options(parser: argparse.ArgumentParser, num_classes: bool = True) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="architecture[.tag]; its pretrained weights come from the Hugging Face Hub (default: %(default)s); "
        "or local-dir:DIR / hf-hub:ORG/REPO for a saved model",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="local weights used instead of the Hub's: a model folder (a train --output folder, or one saved by "
        "save_pretrained) or a timm/effnetv2 weights file; a config.json in the folder or beside the file gives "
        "the classes, label names and preprocessing",
    )
    if num_classes:
        parser.add_argument(
            "--num-classes",
            type=positive_int,
            metavar="N",
            help="classifier size (default: the checkpoint's config.json, else the model's); must match the "
            "checkpoint's classifier",
        )


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's share), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Input size, batching, device and autocast options."""
    parser.add_argument(
        "--img-size",
        type=image_size,
        metavar="N",
        help=f"square input size, {MIN_IMG_SIZE} to {MAX_IMAGE_SIZE} (default: the pretrained config's test size, "
        "416 for efficientnetv2_rw_m)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="default: %(default)s")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(4, available_cpus()),
        metavar="N",
        help="image-decoding worker processes (default: %(default)s)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    parser.add_argument(
        "--amp", choices=sorted(AMP_DTYPES), help="autocast dtype (default: off; fp16 is for GPUs, slow on CPUs)"
    )
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


def calibration_batch(args: argparse.Namespace, model: nn.Module) -> Tensor:
    """The first ``--calibration-images`` images of ``--calibration``, as the model's eval transform makes them
    (:func:`effnetv2.inference.calibration.calibration_images`: unreadable ones reported and skipped)."""
    from effnetv2.cli.images import failure_text, find_images
    from effnetv2.inference.calibration import calibration_images

    def skipped(path: Path, error: Exception) -> None:
        print(f"effnetv2: skipped {encode_path(path)}: {failure_text(error)}", file=sys.stderr)

    files = find_images([args.calibration])
    limit = args.calibration_images or DEFAULT_CALIBRATION_IMAGES
    try:
        return calibration_images(files, model, limit, img_size=args.img_size, on_skip=skipped)
    except ValueError as e:
        raise CLIError(f"--calibration {encode_path(args.calibration)}: {e}") from e


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


def check_int8_run_options(args: argparse.Namespace, device: torch.device) -> None:
    """``--int8`` with what it needs (--optimize, --calibration, the CPU) and nothing it excludes (--amp)."""
    if args.int8 and not args.optimize:
        raise CLIError("--int8 is an optimised copy of the model: give --optimize --int8 --calibration DIR")
    if not check_calibration_options(args):
        return
    if args.amp:
        raise CLIError(f"--int8 and --amp {args.amp} exclude each other: int8 runs its own precision")
    if device.type != "cpu":
        raise CLIError(f"--int8 runs on the CPU (oneDNN's int8 kernels), not {device.type}: add --device cpu")


def inference_model(
    model: nn.Module, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Optional[str]]:
    """The module to run on ``device`` (``--optimize``: the folded copy) and the autocast dtype to run it under."""
    check_int8_run_options(args, device)
    model = model.to(device)
    if not args.optimize:
        return model, args.amp
    from effnetv2.inference import optimize_for_inference

    if args.int8:
        calibration = calibration_batch(args, model)
        print(f"effnetv2: quantizing to int8 on {len(calibration)} calibration images ...", file=sys.stderr)
        try:
            int8 = optimize_for_inference(model, torch.int8, calibration=calibration)
        except (ImportError, ValueError, RuntimeError) as e:
            raise CLIError(f"--int8: {e}") from e
        held = "held-out" if int8.agreement.images < len(calibration) else "calibration"  # < 8: checked in-sample
        print(
            f"effnetv2: int8 on {int8.agreement.images} {held} images: {int8.agreement.describe()}",
            file=sys.stderr,
        )
        return int8, None

    try:
        return optimize_for_inference(model, AMP_DTYPES[args.amp] if args.amp else torch.float32), None
    except ValueError as e:  # float16 on a CPU
        raise CLIError(f"--optimize --amp {args.amp}: {e}") from None


def strided_batches(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """Batches of the positions ``rank, rank + world_size, ...`` below ``count``: one process's share of the inputs."""
    mine = range(rank, count, world_size)
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; asking for one that is missing is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise CLIError(f"--device {name}: this machine or this torch build ({torch.__version__}) has no {name} device")
    return torch.device(name)


def load_model(args: argparse.Namespace, fresh_head_ok: bool = False, **kwargs: Any) -> nn.Module:
    """``create_model`` for ``--model``/``--checkpoint``/``--num-classes``, in eval mode; a failure becomes a
    one-line CLIError.

    Weights whose classifier does not fit the model built (another class count) are refused, since predictions
    from a fresh classifier are meaningless, unless ``fresh_head_ok`` (``export --num-classes N`` asks for one).
    """
    if getattr(args, "num_classes", None) is not None:
        kwargs.setdefault("num_classes", args.num_classes)
    try:
        with warnings.catch_warnings():
            if not fresh_head_ok:
                warnings.simplefilter("error", ClassifierNotLoadedWarning)
            model = create_model(
                args.model, pretrained=args.checkpoint is None, checkpoint_path=args.checkpoint, **kwargs
            )
    except ClassifierNotLoadedWarning as e:
        raise CLIError(_head_mismatch(args, e)) from e
    except PretrainedWeightsUnavailable as e:  # no network, no cached copy: the command-line way out comes first
        raise CLIError(
            f"no pretrained weights for {args.model}: pass --checkpoint PATH (a local weights file). "
            f"{e.failure[:1].upper()}{e.failure[1:]}. "
            f"Or make them available offline: {e.offline_advice}"
        ) from e
    except CheckpointError as e:
        hint = "" if args.checkpoint else " On the command line: --checkpoint PATH."
        raise CLIError(f"{e}{hint}") from e
    except (ValueError, TypeError, OSError) as e:  # unknown name, missing file, bad out_indices
        raise CLIError(str(e)) from e
    return model.eval()


def _head_mismatch(args: argparse.Namespace, warning: ClassifierNotLoadedWarning) -> str:
    weights = encode_path(args.checkpoint) if args.checkpoint else f"the pretrained weights of {args.model}"
    saved, built = warning.checkpoint_classes, warning.model_classes
    if getattr(args, "num_classes", None) is not None:
        fix = f"pass --num-classes {saved} (or leave it out)"
    else:
        fix = (
            f"pass --num-classes {saved}, or the model folder it was saved in (--checkpoint DIR) so that its "
            "config.json describes it"
        )
    return (
        f"{weights} has a {saved}-class classifier but the model built has {built} classes: refusing to use a random "
        f"classifier; {fix}"
    )


def model_metadata(args: argparse.Namespace, model: nn.Module) -> dict[str, Any]:
    """What output files record about the model: its name, and the checkpoint file actually loaded (if any)."""
    if not args.checkpoint:
        return {"model": args.model}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    name = cfg.get("architecture") or args.model.partition(".")[0]
    return {"model": name, "checkpoint": encode_path(cfg.get("file") or args.checkpoint)}


def eval_transform(model: nn.Module, img_size: Optional[int]) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    """timm's eval pipeline for ``model`` at its test size, or at ``img_size`` when given."""
    config = resolve_model_data_config(model, args={"img_size": img_size}, use_test_size=True)
    return create_transform(**config, is_training=False), config


def image_run(
    files: Sequence[Path],
    args: argparse.Namespace,
    model: nn.Module,
    device: torch.device,
    batches: Optional[Sequence[Sequence[int]]] = None,
) -> tuple[ImageRun, dict[str, Any]]:
    """The batches of ``files`` (from :func:`~effnetv2.cli.images.find_images`) through ``model``'s eval transform,
    and the data config that transform follows. ``batches``: positions in ``files`` (default: all, in order)."""
    transform, config = eval_transform(model, args.img_size)
    cuda = device.type == "cuda"
    return ImageRun(files, transform, args.batch_size, args.workers, pin_memory=cuda, batches=batches), config


K = TypeVar("K")


def run_model(
    forward: Callable[[Tensor], Output],
    run: Iterable[tuple[K, Optional[Tensor]]],
    device: torch.device,
    amp: Optional[str],
) -> Iterator[tuple[K, Optional[Output]]]:
    """``forward`` over every ``(key, images)`` batch of ``run`` (an :class:`ImageRun`: key = the paths) on
    ``device``; outputs come back as float32 CPU tensors, with the key. A batch without images (None) passes
    through as ``(key, None)``."""
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    warned = False
    with torch.inference_mode():
        for paths, images in run:
            if images is None:
                yield paths, None
                continue
            with autocast:
                out = forward(images.to(device, non_blocking=True))
            outputs = [o.float().cpu() for o in ([out] if isinstance(out, Tensor) else out)]
            if not warned and not all(torch.isfinite(o).all() for o in outputs):
                hint = " (float16 overflow? try --amp bf16)" if amp == "fp16" else ""
                tqdm.write(f"effnetv2: warning: the model produced NaN or infinite values{hint}", file=sys.stderr)
                warned = True
            yield paths, outputs[0] if isinstance(out, Tensor) else outputs


def exit_status(run: ImageRun) -> int:
    """1 when any input failed (each was reported as it happened), else 0."""
    return 1 if run.failed else 0
