"""The command line answers --help, --version and argument errors before the model code loads, and points a
mistyped option or command at the real one (issue 27 item 2). No clock: what is checked is that torch (the
seconds of start-up) is never imported on these paths."""

from __future__ import annotations

import subprocess
import sys

import pytest

import effnetv2
from effnetv2.cli import COMMAND_MODULES

HEAVY = ("torch", "torchvision", "numpy", "PIL", "safetensors", "huggingface_hub")

# Runs the command line in a fresh interpreter, then reports which heavy modules it imported.
PROBE = """
import sys
from effnetv2.cli import main
try:
    status = main(sys.argv[1:])
finally:
    print("IMPORTED:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(status)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=120
    )


def imported(run: subprocess.CompletedProcess) -> str:
    return run.stderr.rpartition("IMPORTED:")[2].strip()


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], *[[name, "--help"] for name in COMMAND_MODULES], ["predict", "--img-size", "16"]],
    ids=lambda args: " ".join(args),
)
def test_help_version_and_argument_errors_load_no_torch(args):
    run = run_cli(*args)
    assert run.returncode == (2 if args[-1] == "16" else 0), run.stderr
    assert imported(run) == "", f"effnetv2 {' '.join(args)} imported {imported(run)}"
    if args == ["--version"]:
        assert run.stdout.strip() == f"effnetv2 {effnetv2.__version__}"
    elif args[-1] == "--help":
        assert run.stdout.startswith("usage: effnetv2")


def test_a_command_that_runs_does_load_torch():
    """The probe can see an import: a real command (info) loads torch, so the test above could fail."""
    run = run_cli("info", "--model", "efficientnetv2_rw_t", "--img-size", "64", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert "torch" in imported(run).split(",")


def test_a_mistyped_option_gets_the_closest_one_and_the_command_usage():
    run = run_cli("predict", "--img-szie", "96")
    lines = run.stderr.splitlines()
    assert run.returncode == 2
    assert lines[0].startswith("usage: effnetv2 predict ")
    error = next(line for line in lines if "error:" in line)
    assert error.startswith("effnetv2 predict: error: unrecognized arguments: --img-szie")
    assert "did you mean --img-size?" in error and "(see 'effnetv2 predict --help')" in error
    assert imported(run) == ""


def test_an_option_nothing_resembles_gets_no_guess():
    run = run_cli("embed", "--zzzz", "-o", "x.npy")
    assert run.returncode == 2 and "unrecognized arguments: --zzzz" in run.stderr
    assert "did you mean" not in run.stderr


def test_a_mistyped_command_gets_the_closest_command():
    run = run_cli("predcit", "img.jpg")
    assert run.returncode == 2
    assert "invalid choice: 'predcit'" in run.stderr and "did you mean predict?" in run.stderr


def test_the_package_loads_its_names_on_first_use():
    """`import effnetv2` is light, and every public name still resolves to the real object."""
    probe = "import sys, effnetv2; print(','.join(m for m in ('torch', 'torchvision') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == ""
    assert set(effnetv2.__all__) == set(effnetv2._PUBLIC) | {"data"}
    for name in effnetv2.__all__:
        assert getattr(effnetv2, name) is not None
    from effnetv2.registry import create_model

    assert effnetv2.create_model is create_model and "create_model" in dir(effnetv2)
    with pytest.raises(AttributeError, match="no attribute 'create_modle'"):
        effnetv2.create_modle  # noqa: B018
    # a submodule is an attribute of the package on first use, as when the package imported them all
    probe = "import effnetv2; print(effnetv2.registry.create_model.__module__, effnetv2.weights.hub.__name__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.split() == ["effnetv2.registry", "effnetv2.weights.hub"], result.stderr
