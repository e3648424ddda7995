"""What a fine-tuned model says about itself: the ``training`` entry of the run folder's ``config.json``.

A run's best model is saved in timm's format (``model.safetensors`` + ``config.json``); its config also records
where the weights came from, so that ``effnetv2 info --checkpoint RUN`` (and anyone reading the file) sees what the
model is rather than what it started as:

- ``training``: the starting weights (``start``: ``{"weights": "pretrained", "model": NAME}``,
  ``{"weights": "checkpoint", "path": PATH}`` or ``{"weights": "random"}``, with the tag and description the
  starting weights carried), the data (folder, image counts, classes), the image size, the planned epochs and the
  epoch this model is from, with its validation numbers;
- ``pretrained_cfg``: the starting weights' ``tag`` and ``description`` (``random_demo``, "RANDOM weights ...")
  describe other weights; the saved model's description says it was fine-tuned, from what and on what.

timm and :func:`effnetv2.create_model` ignore the ``training`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

# pretrained_cfg entries that describe the starting weights, not a fine-tuned model
STARTING_WEIGHTS_KEYS = ("tag", "description")


def starting_weights(model: str, pretrained: bool, checkpoint: Optional[str], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``start`` entry: what the run's weights were before training (``cfg``: the model's pretrained config as
    built, before the run rewrites it)."""
    if checkpoint:
        start: dict[str, Any] = {"weights": "checkpoint", "path": str(checkpoint)}
    elif pretrained:
        start = {"weights": "pretrained", "model": model}
    else:
        return {"weights": "random", "model": model}
    for key in STARTING_WEIGHTS_KEYS:
        if cfg.get(key):
            start[key] = cfg[key]
    return start


def describe_start(start: Mapping[str, Any]) -> str:
    """``start`` in words: ``the pretrained efficientnetv2_rw_m.agc_in1k weights``, ``checkpoint demo-model
    (random_demo)``, ``random initialisation``."""
    kind = start.get("weights")
    if kind == "pretrained":
        return f"the pretrained {start.get('model')} weights"
    if kind == "checkpoint":
        tag = f" ({start['tag']})" if start.get("tag") else ""
        return f"checkpoint {start.get('path')}{tag}"
    return "random initialisation"


def training_record(
    start: Mapping[str, Any],
    data: str,
    classes: Sequence[str],
    images: tuple[int, int],
    img_size: int,
    epochs: int,
    row: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``training`` entry for the model of metrics row ``row`` (its epoch and validation numbers); ``images``:
    the (train, val) image counts."""
    record: dict[str, Any] = {
        "tool": "effnetv2 train",
        "start": dict(start),
        "data": data,
        "train_images": images[0],
        "val_images": images[1],
        "classes": len(classes),
        "img_size": img_size,
        "epochs": epochs,
        "epoch": row["epoch"],
    }
    for key in ("val_top1", "val_top5", "val_loss"):
        if key in row:
            record[key] = row[key]
    return record


def describe_training(record: Mapping[str, Any]) -> str:
    """One line: ``epoch 2 of 3 on demo-data (16 images, 2 classes), from checkpoint demo-model (random_demo)``."""
    return (
        f"epoch {record.get('epoch')} of {record.get('epochs')} on {record.get('data')} "
        f"({record.get('train_images')} training images, {record.get('classes')} classes), "
        f"from {describe_start(record.get('start') or {})}"
    )


def fine_tuned_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without the entries that describe the starting weights (their tag and description)."""
    return {k: v for k, v in cfg.items() if k not in STARTING_WEIGHTS_KEYS}
