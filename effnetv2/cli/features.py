"""``effnetv2 features``: the multi-scale feature maps of images (``features_only=True``), saved to .safetensors."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnetv2.cli import CLIError
from effnetv2.cli.options import (
    FOLDER_HELP,
    add_extraction_options,
    add_input_options,
    positive_int,
)

if TYPE_CHECKING:
    from torch import Tensor, nn


def index_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated feature-level indices, e.g. ``1,2,4``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,2,4, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="multi-scale feature maps to .safetensors",
        description="Save the feature maps of the selected levels (timm's features_only=True) to a .safetensors "
        "file: tensor 'features.{level}' of shape (N, C, H/stride, W/stride) per level, images in the order of "
        "the JSON list under the header metadata key 'paths' (escaped as embed --help says). A .safetensors file "
        "holds all maps in memory until written; a folder (OUTPUT without a suffix) gets shards written as the "
        "images are read: " + FOLDER_HELP + " Images that fail are skipped. --mosaic draws one image's strongest "
        "channels per level as a PNG (needs pip install 'effnetv2[plots]').",
    )
    add_input_options(parser, default="the bundled sample photo")
    parser.add_argument(
        "--mosaic",
        type=Path,
        metavar="OUT.png",
        help="draw the strongest channels of each selected level of the (one) image as a grid, one row per level",
    )
    parser.add_argument(
        "--mosaic-channels",
        type=positive_int,
        default=8,
        metavar="K",
        help="channels per level in the mosaic, strongest mean activation first (default: %(default)s)",
    )
    parser.add_argument(
        "--out-indices",
        type=index_list,
        default=(0, 1, 2, 3, 4),
        metavar="I,J,...",
        help="feature levels, 0 (stride 2) to 4 (stride 32) (default: all: 0,1,2,3,4)",
    )
    add_extraction_options(parser, "output .safetensors file, or a folder", required=False)
    parser.set_defaults(func=run)


def describe(args: argparse.Namespace, model: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    """What the output records beside the maps: the model, input size and the levels' indices, channels, strides."""
    from effnetv2.cli.model_setup import model_metadata

    info = model.feature_info
    return {
        **model_metadata(args, model),
        "input_size": config["input_size"],
        "out_indices": info.out_indices,
        "channels": info.channels(),
        "reductions": info.reduction(),
    }


def levels(info: Any) -> str:
    """The selected feature levels as ``--out-indices`` takes them: ``0,1,2,3,4``."""
    return ",".join(map(str, info.out_indices))


def map_bytes(info: Any, input_size: Sequence[int]) -> int:
    """fp32 bytes of one image's maps at ``input_size`` (C, H, W): what sets the default shard size."""
    _, height, width = input_size
    return sum(4 * c * -(-height // r) * -(-width // r) for c, r in zip(info.channels(), info.reduction(), strict=True))


def level_tensors(out_indices: Sequence[int], rows: list[list[Tensor]]) -> dict[str, Tensor]:
    """``features.{level}`` tensors from the per-batch lists of maps."""
    import torch

    return {f"features.{level}": torch.cat([maps[i] for maps in rows]) for i, level in enumerate(out_indices)}


def draw_feature_mosaic(args: argparse.Namespace, files: Sequence[Path]) -> None:
    """``--mosaic``: the strongest channels of each selected level of the one input image, as a PNG."""
    import torch

    from effnetv2.cli.extraction import say_done
    from effnetv2.cli.model_setup import eval_transform, load_model, model_metadata, resolve_device
    from effnetv2.cli.outputs import check_output
    from effnetv2.data.images import open_image
    from effnetv2.path_escape import encode_path
    from effnetv2.pictures import MATPLOTLIB_HINT, draw_mosaic

    if len(files) != 1:
        raise CLIError(f"--mosaic draws the maps of one image; {len(files)} images were given")
    output = check_output(args.mosaic, (".png",))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f"--mosaic needs matplotlib: {MATPLOTLIB_HINT}") from None
    device = resolve_device(args.device)
    model = load_model(args, features_only=True, out_indices=args.out_indices).to(device)
    transform, config = eval_transform(model, args.img_size)
    try:
        pixels = transform(open_image(files[0]))
    except Exception as e:  # any decoder error: the one image cannot be drawn
        raise CLIError(f"{encode_path(files[0])}: cannot be read: {type(e).__name__}: {e}") from None
    with torch.no_grad():
        maps = model(pixels[None].to(device))
    mean, std = (torch.tensor(config[k]).view(3, 1, 1) for k in ("mean", "std"))
    info = model.feature_info
    name = encode_path(Path(files[0]).name)  # a long path would not fit
    title = f"{model_metadata(args, model)['model']} on {name} at {config['input_size'][-1]} px"
    draw_mosaic(
        pixels * std + mean,
        [m[0] for m in maps],
        info.out_indices,
        info.reduction(),
        output,
        k=args.mosaic_channels,
        title=title,
    )
    channels = f"{args.mosaic_channels} strongest channels each"
    say_done(f"drew levels {levels(info)} of {encode_path(files[0])} ({channels}) to {encode_path(output)}")


def run(args: argparse.Namespace) -> int:
    if args.output is None and args.mosaic is None:
        raise CLIError("give -o OUTPUT (the maps), --mosaic OUT.png (a picture of them), or both")
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    from effnetv2.cli.extraction import Extraction, is_folder_output, plural, run_extraction
    from effnetv2.cli.inputs import input_images
    from effnetv2.cli.model_setup import load_model
    from effnetv2.cli.outputs import check_output, save_safetensors
    from effnetv2.data.assets import sample_image_path
    from effnetv2.path_escape import encode_path

    def write_file(output: Path, tensors: dict[str, Tensor], paths: list[str], metadata: dict[str, Any]) -> str:
        save_safetensors(output, tensors, paths, **metadata)
        return encode_path(output)

    files = input_images(args, default=sample_image_path())
    if args.mosaic is not None and args.output is not None and not is_folder_output(args.output):
        check_output(args.output, (".safetensors",))  # before the picture is drawn
    if args.mosaic is not None:
        draw_feature_mosaic(args, files)
        if args.output is None:
            return 0
    extraction = Extraction(
        "features",
        load=lambda: load_model(args, features_only=True, out_indices=args.out_indices),
        to_tensors=lambda model, rows: level_tensors(model.feature_info.out_indices, rows),
        describe=lambda model, config: describe(args, model, config),
        row_bytes=lambda model, config: map_bytes(model.feature_info, config["input_size"]),
        rows=lambda model, count: f"feature maps of {plural(count, 'image')}, levels {levels(model.feature_info)},",
    )
    return run_extraction(args, files, extraction, (".safetensors",), write_file)
