"""``effnetv2 validate``: top-1, top-5 and loss of a model on a labelled image folder, as timm's validate.py reports."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from effnetv2.atomic import write_text
from effnetv2.cli import CLIError
from effnetv2.cli.options import add_model_options, add_run_options
from effnetv2.path_escape import encode_path

if TYPE_CHECKING:
    import torch

SPLITS = ("val", "validation")  # the split folders looked for inside DATA, as train's DATA/{train,val} layout has


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="accuracy on a labelled image folder: top-1, top-5, loss",
        description="Evaluate a model on a labelled folder, DATA/<class>/<image> (or DATA/val/<class>/<image>, the "
        "layout train reads): top-1 and top-5 accuracy (%) and mean cross-entropy loss, with timm's eval transform "
        "at the model's test size (or --img-size). Class folders are matched to the classifier by the model's "
        "label names (a fine-tuned folder's config.json), else by ImageNet synset (n01440764, 1000-class models), "
        "else by class index (0, 1, ...). Unreadable images are reported and left out (exit status 1).",
    )
    parser.add_argument("data", type=Path, metavar="DATA", help="labelled image folder")
    add_model_options(parser)
    add_run_options(parser)
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    parser.add_argument(
        "--predictions-out",
        type=Path,
        metavar="FILE.csv",
        help="also write one row per image: path, target, prediction, their labels, the prediction's probability",
    )
    parser.set_defaults(func=run)


def labelled_images(data: Path) -> tuple[Path, list[str], list[tuple[str, int]]]:
    """The folder evaluated (DATA, or its val/validation split), its class folder names (sorted), and
    ``(path, position in that list)`` per image, as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not data.is_dir():
        raise CLIError(f"{encode_path(data)}: no such folder (expected DATA/<class>/<image>)")
    root = next((data / split for split in SPLITS if (data / split).is_dir()), data)
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # no class folders, or class folders without images
        raise CLIError(f"{encode_path(root)}: {e} (expected {encode_path(root)}/<class>/<image>)") from None
    return root, classes, samples


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    from effnetv2.cli.model_setup import load_model, resolve_device
    from effnetv2.cli.outputs import check_output
    from effnetv2.data.class_map import ClassMapError, folder_class_indices
    from effnetv2.distributed import COMMAND_TIMEOUT, close_distributed, gather_to_main, init_distributed, rank_device

    root, folders, samples = labelled_images(args.data)
    if args.predictions_out is not None:
        check_output(args.predictions_out, (".csv",))
    device = resolve_device(args.device)
    # under torchrun each process scores every K-th image; the counts are summed
    env = init_distributed(device, COMMAND_TIMEOUT)
    device = rank_device(device, env)
    model = load_model(args)
    if model.num_classes < 1:
        raise CLIError("the model has no classifier (num_classes=0): nothing to validate")
    try:
        indices, scheme = folder_class_indices(folders, model.num_classes, model.pretrained_cfg.get("label_names"))
    except ClassMapError as e:
        raise CLIError(f"{encode_path(root)}: {e}") from None
    files = [Path(path) for path, _ in samples]
    targets = [indices[position] for _, position in samples]
    counts, rows, failed, config = score(args, model, device, env, files, targets)
    shares = gather_to_main((counts, rows, failed), env)
    close_distributed(env)
    if not env.is_main:
        return 0  # rank 0 reports, and its exit status is the run's
    counts = Counts.total([share[0] for share in shares])
    skipped = sum(share[2] for share in shares)
    if counts.n == 0:
        raise CLIError(f"{encode_path(root)}: no image could be read")
    results = dict(
        counts.summary(),
        num_images=counts.n,
        skipped=skipped,
        num_classes=model.num_classes,
        class_folders=len(folders),
        class_folders_matched_by=scheme,
        data=encode_path(root),
        **report_model(args, model, config),
    )
    if args.predictions_out is not None:
        rows = [row for _, row in sorted(r for share in shares for r in share[1])]
        write_predictions(args.predictions_out, rows)
        print(f"effnetv2: wrote {len(rows)} predictions to {encode_path(args.predictions_out)}", file=sys.stderr)
    (write_json if args.format == "json" else write_table)(results, sys.stdout)
    return 1 if skipped else 0


