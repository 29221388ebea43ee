"""Fixtures and hooks shared by every benchmark suite (conventions: :mod:`bench`).

- ``bench_dir``: a fresh scratch directory on the file system under test, removed afterwards.
- Every case starts after ``os.sync()``: no dirty data from earlier cases is written back
  during its fsyncs.
- Collects every suite's ``BENCH_GOALS`` and every case's outcome (passed, skipped with its
  reason, failed with the error) and, when ``KEYVAL_BENCH_SIDECAR`` names a file, writes them
  there as JSON at the end of the session. pytest-benchmark's own JSON only lists cases that
  ran, and the report must also say which peers were skipped and why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import SCRATCH_ENV, SIDECAR_ENV, Goal, scale

_DEFAULT_SCRATCH = Path(__file__).resolve().parent / "results" / "scratch"

_goals: dict[str, dict] = {}
_outcomes: dict[str, dict] = {}
# nodeid -> the case's "system" parameter, so a skipped peer is reported under its name.
_systems: dict[str, str] = {}


@pytest.fixture
def bench_dir() -> Iterator[Path]:
    """A new empty directory under ``$KEYVAL_BENCH_DIR`` (default ``bench/results/scratch``),
    deleted with its contents when the case ends."""
    root = Path(os.environ.get(SCRATCH_ENV) or _DEFAULT_SCRATCH)
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _start_with_clean_disk() -> None:
    """Every case starts with no dirty page cache left by the cases before it: the kernel
    would otherwise write that back during this case, and every fsync here (one system's,
    not another's, depending on the order) would wait behind it."""
    os.sync()


def pytest_report_header(config: pytest.Config) -> str:
    return f"keyval bench scale: {scale()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "system" in callspec.params:
            _systems[item.nodeid] = str(callspec.params["system"])
        module = getattr(item, "module", None)
        for goal in getattr(module, "BENCH_GOALS", ()):
            if isinstance(goal, Goal):
                _goals[goal.text] = goal.to_dict()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A case is "passed" only if every phase passed; a skip or failure in any phase wins.
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        _outcomes[report.nodeid] = {"outcome": "skipped", "reason": reason}
    elif report.failed:
        _outcomes[report.nodeid] = {
            "outcome": "failed",
            "reason": f"{report.when}: {_last_line(str(report.longrepr))}",
        }
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("E ")]
    return (error_lines[-1] if error_lines else lines[-1] if lines else "")[:300]


def pytest_sessionfinish(session: pytest.Session) -> None:
    sidecar = os.environ.get(SIDECAR_ENV)
    if not sidecar:
        return
    data = {
        "scale": scale(),
        "goals": list(_goals.values()),
        "cases": [
            {"nodeid": nodeid, "system": _systems.get(nodeid), **outcome}
            for nodeid, outcome in _outcomes.items()
        ],
    }
    Path(sidecar).write_text(json.dumps(data, indent=2))
