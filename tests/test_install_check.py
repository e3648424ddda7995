"""The torch/torchvision pair (issue 27 item 1): ``import effnetv2`` says in one line which versions are installed and
the command that fixes them, for a version mismatch (read from the installed packages' metadata) and for a build
mismatch (caught when torchvision first loads); the commands of docs/install.md pin pairs of the same table.

The mismatches are real to Python: a ``torchvision-0.28.0.dist-info`` that ``importlib.metadata`` finds first on
``sys.path``, and a ``torchvision`` package that fails to load as a torchvision built for another torch does, each in
a child process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import HANG_GUARD_S
from packaging.requirements import Requirement
from packaging.version import Version

from effnetv2.cli.faults import ENVIRONMENT, Fault, describe_fault
from effnetv2.install_check import (
    PYTORCH_INDEX,
    TESTED_PAIR,
    TORCHVISION_FOR_TORCH,
    TorchvisionMismatchError,
    _load_failure,
    check_versions,
    installed_versions,
    matching_torchvision,
)

ROOT = Path(__file__).resolve().parents[1]
INSTALL_DOC = ROOT / "docs" / "install.md"
NMS_ERROR = "operator torchvision::nms does not exist"  # what a torchvision built for another torch raises


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def fake_torchvision(folder: Path, version: str, load_error: str | None = None) -> Path:
    """An installed torchvision ``version`` in ``folder``, as ``importlib.metadata`` reads it; with ``load_error``,
    also a ``torchvision`` package that raises it when imported (a torchvision built for another torch)."""
    info = folder / f"torchvision-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {version}\n")
    if load_error is not None:
        (folder / "torchvision").mkdir()
        (folder / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({load_error!r})\n")
    return folder


def python(args: list[str], first_on_path: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` with ``first_on_path`` ahead of everything installed, and this checkout's effnetv2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(first_on_path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=first_on_path, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def test_installed_pair_passes():
    versions = installed_versions()
    loaded = (torch.__version__, torchvision.__version__)  # PyPI's builds say "+cu130" here, not in their metadata
    assert [Version(v).public for v in versions] == [Version(v).public for v in loaded]  # what Python loads
    check_versions(*versions)
    assert matching_torchvision(torch.__version__).rsplit(".", 1)[0] == torchvision.__version__.rsplit(".", 1)[0]


@pytest.mark.parametrize(
    ("torch_version", "torchvision_version", "fix"),
    [
        ("2.13.0+cpu", "0.29.1", f"pip install torch==2.13.0 torchvision==0.28.0 --index-url {PYTORCH_INDEX}/cpu"),
        ("2.14.1", "0.28.0", "pip install torch==2.14.1 torchvision==0.29.1"),  # PyPI's own builds: no index
        ("2.9.1+cu126", "0.25.0", f"pip install torch==2.9.1 torchvision==0.24.1 --index-url {PYTORCH_INDEX}/cu126"),
    ],
)
def test_mismatched_versions_are_one_line_with_the_fix(torch_version, torchvision_version, fix):
    with pytest.raises(TorchvisionMismatchError) as caught:
        check_versions(torch_version, torchvision_version)
    message = str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert "\n" not in message
    assert f"torchvision {torchvision_version} " in message and f"torch {torch_version}," in message
    assert message.endswith(f"fix it with: {fix}")


@pytest.mark.parametrize(
    ("torch_version", "torchvision_version"),
    [("2.14.0", "0.29.1"), ("2.1.2", "0.16.0"), ("2.15.0", "0.29.1")],  # other patches; a torch the table lacks
)
def test_pairs_the_table_does_not_contradict_pass(torch_version, torchvision_version):
    check_versions(torch_version, torchvision_version)


def test_the_table_covers_the_torch_releases_pyproject_admits():
    """A raised cap in pyproject.toml needs its row here (and the pair from torchvision's README)."""
    specs = {req.name: req.specifier for req in map(Requirement, pyproject()["dependencies"])}
    assert {f"2.{m}" for m in range(40) if Version(f"2.{m}.0") in specs["torch"]} == set(TORCHVISION_FOR_TORCH)
    assert {f"0.{m}" for m in range(60) if Version(f"0.{m}.0") in specs["torchvision"]} == set(
        TORCHVISION_FOR_TORCH.values()
    )


def test_a_mismatched_install_stops_import_effnetv2_in_one_line(tmp_path):
    fake_torchvision(tmp_path, "0.28.0")
    torch_version = installed_versions()[0]
    caught = python(
        [
            "-c",
            "try:\n    import effnetv2\nexcept ImportError as e:\n    print(type(e).__name__, '|', e)\n"
            "raise ValueError('any other error keeps its traceback')",
        ],
        tmp_path,
    )
    name, _, message = caught.stdout.strip().partition(" | ")
    assert name == "TorchvisionMismatchError"
    assert message.startswith(f"torchvision 0.28.0 is installed beside torch {torch_version}, ")
    assert message.endswith(f"fix it with: {matching_fix(torch_version)}")
    assert "Traceback" in caught.stderr and "ValueError: any other error" in caught.stderr

    uncaught = python(["-c", "import effnetv2"], tmp_path)
    assert (uncaught.returncode, uncaught.stderr) == (1, f"effnetv2: error: {message}\n")


def matching_fix(torch_version: str) -> str:
    release, _, build = torch_version.partition("+")
    index = f" --index-url {PYTORCH_INDEX}/{build}" if build else ""
    return f"pip install torch=={release} torchvision=={matching_torchvision(torch_version)}{index}"


def test_the_command_line_says_one_line_and_fails(tmp_path):
    fake_torchvision(tmp_path, "0.28.0")
    run = python(["-m", "effnetv2", "info"], tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("effnetv2: error: torchvision 0.28.0 is installed beside torch ")
    assert lines[0].endswith(matching_fix(installed_versions()[0]))


def test_a_torchvision_built_for_another_torch_is_caught_where_it_loads(tmp_path):
    """Versions that match, a build that does not: torchvision's own RuntimeError becomes the one-line error."""
    torch_version = installed_versions()[0]
    fake_torchvision(tmp_path, matching_torchvision(torch_version), load_error=NMS_ERROR)
    script = (
        "import effnetv2\n"
        "for attempt in range(2):\n"
        "    try:\n        import torchvision\n"
        "    except ImportError as e:\n        print(type(e).__name__, type(e.__cause__).__name__, '|', e)\n"
    )
    caught = python(["-c", script], tmp_path).stdout.splitlines()
    expected = _load_failure(torch_version, matching_torchvision(torch_version), RuntimeError(NMS_ERROR))
    assert caught == [f"TorchvisionMismatchError RuntimeError | {expected}"] * 2  # the guard stays until it loads
    assert f"--force-reinstall --no-deps torchvision=={matching_torchvision(torch_version)}" in expected

    run = python(["-m", "effnetv2", "info"], tmp_path)
    assert (run.returncode, run.stdout, run.stderr.splitlines()[-1:]) == (1, "", [f"effnetv2: error: {expected}"])
    assert "Traceback" not in run.stderr


def test_a_torchvision_that_loads_leaves_no_guard_behind(tmp_path):
    script = (
        "import sys, effnetv2\n"
        "guarded = [type(f).__name__ for f in sys.meta_path if type(f).__module__ == 'effnetv2.install_check']\n"
        "import torchvision\n"
        "left = [type(f).__name__ for f in sys.meta_path if type(f).__module__ == 'effnetv2.install_check']\n"
        "print(guarded, left, 'exec_module' in vars(torchvision.__loader__), torchvision.__version__)\n"
    )
    run = python(["-c", script], tmp_path)
    assert run.stdout.split() == ["['_TorchvisionImportGuard']", "[]", "False", torchvision.__version__], run.stderr


def test_the_command_line_fault_is_the_message_itself():
    error = TorchvisionMismatchError("torchvision 0.28.0 is installed beside torch 2.14.1, ...")
    assert describe_fault(error) == Fault(str(error), ENVIRONMENT)


def doc_commands() -> list[str]:
    """The page's pip commands: the lines of its bash blocks (the error messages it shows hold commands too)."""
    blocks = re.findall(r"```bash\n(.*?)```", INSTALL_DOC.read_text(), flags=re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.startswith("pip install")]
    assert len(commands) >= 3, "the plain, the CPU-only and the keep-your-torch commands"
    return commands


def test_every_pinned_pair_in_the_install_page_is_a_matching_pair():
    pairs = []
    for command in doc_commands():
        torch_pin = re.search(r"\btorch==(\S+)", command)
        torchvision_pin = re.search(r"\btorchvision==(\S+)", command)
        if torch_pin is None and torchvision_pin is None:
            continue
        assert torch_pin and torchvision_pin, f"pin torch and torchvision together: {command}"
        pair = (torch_pin.group(1), torchvision_pin.group(1))
        check_versions(*pair)
        assert matching_torchvision(pair[0]) == pair[1], command
        index = re.search(r"--index-url (\S+)", command)
        assert index is None or index.group(1).startswith(f"{PYTORCH_INDEX}/"), command
        pairs.append((*pair, index and index.group(1)))
    assert (*TESTED_PAIR, f"{PYTORCH_INDEX}/cpu") in pairs  # the CPU-only command pins the tested pair


def test_the_install_page_names_the_extras_pyproject_defines():
    extras = set(pyproject()["optional-dependencies"])
    groups = [group for command in doc_commands() for group in re.findall(r"\.\[([\w,]+)\]", command)]
    named = {extra for group in groups for extra in group.split(",")}
    tabled = set(re.findall(r"^\| `(\w+)` ", INSTALL_DOC.read_text(), flags=re.MULTILINE))
    assert named and named <= extras and tabled == extras


def test_the_install_page_shows_the_messages_effnetv2_prints():
    shown = re.findall(r"```text\n(.*)\n```", INSTALL_DOC.read_text())
    with pytest.raises(TorchvisionMismatchError) as caught:
        check_versions("2.13.0+cpu", "0.29.1")
    assert shown == [
        f"effnetv2: error: {caught.value}",
        f"effnetv2: error: {_load_failure('2.13.0+cpu', '0.28.0', RuntimeError(NMS_ERROR))}",
    ]
