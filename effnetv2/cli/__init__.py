"""The ``effnetv2`` command line. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

# Subcommand modules, in the order ``effnetv2 --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = ("train",)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnetv2", description="EfficientNetV2-RW-M: timm's numbers, no timm.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"effnetv2.cli.{name}").register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``effnetv2`` console script and ``python -m effnetv2``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"effnetv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
