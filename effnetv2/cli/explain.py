"""``effnetv2 explain``: class activation maps over images, as PNGs (and optionally the raw maps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from effnetv2.cli import CLIError
from effnetv2.cli.options import (
    add_device_option,
    add_image_size_option,
    add_input_options,
    add_model_options,
    positive_int,
)
from effnetv2.defaults import CAM_METHODS

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="class activation maps (Grad-CAM and kin) over images, as PNGs",
        description="For each image, OUT_DIR/<name>.png: the image with the class activation map of its top-1 class "
        "(or --class, or one panel per class of --topk) overlaid, each panel labelled with the class and its "
        "probability. The whole image is used, resized so its shorter side is the model's test size (or "
        "--img-size) and not cropped, so the map covers all of it and the PNG keeps its aspect ratio; probabilities "
        "can differ a little from predict's, which center-crops. Maps come from TorchCAM (pip install "
        "'effnetv2[explain]').",
    )
    add_input_options(parser, default="the bundled sample photo")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="folder for the PNGs")
    add_model_options(parser)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--class", dest="target", metavar="INDEX|LABEL", help="the class to explain (default: top-1)")
    target.add_argument("--topk", type=positive_int, default=1, metavar="K", help="one panel per top-K class")
    parser.add_argument(
        "--method",
        choices=tuple(CAM_METHODS),
        default="gradcam",
        help="CAM method (default: gradcam); scorecam runs the model once per channel of --layer (1280 or more for "
        "the head: slow; a lower --layer has fewer)",
    )
    parser.add_argument(
        "--layer",
        default=None,
        metavar="LEVEL|NAME",
        help="feature level 0-4, or a module name (default: 'head', the last convolution, which the classifier pools)",
    )
    parser.add_argument(
        "--save-maps", action="store_true", help="also write OUT_DIR/maps.safetensors: the raw maps, floats in [0, 1]"
    )
    add_image_size_option(parser, "the model's test size", what="the shorter side")
    add_device_option(parser)
    parser.set_defaults(func=run)


def parse_target(text: Optional[str], labels: list[str]) -> Optional[int]:
    """``--class``: an index, or a label (case-insensitive)."""
    if text is None:
        return None
    if text.isdigit():
        index = int(text)
        if index >= len(labels):
            raise CLIError(f"--class {index}: the model has {len(labels)} classes (0 to {len(labels) - 1})")
        return index
    lowered = [label.lower() for label in labels]
    if text.lower() not in lowered:
        raise CLIError(f"--class {text!r}: not one of the model's labels (give an index, or a label exactly)")
    return lowered.index(text.lower())


def unique_name(stem: str, taken: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def picture_line(path: Path, png: Path, labels: list[str], result: Any) -> str:
    """``effnetv2: img.jpg -> cams/img.png (tabby 83.1 %)``: an input, its PNG, and the classes its panels show."""
    from effnetv2.path_escape import encode_path

    classes, probs = result.classes[0].tolist(), result.probs[0].tolist()
    shown = ", ".join(f"{labels[c]} {100 * p:.1f} %" for c, p in zip(classes, probs, strict=True))
    return f"effnetv2: {encode_path(path)} -> {encode_path(png)} ({shown})"


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    import torch
    from torchvision.transforms import v2

    from effnetv2.cam import resolve_layer, torchcam_class
    from effnetv2.cli.inputs import input_images
    from effnetv2.cli.model_setup import class_labels, load_model, resolve_device
    from effnetv2.data import resolve_model_data_config
    from effnetv2.data.assets import sample_image_path
    from effnetv2.path_escape import encode_path

    files = input_images(args, default=sample_image_path())
    if args.output.exists() and not args.output.is_dir():
        raise CLIError(f"{encode_path(args.output)}: is a file; give a folder for the PNGs")
    if not args.output.parent.is_dir():
        raise CLIError(f"{encode_path(args.output.parent)}: output folder does not exist")
    device = resolve_device(args.device)
    model = load_model(args).to(device)
    if model.num_classes < 1:
        raise CLIError("the model has no classifier (num_classes=0): nothing to explain")
    if args.target is None and args.topk > model.num_classes:  # as predict says it
        raise CLIError(f"--topk {args.topk} is more than the model's {model.num_classes} classes")
    labels = class_labels(model.num_classes, model.pretrained_cfg.get("label_names"))
    target = parse_target(args.target, labels)
    try:
        torchcam_class(args.method)  # TorchCAM and the method are there before any image is read
    except ImportError as e:
        raise CLIError(str(e)) from None
    layer: Any = args.layer
    try:
        resolve_layer(model, layer)
    except ValueError as e:
        raise CLIError(f"--layer: {e}") from None
    config = resolve_model_data_config(model, args={"img_size": args.img_size}, use_test_size=True)
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(config["input_size"][-1], interpolation=v2.InterpolationMode(config["interpolation"])),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    normalize = v2.Normalize(config["mean"], config["std"])
    created = not args.output.exists()
    try:
        return draw_maps(args, files, model, device, transform, normalize, labels, target, layer)
    finally:  # no empty folder is left behind (no image readable, or a failure before the first PNG)
        if created and args.output.is_dir() and not any(args.output.iterdir()):
            args.output.rmdir()


def _draw(args: argparse.Namespace, shown: Any, result: Any, labels: list[str], png: Path) -> None:
    """One picture: the image as the network saw it, one overlaid panel per class, a colour bar, the method."""
    from effnetv2.pictures.explanation import draw_explanation

    classes, probs = result.classes[0].tolist(), result.probs[0].tolist()
    title = f"{args.method}, layer {result.layer}"
    draw_explanation(shown, result.maps[0].cpu(), [labels[c] for c in classes], probs, png, title=title)


def draw_maps(
    args: argparse.Namespace,
    files: list[Path],
    model: torch.nn.Module,
    device: torch.device,
    transform: v2.Transform,
    normalize: v2.Transform,
    labels: list[str],
    target: Optional[int],
    layer: Any,
) -> int:
    """One PNG per readable image in ``args.output`` (made before the first), and ``--save-maps``' file."""
    from torchvision.transforms import v2
    from tqdm import tqdm

    from effnetv2.cam import explain
    from effnetv2.cli.batches import failure_text, progress_enabled
    from effnetv2.cli.outputs import save_safetensors
    from effnetv2.data.images import open_image
    from effnetv2.path_escape import encode_path

    taken: set[str] = set()
    failed, saved_maps, records, paths = 0, {}, [], []
    for path in tqdm(files, unit="img", file=sys.stderr, disable=not progress_enabled(sys.stderr)):
        try:
            pixels = transform(open_image(path))
        except Exception as e:  # any decoder error: reported, skipped (as predict does)
            tqdm.write(f"effnetv2: skipped {encode_path(path)}: {failure_text(e)}", file=sys.stderr)
            failed += 1
            continue
        try:
            result = explain(model, normalize(pixels)[None].to(device), target, args.topk, args.method, layer)
        except ImportError as e:
            raise CLIError(str(e)) from None
        name = unique_name(Path(path).stem, taken)
        args.output.mkdir(exist_ok=True)
        _draw(args, v2.functional.to_pil_image(pixels), result, labels, args.output / name)
        # which input each PNG shows: two inputs of one stem become img.png and img-2.png
        tqdm.write(picture_line(path, args.output / name, labels, result), file=sys.stderr)
        saved_maps[f"maps.{len(records)}"] = result.maps[0].cpu()
        records.append(dict(png=name, classes=result.classes[0].tolist(), probs=result.probs[0].tolist()))
        paths.append(path)
    if args.save_maps and records:
        save_safetensors(
            args.output / "maps.safetensors",
            saved_maps,
            paths,
            images=records,
            method=args.method,
            layer=result.layer,
        )
        maps_file = encode_path(args.output / "maps.safetensors")
        print(f"effnetv2: wrote the raw maps of {len(records)} image(s) to {maps_file}", file=sys.stderr)
    if not records:
        print("effnetv2: no image could be read", file=sys.stderr)
        return 1
    return 1 if failed else 0
