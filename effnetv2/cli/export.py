"""``effnetv2 export``: ONNX, TorchScript or torch.export file, verified against the eager model before it is kept."""

from __future__ import annotations

import argparse
import sys

from effnetv2.cli import CLIError
from effnetv2.cli.options import (
    add_batch_size_option,
    add_calibration_options,
    add_image_size_option,
    add_model_options,
    check_calibration_options,
    non_negative_int,
    number,
)
from effnetv2.defaults import DEFAULT_ONNX_OPSET, EXPORT_FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the model to ONNX, TorchScript or torch.export, verified against PyTorch",
        description="Export the model and verify the written file: it is loaded back (onnxruntime, torch.jit.load, "
        "torch.export.load), run on natural-looking images (the sample photo and crops of it, smooth fields) at "
        "batch 1 and 3 (and a second image size with --dynamic-size), and judged against an fp64 copy of the model "
        "next to the eager model's own error there. Both errors are printed; a file more than 4x as far from fp64 "
        "as the eager model fails the command and nothing is written.",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="onnx (.onnx), torchscript (.pt), exported-program (.pt2)",
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write (atomically)")
    add_model_options(
        parser,
        num_classes_help="classifier size (default: the checkpoint's config.json, else the model's); another size "
        "than the weights' exports a fresh, untrained classifier (0: none, pooled features out)",
        num_classes_type=non_negative_int,
    )
    parser.add_argument(
        "--features-only",
        action="store_true",
        help="export the feature pyramid (one output per level: features.0, features.1, ...)",
    )
    add_shape_options(parser)
    add_graph_options(parser)
    parser.set_defaults(func=run)


def add_shape_options(parser: argparse.ArgumentParser) -> None:
    """The example input's size and which of its axes the file leaves dynamic."""
    add_image_size_option(parser, "the model's input size", what="example input size")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--dynamic-batch",
        dest="dynamic_batch",
        action="store_true",
        default=True,
        help="dynamic batch axis (the default)",
    )
    shape.add_argument("--static", dest="dynamic_batch", action="store_false", help="fixed batch axis (--batch-size)")
    add_batch_size_option(parser, 1, "the batch size of a --static export")
    parser.add_argument("--dynamic-size", action="store_true", help="dynamic height and width too")


def add_graph_options(parser: argparse.ArgumentParser) -> None:
    """What graph is written (opset, BatchNorm folded, int8) and how closely it must agree."""
    parser.add_argument("--opset", type=int, metavar="N", help=f"ONNX opset, 7-20 (default: {DEFAULT_ONNX_OPSET})")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="export the BatchNorm-folded inference model (effnetv2.optimize_for_inference)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="ONNX only: quantize the verified export to int8 with ONNX Runtime's static quantization, calibrated on "
        "--calibration images; its error from fp64 and top-1 agreement on held-out images are printed, unjudged",
    )
    add_calibration_options(parser, "--int8")
    parser.add_argument(
        "--tolerance",
        type=number(0),
        metavar="T",
        help="largest accepted error from fp64, max|file - fp64| / max|fp64|, instead of the derived limit "
        "(4x the eager model's own error, plus a few ulps)",
    )


def check_int8_options(args: argparse.Namespace) -> None:
    if not args.int8:
        check_calibration_options(args)
        return
    if args.format != "onnx":
        raise CLIError(f"--int8 is for --format onnx (ONNX Runtime quantizes it), not {args.format}")
    check_calibration_options(args)
    for flag, given in (("--dynamic-size", args.dynamic_size), ("--tolerance", args.tolerance is not None)):
        if given:
            raise CLIError(f"{flag} does not apply to --int8 (its error from fp64 is reported, not judged)")
    if args.optimize:
        raise CLIError("--optimize does not apply to --int8: ONNX Runtime folds BatchNorm itself")
    if not args.dynamic_batch and args.batch_size != 1:
        raise CLIError("--int8 with --static exports at batch 1 (the calibration runs image by image)")


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `effnetv2 --help` and argument errors must not wait for torch.
    from effnetv2.cli.model_setup import calibration_batch, load_model
    from effnetv2.errors import ExportError
    from effnetv2.export import check_export_options, export_model, export_onnx_int8
    from effnetv2.path_escape import encode_path

    # Cheap checks first: a bad path or opset should not cost a hub download and a 53M-parameter model.
    try:
        output = check_export_options(args.output, args.format, args.opset)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from e
    check_int8_options(args)

    # An explicit --num-classes may ask for a fresh classifier (an export template); otherwise none is swapped in.
    model = load_model(args, fresh_head_ok=args.num_classes is not None, features_only=args.features_only)

    source = encode_path(args.checkpoint) if args.checkpoint else args.model
    if args.int8:
        calibration = calibration_batch(args, model)
        print(f"effnetv2: exporting {source} to onnx, quantizing it to int8, then checking it ...", file=sys.stderr)
        try:
            int8 = export_onnx_int8(model, output, calibration, opset=args.opset, dynamic_batch=args.dynamic_batch)
        except (ExportError, ValueError, ImportError) as e:  # OSErrors (disk full ...) reach main's fault handler
            raise CLIError(str(e)) from e
        print(int8.summary())
        done(f"exported {source} to {encode_path(int8.path)} (onnx int8, {int8.num_bytes / 1e6:.1f} MB)")
        return 0
    print(f"effnetv2: exporting {source} to {args.format}, then verifying it ...", file=sys.stderr)
    try:
        report = export_model(
            model,
            output,
            args.format,
            img_size=args.img_size,
            batch_size=args.batch_size,
            dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size,
            opset=args.opset,
            optimize=args.optimize,
            tolerance=args.tolerance,
        )
    except (ExportError, ValueError, ImportError) as e:  # OSErrors (disk full ...) reach main's fault handler
        raise CLIError(str(e)) from e
    print(report.summary())
    size = f"{report.num_bytes / 1e6:.1f} MB"
    done(f"exported {source} to {encode_path(report.path)} ({args.format}, {size}), verified against fp64")
    return 0


def done(text: str) -> None:
    """The closing line, on stderr after the summary on stdout: where the file is, whatever scrolled past."""
    print(f"effnetv2: {text}", file=sys.stderr)
