"""README's *Layout* table matches the tree: it names every module of ``effnetv2/`` and nothing that is not there.

A row names paths in its first column (``effnetv2/spec.py``, ``effnetv2/layers/``); a folder row names the files
inside that folder in its description (``blocks.py``). A package's ``__init__.py`` is named by its folder's row. The
tree is read when the test runs, so a module added, renamed or removed fails here until the table says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "effnetv2"
CODE = re.compile(r"`([^`]+)`")
PATHLIKE = re.compile(r"^[\w.\-/]+(\.py|\.sh|/)$")  # a file or folder name, as opposed to `create_model` or `--x`


@dataclass
class Row:
    paths: list[str]  # the first column: paths from the repository root
    names: list[str]  # file and folder names the description mentions


def layout_rows(readme: str) -> list[Row]:
    """The rows of the table under ``## Layout``."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "module":
            continue
        rows.append(Row(CODE.findall(cells[0]), [n for n in CODE.findall(cells[1]) if PATHLIKE.match(n)]))
    return rows


def modules(package: Path) -> set[str]:
    """Every module of the package, as a path from the repository root; a subpackage's ``__init__.py`` as its
    folder (``effnetv2/layers/``)."""
    found = set()
    for path in package.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(package.parent).as_posix()
        found.add(rel[: -len("__init__.py")] if path.name == "__init__.py" and path.parent != package else rel)
    return found


def named(rows: list[Row]) -> set[str]:
    """Every path the table names: first columns, and each folder row's file names inside that folder."""
    paths = set()
    for row in rows:
        paths.update(row.paths)
        for folder in (p for p in row.paths if p.endswith("/")):
            paths.update(folder + name for name in row.names if (ROOT / folder / name).exists())
    return paths


def problems(rows: list[Row], package: Path) -> list[str]:
    wrong = []
    for row in rows:
        for path in row.paths:
            if not (ROOT / path).exists():
                wrong.append(f"{path}: named in the Layout table, not in the tree")
        folders = [p for p in row.paths if p.endswith("/")]
        for name in row.names:
            if not any((ROOT / base / name).exists() for base in [*folders, ""]):
                wrong.append(f"{name} (row {', '.join(row.paths)}): named in the Layout table, not in the tree")
    listed = named(rows)
    for module in sorted(modules(package) - listed):
        folder = module if module.endswith("/") else module.rsplit("/", 1)[0] + "/"
        where = f"the row of {folder}" if folder in listed else "a row"
        wrong.append(f"{module}: in the tree, not in the Layout table ({where} should name it)")
    return wrong


def test_layout_table_matches_the_tree():
    rows = layout_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 15  # the table is found
    assert problems(rows, PACKAGE) == []


def test_layout_check_sees_a_missing_and_a_stale_module(tmp_path):
    """The check fails both ways: a module the table leaves out, and a name the tree does not have."""
    rows = layout_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    layers = next(row for row in rows if row.paths == ["effnetv2/layers/"])
    without = [row for row in rows if row is not layers] + [Row(layers.paths, layers.names[1:])]
    assert [p for p in problems(without, PACKAGE) if layers.names[0] in p] != []
    stale = [*rows, Row(["effnetv2/optimize.py"], []), Row(["effnetv2/train/"], ["ddp.py"])]
    found = problems(stale, PACKAGE)
    assert any(p.startswith("effnetv2/optimize.py:") for p in found) and any(p.startswith("ddp.py") for p in found)
