"""``effnetv2 info``: parameters, compute, feature levels and pretrained config of a model, without its weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, TextIO

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effnetv2.cli import CLIError
from effnetv2.cli.paths import encode_path
from effnetv2.cli.runtime import DEFAULT_MODEL, image_size
from effnetv2.layers.pooling import GlobalPool
from effnetv2.registry import create_model
from effnetv2.weights.hub_config import saved_model_files
from effnetv2.weights.reading import read_state_dict


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameters, GMACs, feature levels and pretrained config (downloads nothing)",
        description="Describe a model: parameter count, GMACs and activations for one image, feature levels "
        "and the pretrained config. Nothing is downloaded: the model is built without weights.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="architecture[.tag], or local-dir:DIR / hf-hub:ORG/REPO for a saved model (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="describe the model these weights are for: a model folder (train --output, save_pretrained) or a "
        "weights file (its config.json beside it, else its classifier's shape, gives the classes)",
    )
    parser.add_argument(
        "--img-size",
        type=image_size,
        metavar="N",
        help="square input size for GMACs (default: the pretrained config's train size, 320 for rw_m, the size "
        "timm's model card reports)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    parser.set_defaults(func=run)


def profile(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """MACs and activations of one image through ``model``, counted as fvcore does (timm's published stats).

    MACs: convolutions and linear layers (torch's ``FlopCounterMode`` FLOPs / 2), plus 2 per BatchNorm output
    element (1 without affine) and 1 per input element of global average pooling. Activations: the output
    elements of every convolution and linear layer. Runs on the meta device when the model is there.
    """
    extra = activations = 0

    def count_norm(module: nn.BatchNorm2d, inputs: Any, output: torch.Tensor) -> None:
        nonlocal extra
        extra += output.numel() * (2 if module.affine else 1)

    def count_pool(module: GlobalPool, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal extra
        if "avg" in module.pool_type:
            extra += inputs[0].numel()

    def count_activations(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output.numel()

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(count_norm))
        elif isinstance(module, GlobalPool):
            hooks.append(module.register_forward_hook(count_pool))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(count_activations))
    param = next(model.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.empty(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + extra, activations


def _model_kwargs(model_name: str, checkpoint: Optional[str]) -> tuple[str, dict[str, Any]]:
    """The name and arguments that build, without weights, the model ``checkpoint`` holds."""
    if checkpoint is None:
        return model_name, {}
    weights, config = saved_model_files(checkpoint)
    if config is not None:
        return f"local-dir:{config.parent}", {}
    classifier = read_state_dict(weights).get("classifier.weight")  # timm's and effnetv2's key
    return model_name, {"num_classes": 0 if classifier is None else int(classifier.shape[0])}


def describe(model_name: str, img_size: Optional[int], checkpoint: Optional[str] = None) -> dict[str, Any]:
    """Everything ``info`` reports, as JSON-ready data."""
    try:
        name, kwargs = _model_kwargs(model_name, checkpoint)
        with torch.device("meta"):  # shapes only: no memory for weights, nothing downloaded
            model = create_model(name, **kwargs).eval()
    except (ValueError, OSError) as e:  # an unknown name, an unreadable checkpoint or config (CheckpointError)
        raise CLIError(str(e)) from e
    cfg = model.pretrained_cfg
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is not None:
        input_size = (input_size[0], img_size, img_size)
    macs, activations = profile(model, input_size)
    return {
        "model": model_name if checkpoint is None else cfg.get("architecture", model_name),
        "checkpoint": None if checkpoint is None else encode_path(checkpoint),
        "architecture": cfg.get("architecture", model_name.partition(".")[0]),
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list(input_size),
        "macs": macs,
        "gmacs": round(macs / 1e9, 3),
        "activations": activations,
        "num_features": model.num_features,
        "num_classes": model.num_classes,
        "label_names": cfg.get("label_names"),
        "feature_levels": [
            dict(index=i, module=level["module"], channels=level["num_chs"], stride=level["reduction"])
            for i, level in enumerate(model.feature_info)
        ],
        "pretrained_cfg": json.loads(json.dumps(cfg)),  # tuples → lists, as the JSON output shows them
    }


def run(args: argparse.Namespace) -> int:
    report = describe(args.model, args.img_size, args.checkpoint)
    if args.format == "json":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table(report, sys.stdout)
    return 0


def write_table(report: dict[str, Any], out: TextIO) -> None:
    size = "×".join(map(str, report["input_size"]))
    rows = [
        ("model", report["model"]),
        *([("checkpoint", report["checkpoint"])] if report["checkpoint"] else []),
        ("architecture", report["architecture"]),
        ("parameters", f"{report['params']:,} ({report['params'] / 1e6:.1f} M)"),
        ("GMACs", f"{report['macs'] / 1e9:.2f} at {size}"),
        ("activations", f"{report['activations'] / 1e6:.1f} M at {size}"),
        ("features", f"{report['num_features']} (pooled embedding size)"),
        ("classes", _classes_text(report["num_classes"], report["label_names"])),
    ]
    for key, value in rows:
        out.write(f"{key:<14}{value}\n")
    out.write("\nfeature levels (features_only=True, out_indices)\n  index  module      channels  stride\n")
    for level in report["feature_levels"]:
        out.write(f"  {level['index']:>5}  {level['module']:<10}  {level['channels']:>8}  {level['stride']:>6}\n")
    out.write("\npretrained config\n")
    for key, value in report["pretrained_cfg"].items():
        out.write(f"  {key:<18}{value}\n")


def _classes_text(num_classes: int, label_names: Optional[list[str]]) -> str:
    if not label_names:
        return str(num_classes)
    shown = ", ".join(map(str, label_names[:10])) + (
        f", ... ({len(label_names) - 10} more)" if len(label_names) > 10 else ""
    )
    return f"{num_classes}: {shown}"
