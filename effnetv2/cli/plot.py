"""``effnetv2 plot RUN... -o OUT.png``: the training curves of one or several ``train`` runs, side by side."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from effnetv2.cli import CLIError
from effnetv2.path_escape import encode_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="training curves of train runs (their metrics.jsonl) as a PNG",
        description="Draw the loss, accuracy and learning-rate curves of one or several `effnetv2 train` runs, one "
        "colour per run, in one PNG (the picture train writes to OUTPUT/curves.png after each epoch, for several "
        "runs at once): loss and LR (right axis) against epoch on the left, top-1/top-5 accuracy on the right; "
        "train dashed, val solid. Needs matplotlib (pip install 'effnetv2[plots]').",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="a train --output folder, or its metrics.jsonl; one or more"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--title", default="", help="a title over the picture")
    parser.set_defaults(func=run)


def read_run(path: Path) -> list[dict]:
    """The epoch rows of a run folder (or of its ``metrics.jsonl``)."""
    from effnetv2.train.run_folder import METRICS_FILE, RunFolder

    folder = path.parent if path.name == METRICS_FILE and path.is_file() else path
    if not folder.is_dir():
        raise CLIError(f"{encode_path(path)}: no such run folder")
    if not (folder / METRICS_FILE).is_file():
        raise CLIError(
            f"{encode_path(folder)}: has no {METRICS_FILE}: not an effnetv2 train --output folder, or no epoch of it "
            "has finished yet"
        )
    try:
        rows = RunFolder(folder).read_metrics()
    except (OSError, ValueError) as e:
        raise CLIError(f"{encode_path(folder / METRICS_FILE)}: {e}") from None
    if not rows:
        raise CLIError(f"{encode_path(folder / METRICS_FILE)}: no finished epoch in it yet")
    warn_non_finite(folder / METRICS_FILE, rows)
    return rows


def warn_non_finite(path: Path, rows: list[dict]) -> None:
    """One warning line per run whose rows hold NaN or infinite values (a diverged run): they are not drawn."""
    bad = [
        (row.get("epoch"), key)
        for row in rows
        for key, value in row.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if bad:
        epochs = sorted({epoch for epoch, _ in bad if isinstance(epoch, int)})
        keys = ", ".join(sorted({key for _, key in bad}))
        shown = ", ".join(map(str, epochs[:5])) + (", ..." if len(epochs) > 5 else "")
        print(
            f"effnetv2: warning: {encode_path(path)}: NaN or infinite {keys} in epoch(s) {shown}: not drawn",
            file=sys.stderr,
        )


def run_names(paths: list[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    folders = [p.parent if p.suffix == ".jsonl" else p for p in paths]
    names = [f.resolve().name for f in folders]
    return [encode_path(f) if names.count(n) > 1 else n for f, n in zip(folders, names, strict=True)]


def run(args: argparse.Namespace) -> int:
    from effnetv2.cli.outputs import check_output

    output = check_output(args.output, (".png",))
    paths = [Path(p) for p in args.runs]
    runs = dict(zip(run_names(paths), (read_run(p) for p in paths), strict=True))
    if len(runs) < len(paths):
        raise CLIError("the same run is named twice")
    from effnetv2.pictures import MATPLOTLIB_HINT, draw_curves

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f"plot needs matplotlib: {MATPLOTLIB_HINT}") from None
    draw_curves(runs, output, title=args.title)
    print(encode_path(output))
    return 0
