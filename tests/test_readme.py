"""The documentation's code blocks run as shown: every shell and Python block of README.md, then of each page of
``docs/``, top to bottom in one folder, offline against the suite's Hub cache (the timm-made test weights), unless
the line before it says why not (``<!-- readme-test: skip (reason) -->``: a network, a GPU, the reader's own files,
hours). A ``text`` block is shown output, not code, and is never run. The pages run after the README in the same
folder, so they may use what its tour made (``demo-model``, ``demo-embeddings``, ...); each page's Python blocks
share one namespace of their own. Links between the pages point to files and headings that exist."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from conftest import import_script

from effnetv2.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # README first: the pages build on its tour
BLOCK = re.compile(
    r"(?:<!-- readme-test: skip \((?P<reason>[^\n]+?)\) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M
)
TABLE_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+[\d.]+\s+(.+)$")  # predict's table: rank, class, prob, label
LINK = re.compile(r"\]\((?!https?://|mailto:)(?P<target>[^)\s]*)\)")  # relative Markdown links and images


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int
    lang: str
    body: str
    skip: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.page} line {self.line}"


def page_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(ROOT).as_posix()
    return [
        Block(name, text[: m.start("lang")].count("\n") + 1, m["lang"], m["body"], m["reason"])
        for m in BLOCK.finditer(text)
    ]


BLOCKS = [block for page in PAGES for block in page_blocks(page)]
RUN = [b for b in BLOCKS if b.skip is None and b.lang != "text"]


def test_every_block_runs_or_says_why_not():
    assert len(PAGES) >= 6 and len(BLOCKS) >= 25 and len(RUN) >= 8  # the pages are found, the pattern finds blocks
    assert {b.page for b in RUN} > {"README.md"}  # pages beyond the README are run too
    for block in BLOCKS:
        assert block.lang in ("bash", "console", "python", "text"), f"{block.where}: a ```{block.lang} block"
        if block.skip is not None:
            assert len(block.skip) > 10, f"{block.where}: say why the block is not run"
    for page in PAGES:  # a fence the pattern did not pair (indented, or a stray ```) would hide blocks
        fences = [line for line in page.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("```")]
        assert all(f.startswith("```") for f in fences), f"{page.name}: an indented code fence"
        assert len(fences) == 2 * sum(b.page == page.relative_to(ROOT).as_posix() for b in BLOCKS), page.name


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```$", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_links_point_to_what_exists():
    """Every relative link and image of the README and the pages names a file of the repository (and, with
    ``#anchor``, a heading of that file); every page of docs/ is linked from the README."""
    for page in [*PAGES, ROOT / "BENCHMARKS.md"]:
        for m in LINK.finditer(page.read_text(encoding="utf-8")):
            path, _, anchor = m["target"].partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.exists(), f"{page.name}: link to {m['target']}, which does not exist"
            if anchor:
                assert anchor in anchors(target), f"{page.name}: link to {m['target']}: no such heading"
    linked = {(README.parent / m["target"].partition("#")[0]).resolve() for m in LINK.finditer(README.read_text())}
    assert set(PAGES[1:]) <= linked, "pages of docs/ the README does not link to"


def test_link_checks_can_fail():
    assert slug("AMD EPYC, Zen 4: AVX512-BF16 and VNNI, no AMX") == "amd-epyc-zen-4-avx512-bf16-and-vnni-no-amx"
    assert [m["target"] for m in LINK.finditer("[a](docs/x.md#y) [b](https://e.org) ![c](p.png)")] == [
        "docs/x.md#y",
        "p.png",
    ]


def command_lines(body: str) -> list[str]:
    """Shell commands of a block: backslash continuations joined, comments and blank lines dropped."""
    return [line for line in body.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]


def run_command(line: str, capsys) -> str:
    """Run one documented command in this process (the ``effnetv2`` command, or a script of ``scripts/``): its
    stdout."""
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
    """The console output shown, up to what differs by machine: the sample's folder, and probabilities in their
    last digits (ranks, classes and labels must match)."""
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
    """One folder for the README and all the pages, as a reader would use it, and one namespace per page for its
    Python blocks."""
    return tmp_path_factory.mktemp("readme"), {}


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_block_runs_as_shown(block: Block, workspace, monkeypatch, capsys):
    folder, namespaces = workspace
    monkeypatch.chdir(folder)
    if block.lang == "python":
        namespace = namespaces.setdefault(block.page, {"__name__": "readme"})
        exec(compile(block.body, f"{block.page}, block at line {block.line}", "exec"), namespace)
    elif block.lang == "bash":
        for line in command_lines(block.body):
            run_command(line, capsys)
    else:  # console: "$ command" lines, each followed by the output it prints
        steps = re.split(r"^\$ (.*)\n", block.body, flags=re.M)[1:]
        for line, expected in zip(steps[::2], steps[1::2], strict=True):
            out = run_command(line, capsys)
            assert same_output(expected, out), f"`{line}` printed\n{out}\nbut {block.page} shows\n{expected}"


def test_console_output_comparison_is_strict():
    shown = "/path/to/effnetv2/data/sample.jpg\n  rank  class  prob    label\n     1    219  0.0494  cocker spaniel\n"
    assert same_output(shown, shown.replace("/path/to", "/usr/lib/python3/site-packages").replace("0.0494", "0.0495"))
    assert not same_output(shown, shown.replace("cocker spaniel", "toucan"))
    assert not same_output(shown, shown.replace("   219", "   220"))
    assert not same_output(shown, shown.replace("sample.jpg", "other.jpg"))
    assert not same_output(shown, shown + "     2    167  0.0213  English foxhound\n")
