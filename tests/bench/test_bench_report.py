"""The benchmark driver (``python -m bench.report``) end to end, at tiny sizes.

The numbers themselves are never asserted (they depend on the machine); what is asserted is
that a run produces a complete, self-describing report without touching the real
BENCHMARKS.md. Peers that are not installed (lmdb, rocksdict, matplotlib on a machine with only
the ``test`` extra) are skipped by the suite and named in the report, and the run still passes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.test_wal import (
    BATCH_SIZES,
    BENCH_GOALS,
    GROUP_APPEND_NOSYNC,
    GROUP_DURABLE_ONE,
    GROUP_DURABLE_THREADS,
    REPLAY_RECORD_SIZES,
    group_batch,
    group_replay,
)

REPO = Path(__file__).resolve().parents[2]
WAL_GROUPS = [
    GROUP_APPEND_NOSYNC,
    GROUP_DURABLE_ONE,
    GROUP_DURABLE_THREADS,
    *(group_batch(b) for b in BATCH_SIZES),
    *(group_replay(s) for s in REPLAY_RECORD_SIZES),
]


def run_driver(*args: str, scale: str = "tiny") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KEYVAL_BENCH_SCALE=scale)
    return subprocess.run(
        [sys.executable, "-m", "bench.report", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny run of the WAL suite into a temp dir: (output dir, report text)."""
    out_dir = tmp_path_factory.mktemp("bench-run")
    result = run_driver(
        "--quick",
        "--only",
        "wal",
        "--out",
        str(out_dir / "BENCHMARKS.md"),
        "--results-dir",
        str(out_dir / "results"),
        "--plots-dir",
        str(out_dir / "plots"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out_dir, (out_dir / "BENCHMARKS.md").read_text()


def test_report_has_machine_section_with_live_fsync_latencies(tiny_run):
    _, report = tiny_run
    machine = report.split("## Machine", 1)[1].split("\n## ", 1)[0]
    assert "CPU:" in machine and "Kernel:" in machine and "file system:" in machine
    assert len(re.findall(r"fsync latency, 4 KiB (overwrite|append).*p50 .*p99 ", machine)) == 2


def test_report_states_the_command_that_produced_it(tiny_run):
    out_dir, report = tiny_run
    assert "KEYVAL_BENCH_SCALE=tiny python -m bench.report --quick --only wal" in report
    assert str(out_dir / "BENCHMARKS.md") in report


def test_wal_table_has_a_row_per_case_group(tiny_run):
    _, report = tiny_run
    wal = report.split("## wal", 1)[1]
    table_rows = [line for line in wal.splitlines() if line.startswith("| ")]
    header, rows = table_rows[0], table_rows[1:]
    for column in ("sync", "batch", "record B", "keys", "threads", "keyval median", "best peer"):
        assert f" {column} |" in header
    for group in WAL_GROUPS:
        row_start = re.compile(re.escape(f"| {group}") + r"( \([^|]*\))? \|")
        assert any(row_start.match(row) for row in rows), group


def test_every_goal_gets_a_verdict(tiny_run):
    _, report = tiny_run
    goals = report.split("### Goals", 1)[1].split("\n### ", 1)[0]
    for goal in BENCH_GOALS:
        line = next(line for line in goals.splitlines() if goal.text in line)
        assert re.match(r"- \*\*(met|NOT MET|not measured)\*\*", line), line


def test_skipped_systems_are_named_with_their_reason(tiny_run):
    out_dir, report = tiny_run
    cases = json.loads(next((out_dir / "results").glob("*/wal.cases.json")).read_text())["cases"]
    skipped = [case for case in cases if case["outcome"] == "skipped"]
    for case in skipped:
        assert case["reason"]
        assert case["reason"] in report
    assert not [case for case in cases if case["outcome"] == "failed"]


def test_plots_exist_or_their_absence_is_explained(tiny_run):
    out_dir, report = tiny_run
    plots = report.split("## Plots", 1)[1]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", plots)
    if links:
        for link in links:
            assert (out_dir / link).is_file(), link
    else:
        assert "matplotlib is not importable" in plots


def test_run_keeps_json_and_logs_but_no_scratch_files(tiny_run):
    out_dir, _ = tiny_run
    (run_dir,) = (out_dir / "results").iterdir()
    assert json.loads((run_dir / "wal.json").read_text())["benchmarks"]
    assert (run_dir / "wal.log").is_file() and (run_dir / "machine.json").is_file()
    assert not (run_dir / "scratch").exists()


def test_unknown_layer_is_a_usage_error(tmp_path):
    result = run_driver("--quick", "--only", "nosuchlayer", "--out", str(tmp_path / "B.md"))
    assert result.returncode == 2
    assert "unknown layer" in result.stderr
    assert not (tmp_path / "B.md").exists()


def test_quick_or_full_is_required(tmp_path):
    result = run_driver("--out", str(tmp_path / "B.md"))
    assert result.returncode == 2
    assert not (tmp_path / "B.md").exists()
