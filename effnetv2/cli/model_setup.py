"""The model a command runs: its device, its weights (``--model``/``--checkpoint``, refusals in one line), its eval
transform, and the optimised or int8 copy that ``--optimize``/``--int8`` ask for."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from effnetv2.cli import CLIError
from effnetv2.cli.batches import AMP_DTYPES, ImageRun, failure_text
from effnetv2.cli.inputs import find_images
from effnetv2.cli.options import check_int8_run_options
from effnetv2.data import create_transform, resolve_model_data_config
from effnetv2.data.assets import imagenet_class_names
from effnetv2.defaults import DEFAULT_CALIBRATION_IMAGES
from effnetv2.errors import CheckpointError, ClassifierNotLoadedWarning
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.calibration import calibration_images
from effnetv2.path_escape import encode_path
from effnetv2.registry import create_model
from effnetv2.weights.hub import PretrainedWeightsUnavailable


def calibration_batch(args: argparse.Namespace, model: nn.Module) -> Tensor:
    """The first ``--calibration-images`` images of ``--calibration``, as the model's eval transform makes them
    (:func:`effnetv2.inference.calibration.calibration_images`: unreadable ones reported and skipped)."""

    def skipped(path: Path, error: Exception) -> None:
        print(f"effnetv2: skipped {encode_path(path)}: {failure_text(error)}", file=sys.stderr)

    files = find_images([args.calibration])
    limit = args.calibration_images or DEFAULT_CALIBRATION_IMAGES
    try:
        return calibration_images(files, model, limit, img_size=args.img_size, on_skip=skipped)
    except ValueError as e:
        raise CLIError(f"--calibration {encode_path(args.calibration)}: {e}") from e


def inference_model(
    model: nn.Module, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Optional[str]]:
    """The module to run on ``device`` (``--optimize``: the folded copy) and the autocast dtype to run it under."""
    check_int8_run_options(args, device.type)
    model = model.to(device)
    if not args.optimize:
        return model, args.amp

    if args.int8:
        calibration = calibration_batch(args, model)
        print(f"effnetv2: quantizing to int8 on {len(calibration)} calibration images ...", file=sys.stderr)
        try:
            int8 = optimize_for_inference(model, torch.int8, calibration=calibration)
        except (ImportError, ValueError, RuntimeError) as e:
            raise CLIError(f"--int8: {e}") from e
        held = "held-out" if int8.agreement.images < len(calibration) else "calibration"  # < 8: checked in-sample
        caveat = f"; {int8.kernel_caveat}" if int8.kernel_caveat else ""
        print(
            f"effnetv2: int8 on {int8.agreement.images} {held} images: {int8.agreement.describe()}{caveat}",
            file=sys.stderr,
        )
        return int8, None

    try:
        return optimize_for_inference(model, AMP_DTYPES[args.amp] if args.amp else torch.float32), None
    except ValueError as e:  # float16 on a CPU
        raise CLIError(f"--optimize --amp {args.amp}: {e}") from None


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
    except PretrainedWeightsUnavailable as e:
        raise pretrained_unavailable(args.model, e) from e
    except CheckpointError as e:
        hint = "" if args.checkpoint else " On the command line: --checkpoint PATH."
        raise CLIError(f"{e}{hint}") from e
    except (ValueError, TypeError, OSError) as e:  # unknown name, missing file, bad out_indices
        raise CLIError(str(e)) from e
    return model.eval()


def pretrained_unavailable(model_name: str, error: PretrainedWeightsUnavailable) -> CLIError:
    """No network and no cached copy of ``model_name``'s weights: the command-line way out (``--checkpoint PATH``)
    comes first, not the Python API's (``checkpoint_path=``)."""
    return CLIError(
        f"no pretrained weights for {model_name}: pass --checkpoint PATH (a local weights file). "
        f"{error.failure[:1].upper()}{error.failure[1:]}. "
        f"Or make them available offline: {error.offline_advice}"
    )


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
    """The batches of ``files`` (from :func:`~effnetv2.cli.inputs.find_images`) through ``model``'s eval transform,
    and the data config that transform follows. ``batches``: positions in ``files`` (default: all, in order)."""
    transform, config = eval_transform(model, args.img_size)
    cuda = device.type == "cuda"
    return ImageRun(files, transform, args.batch_size, args.workers, pin_memory=cuda, batches=batches), config


def class_labels(num_classes: int, label_names: Optional[Sequence[str]] = None) -> list[str]:
    """The model's saved ``label_names`` when they fit its head; ImageNet-1k names for a 1000-class model; else
    the class index as text."""
    if label_names is not None and len(label_names) == num_classes:
        return [str(name) for name in label_names]
    if num_classes == 1000:
        return list(imagenet_class_names())
    return [str(i) for i in range(num_classes)]
