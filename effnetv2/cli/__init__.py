"""The ``effnetv2`` command line. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Optional

# Subcommand modules, in the order ``effnetv2 --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "predict",
    "validate",
    "embed",
    "features",
    "explain",
    "info",
    "export",
    "train",
    "plot",
)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2, no traceback."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (subcommand parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="effnetv2", description="EfficientNetV2-RW-M: timm's numbers, no timm.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"effnetv2.cli.{name}").register(subparsers)
    return parser


# The options naming what a command writes: a write fault that names no file (safetensors, torch.save) is theirs.
OUTPUT_OPTIONS: tuple[str, ...] = ("output", "predictions_out", "mosaic")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``effnetv2`` console script and ``python -m effnetv2``.

    Every fault ends here as one line on stderr and an exit status (:mod:`effnetv2.cli.faults`): 2 for a usage
    error, 1 for a fault of the machine (a full disk, no permission), 130 for Ctrl-C. An exception that module does
    not know is a bug, and keeps its traceback.
    """
    from effnetv2.cli.faults import STDOUT, describe_fault

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error, already printed: return its status rather than exit
        return e.code if isinstance(e.code, int) else 2
    fault = None
    try:
        status = int(args.func(args) or 0)
    except BaseException as e:  # what describe_fault does not know is raised again
        fault = describe_fault(e, _output_of(args))
        if fault is None:
            raise
    try:
        sys.stdout.flush()  # a full or closed stdout fails here, not in the interpreter's exit (a traceback there)
    except OSError as e:
        _silence_stdout()
        fault = fault or describe_fault(e, STDOUT)  # the command's own fault, when it had one, comes first
    if fault is None:
        return status
    if fault.message:
        with contextlib.suppress(OSError):  # stderr may be full too: the status still tells
            print(f"effnetv2: error: {fault.message}", file=sys.stderr)
    return fault.status


def _output_of(args: argparse.Namespace) -> Optional[str]:
    """The file or folder the command writes (None: it writes only to stdout)."""
    return next((str(value) for value in map(vars(args).get, OUTPUT_OPTIONS) if value is not None), None)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the data left in its buffer goes nowhere at exit rather than failing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no stdout, or not a file (a test's capture)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
