"""README.md's code blocks run as shown: every shell and Python block, top to bottom in one folder, offline against
the suite's Hub cache (the timm-made test weights), unless the line before it says why not
(``<!-- readme-test: skip (reason) -->``: a network, a GPU, the reader's own files, hours)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from conftest import import_script

from effnetv2.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: skip \((?P<reason>.+?)\) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M
)
TABLE_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+[\d.]+\s+(.+)$")  # predict's table: rank, class, prob, label


@dataclass
class Block:
    line: int
    lang: str
    body: str
    skip: Optional[str]


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(text[: m.start("lang")].count("\n") + 1, m["lang"], m["body"], m["reason"]) for m in BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()
RUN = [b for b in BLOCKS if b.skip is None]


def test_every_block_runs_or_says_why_not():
    assert len(BLOCKS) >= 20 and len(RUN) >= 6  # the pattern finds the blocks
    for block in BLOCKS:
        assert block.lang in ("bash", "console", "python"), f"README line {block.line}: a ```{block.lang} block"
        if block.skip is not None:
            assert len(block.skip) > 10, f"README line {block.line}: say why the block is not run"


def command_lines(body: str) -> list[str]:
    """Shell commands of a block: backslash continuations joined, comments and blank lines dropped."""
    return [line for line in body.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]


def run_command(line: str, capsys) -> str:
    """Run one README command in this process (the ``effnetv2`` command, or a script of ``scripts/``): its stdout."""
    argv = shlex.split(line, comments=True)
    if argv[:3] == ["python", "-m", "effnetv2"]:
        argv = ["effnetv2", *argv[3:]]
    if argv[0] == "effnetv2":
        status = main(argv[1:])
    elif argv[0] == "python" and argv[1].startswith("scripts/") and argv[1].endswith(".py"):
        status = import_script(Path(argv[1]).stem).main(argv[2:])
    else:
        pytest.fail(f"`{line}` is not a command this test knows how to run: mark its block with the reason")
    out, err = capsys.readouterr()
    assert status == 0, f"`{line}` exited with {status}: {err[-2000:]}"
    return out


def same_output(expected: str, actual: str) -> bool:
    """The console output shown in README, up to what differs by machine: the sample's folder, and probabilities
    in their last digits (ranks, classes and labels must match)."""
    want, got = expected.splitlines(), actual.splitlines()
    if len(want) != len(got):
        return False
    for a, b in zip(want, got, strict=True):
        if a.endswith("/effnetv2/data/sample.jpg"):
            if not b.endswith("/effnetv2/data/sample.jpg"):
                return False
        elif TABLE_ROW.match(a):
            if not TABLE_ROW.match(b) or TABLE_ROW.match(a).groups() != TABLE_ROW.match(b).groups():
                return False
        elif a != b:
            return False
    return True


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hf_cache):
    """One folder for the whole README, as a reader would use it, and one namespace for its Python blocks."""
    return tmp_path_factory.mktemp("readme"), {"__name__": "readme"}


@pytest.mark.parametrize("block", RUN, ids=[f"line {b.line}" for b in RUN])
def test_block_runs_as_shown(block: Block, workspace, monkeypatch, capsys):
    folder, namespace = workspace
    monkeypatch.chdir(folder)
    if block.lang == "python":
        exec(compile(block.body, f"README.md, block at line {block.line}", "exec"), namespace)
    elif block.lang == "bash":
        for line in command_lines(block.body):
            run_command(line, capsys)
    else:  # console: "$ command" lines, each followed by the output it prints
        steps = re.split(r"^\$ (.*)\n", block.body, flags=re.M)[1:]
        for line, expected in zip(steps[::2], steps[1::2], strict=True):
            out = run_command(line, capsys)
            assert same_output(expected, out), f"`{line}` printed\n{out}\nbut README shows\n{expected}"


def test_console_output_comparison_is_strict():
    shown = "/path/to/effnetv2/data/sample.jpg\n  rank  class  prob    label\n     1    219  0.0494  cocker spaniel\n"
    assert same_output(shown, shown.replace("/path/to", "/usr/lib/python3/site-packages").replace("0.0494", "0.0495"))
    assert not same_output(shown, shown.replace("cocker spaniel", "toucan"))
    assert not same_output(shown, shown.replace("   219", "   220"))
    assert not same_output(shown, shown.replace("sample.jpg", "other.jpg"))
    assert not same_output(shown, shown + "     2    167  0.0213  English foxhound\n")
