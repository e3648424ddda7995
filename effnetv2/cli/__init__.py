"""The ``effnetv2`` command line. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``effnetv2`` console script and ``python -m effnetv2``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error, already printed: return its status rather than exit
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"effnetv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``effnetv2 predict DIR | head``): silence stdout so exiting prints no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