def score(
    args: argparse.Namespace, model: Any, device: Any, env: Any, files: list[Path], targets: list[int]
) -> tuple[Counts, list[tuple[int, list[Any]]], int, dict[str, Any]]:
    """This process's share of the images through the model: its counts, its ``--predictions-out`` rows (with
    their positions), how many images failed, and the data config they were read with."""
    import torch

    from effnetv2.cli.batches import run_model, strided_batches
    from effnetv2.cli.model_setup import class_labels, image_run, inference_model

    plan = strided_batches(len(files), args.batch_size, env.rank, env.world_size)
    images, config = image_run(files, args, model, device, batches=plan)
    runner, amp = inference_model(model, args, device)
    labels = class_labels(model.num_classes, model.pretrained_cfg.get("label_names"))
    counts = Counts(k=min(5, model.num_classes))
    rows: list[tuple[int, list[Any]]] = []  # (position, CSV row)
    decoded = ((batch.indices, batch.images) for batch in images.batches() if batch.images is not None)
    for positions, logits in run_model(runner, decoded, device, amp):
        target = torch.tensor([targets[i] for i in positions])
        counts.add(logits, target)
        if args.predictions_out is not None:
            probs, preds = logits.softmax(dim=1).max(dim=1)
            for i, t, p, prob in zip(positions, target.tolist(), preds.tolist(), probs.tolist(), strict=True):
                rows.append((i, [encode_path(files[i]), t, labels[t], p, labels[p], prob]))
    return counts, rows, len(images.failed), config


def report_model(args: argparse.Namespace, model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """What the results say of the model: its source, size and how images were prepared."""
    from effnetv2.cli.model_setup import model_metadata

    return dict(
        **model_metadata(args, model),
        param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        img_size=config["input_size"][-1],
        crop_pct=config["crop_pct"],
        interpolation=config["interpolation"],
    )


class Counts:
    """Running sums of loss and top-1 / top-k hits; ``k`` is 5, or the class count when smaller."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.loss_sum = 0.0
        self.top1 = self.topk = self.n = 0

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        from torch.nn.functional import cross_entropy

        self.loss_sum += cross_entropy(logits, target, reduction="sum").item()
        hits = logits.topk(self.k, dim=1).indices == target[:, None]
        self.top1 += int(hits[:, 0].sum())
        self.topk += int(hits.any(dim=1).sum())
        self.n += len(target)

    @classmethod
    def total(cls, parts: list[Counts]) -> Counts:
        """The sums of several processes' counts."""
        total = cls(parts[0].k)
        for part in parts:
            total.loss_sum += part.loss_sum
            total.top1, total.topk, total.n = total.top1 + part.top1, total.topk + part.topk, total.n + part.n
        return total

    def summary(self) -> dict[str, float]:
        top1, top5 = 100.0 * self.top1 / self.n, 100.0 * self.topk / self.n
        return dict(top1=top1, top1_err=100.0 - top1, top5=top5, top5_err=100.0 - top5, loss=self.loss_sum / self.n)


def write_table(results: dict[str, Any], out: TextIO) -> None:
    source = results.get("checkpoint") or results["model"]
    out.write(
        f"{results['data']}: {results['num_images']} images, {results['class_folders']} class folders "
        f"(matched by {results['class_folders_matched_by']})\n"
        f"model  {source} at {results['img_size']} px (crop_pct {results['crop_pct']})\n"
        f"top-1  {results['top1']:.3f} %\n"
        f"top-5  {results['top5']:.3f} %\n"
        f"loss   {results['loss']:.4f}\n"
    )


def write_json(results: dict[str, Any], out: TextIO) -> None:
    json.dump(results, out, indent=2)
    out.write("\n")


def write_predictions(path: Path, rows: list[list[Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "target", "target_label", "prediction", "prediction_label", "prob"])
    writer.writerows(rows)
    write_text(path, text.getvalue())
