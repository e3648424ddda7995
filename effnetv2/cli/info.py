"""``effnetv2 info``: parameters, compute, feature levels and pretrained config of a model, without its weights; for
a model ``effnetv2 train`` saved, how it was trained (its config.json's ``training`` entry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from effnetv2.cli import CLIError
from effnetv2.cli.options import add_image_size_option, add_model_options
from effnetv2.path_escape import encode_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameters, GMACs, feature levels and pretrained config (downloads nothing)",
        description="Describe a model: parameter count, GMACs and activations for one image, feature levels "
        "and the pretrained config. Nothing is downloaded: the model is built without weights.",
    )
    add_model_options(
        parser,
        checkpoint_help="describe the model these weights are for: a model folder (train --output, save_pretrained) "
        "or a weights file (its config.json beside it, else its classifier's shape, gives the classes)",
        num_classes_help=None,
    )
    add_image_size_option(parser, "the pretrained config's train size, the size timm's model card reports")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    parser.set_defaults(func=run)


def _model_kwargs(model_name: str, checkpoint: Optional[str]) -> tuple[str, dict[str, Any]]:
    """The name and arguments that build, without weights, the model ``checkpoint`` holds."""
    from effnetv2.weights.hub_config import saved_model_files
    from effnetv2.weights.reading import read_state_dict

    if checkpoint is None:
        return model_name, {}
    weights, config = saved_model_files(checkpoint)
    if config is not None:
        return f"local-dir:{config.parent}", {}
    classifier = read_state_dict(weights).get("classifier.weight")  # timm's and effnetv2's key
    return model_name, {"num_classes": 0 if classifier is None else int(classifier.shape[0])}


def _training(model_name: str, checkpoint: Optional[str]) -> Optional[dict[str, Any]]:
    """The ``training`` entry of the saved model's config.json (:mod:`effnetv2.train.provenance`), if it has one."""
    from effnetv2.weights.hub_config import read_config_file, saved_model_files

    if checkpoint is not None:
        config = saved_model_files(checkpoint)[1]
    elif model_name.startswith("local-dir:"):
        config = Path(model_name.partition(":")[2]) / "config.json"
    else:
        return None
    if config is None or not config.is_file():
        return None
    training = read_config_file(config).get("training")
    return training if isinstance(training, dict) else None


def describe(model_name: str, img_size: Optional[int], checkpoint: Optional[str] = None) -> dict[str, Any]:
    """Everything ``info`` reports, as JSON-ready data."""
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    import torch

    from effnetv2.complexity import macs_and_activations
    from effnetv2.registry import create_model

    try:
        name, kwargs = _model_kwargs(model_name, checkpoint)
        with torch.device("meta"):  # shapes only: no memory for weights, nothing downloaded
            model = create_model(name, **kwargs).eval()
        training = _training(model_name, checkpoint)
    except (ValueError, OSError) as e:  # an unknown name, an unreadable checkpoint or config (CheckpointError)
        raise CLIError(str(e)) from e
    cfg = model.pretrained_cfg
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is not None:
        input_size = (input_size[0], img_size, img_size)
    macs, activations = macs_and_activations(model, input_size)
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
        "training": training,
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
        *([("trained", _training_text(report["training"]))] if report.get("training") else []),
    ]
    for key, value in rows:
        out.write(f"{key:<14}{value}\n")
    out.write("\nfeature levels (features_only=True, out_indices)\n  index  module      channels  stride\n")
    for level in report["feature_levels"]:
        out.write(f"  {level['index']:>5}  {level['module']:<10}  {level['channels']:>8}  {level['stride']:>6}\n")
    out.write("\npretrained config\n")
    for key, value in report["pretrained_cfg"].items():
        out.write(f"  {key:<18}{value}\n")


def _training_text(training: dict[str, Any]) -> str:
    from effnetv2.train.provenance import describe_training

    scores = f"; val top-1 {training['val_top1']:.1f} %" if isinstance(training.get("val_top1"), (int, float)) else ""
    return describe_training(training) + scores


def _classes_text(num_classes: int, label_names: Optional[list[str]]) -> str:
    if not label_names:
        return str(num_classes)
    shown = ", ".join(map(str, label_names[:10])) + (
        f", ... ({len(label_names) - 10} more)" if len(label_names) > 10 else ""
    )
    return f"{num_classes}: {shown}"
