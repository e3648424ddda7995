"""The ``effnetv2`` command line. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

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
    """argparse with one-line usage errors (subcommand parsers inherit the class), and for a mistyped option or
    command the closest real one and the usage line of the command it was given to."""

    def error(self, message: str) -> NoReturn:
        choice = _INVALID_CHOICE.match(message)
        if choice:  # a mistyped command (or choice): Python 3.14's suggest_on_error, before 3.14
            message += _suggestion(choice["given"], choice["choices"].replace("'", "").split(", "))
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # options no parser knew: the command they were given to explains, with its usage line
            command = self._command_parser(parsed) or self
            unknown = [a for a in extras if a.startswith("-")]
            known = [o for action in command._actions for o in action.option_strings]
            hint = _suggestion(unknown[0].partition("=")[0], known) if unknown else ""
            command.print_usage(sys.stderr)
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _command_parser(self, parsed: argparse.Namespace) -> Optional[argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None))
        return None


_INVALID_CHOICE = re.compile(r"argument .*?: invalid choice: '(?P<given>.*)' \(choose from (?P<choices>.*)\)$")


def _suggestion(given: str, candidates: Sequence[str]) -> str:
    """``; did you mean X?`` for the candidate closest to ``given``, or nothing when none is close."""
    close = difflib.get_close_matches(given, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    from effnetv2.version import __version__

    parser = _ArgumentParser(
        prog="effnetv2",
        description="The EfficientNetV2 family (timm's 16 architectures and their pretrained weights) in plain "
        "PyTorch: classify, validate, embed, extract features, explain, export and fine-tune, with timm's numbers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
