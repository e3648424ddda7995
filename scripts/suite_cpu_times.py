#!/usr/bin/env python
"""Where the test suite's CPU time goes: a pytest plugin that records each test's CPU seconds, and a report of them.

    PYTHONPATH=scripts python -m pytest -p suite_cpu_times        # writes suite-cpu-times/<pid>.json per process
    python scripts/suite_cpu_times.py [suite-cpu-times] [--top 40]  # per file and per test, most CPU first

Wall-clock durations (pytest's ``--durations``) mislead on a loaded 2-core machine: a test's wall time grows with
what the other test process does meanwhile, and the subprocesses it starts (torchrun, the CLI, g++ under inductor)
use cores it does not. This records, per test, the CPU time of the test process itself and of the child processes it
waited for (``getrusage``: a torchrun launcher's workers count once the launcher exits), so that the suite's total
is what the cores spent, and the largest items are the ones worth making cheaper. A module or session fixture is
charged to the first test that sets it up. The folder is ``$SUITE_CPU_TIMES_DIR`` (default ``suite-cpu-times`` in
the current folder); a run first empties it of an earlier run's files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from effnetv2 import atomic

FOLDER = "suite-cpu-times"
FIELDS = {"test", "own_s", "children_s", "wall_s"}
_rows: list[dict] = []


def _folder() -> Path:
    return Path(os.environ.get("SUITE_CPU_TIMES_DIR", FOLDER))


def pytest_configure(config: pytest.Config) -> None:
    """In the process that starts the run (pytest-xdist's workers start after it): an earlier run's files removed,
    so that the report adds up this run only."""
    if hasattr(config, "workerinput"):
        return
    try:
        for old in _folder().glob("*.json"):
            old.unlink()
    except OSError as e:
        print(f"suite_cpu_times: cannot empty {_folder()}: {e}", file=sys.stderr)


def _cpu_seconds() -> tuple[float, float]:
    """(this process, the children it has waited for): user + system seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Setup, call and teardown of one test, measured together."""
    (own, children), start = _cpu_seconds(), time.perf_counter()
    yield
    own_after, children_after = _cpu_seconds()
    _rows.append(
        dict(
            test=item.nodeid,
            own_s=own_after - own,
            children_s=children_after - children,
            wall_s=time.perf_counter() - start,
        )
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _rows:  # pytest-xdist's controller runs no tests
        return
    folder = _folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(folder / f"{os.getpid()}.json", json.dumps(_rows, indent=0))  # whole or absent
    except OSError as e:
        print(f"suite_cpu_times: cannot write the CPU times into {folder}: {e}", file=sys.stderr)


def read(folder: Path) -> list[dict]:
    """Every test process's rows."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no *.json in {folder}: run pytest with -p suite_cpu_times first (see --help)")
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f}: not this plugin's JSON ({e}); run the suite again") from e
        if not isinstance(data, list):
            raise ValueError(f"{f}: not this plugin's JSON (not a list of rows); run the suite again")
        rows += data
    if not all(isinstance(r, dict) and r.keys() >= FIELDS for r in rows):
        raise ValueError(f"{folder}: rows without {sorted(FIELDS)}: not this plugin's JSON; run the suite again")
    return rows


def report(rows: list[dict], top: int) -> str:
    """Totals, then files and tests by CPU seconds (own + children), largest first."""
    cpu = {r["test"]: r["own_s"] + r["children_s"] for r in rows}
    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        f = files[r["test"].split("::")[0]]
        f[0] += r["own_s"] + r["children_s"]
        f[1] += r["children_s"]
        f[2] += 1
    total, children = sum(cpu.values()), sum(r["children_s"] for r in rows)
    lines = [
        f"{len(rows)} tests: {total:.0f} CPU s ({children:.0f} of them in subprocesses)",
        "",
        "CPU s  subproc  tests  file",
    ]
    lines += [f"{c:6.1f} {k:7.1f} {n:6d}  {name}" for name, (c, k, n) in sorted(files.items(), key=lambda x: -x[1][0])]
    lines += ["", "CPU s  subproc  wall s  test"]
    for r in sorted(rows, key=lambda r: -cpu[r["test"]])[:top]:
        lines.append(f"{cpu[r['test']]:6.1f} {r['children_s']:7.1f} {r['wall_s']:7.1f}  {r['test']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", nargs="?", default=FOLDER, type=Path)
    p.add_argument("--top", type=int, default=40, help="tests listed (default 40)")
    args = p.parse_args(argv)
    try:
        print(report(read(args.folder), args.top))
    except (OSError, ValueError) as e:
        print(f"suite_cpu_times: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
