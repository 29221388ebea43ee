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

from bench.report import LayerResults, goal_lines, layer_table, load_layer
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
    probes = re.findall(r"fsync latency, 4 KiB (overwrite|append).*p50 .*p99 ", machine)
    # Overwrite and append at the start, overwrite again at the end (to see disk sharing).
    assert sorted(probes) == ["append", "overwrite", "overwrite"]


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


# The report's arithmetic, on hand-made pytest-benchmark results (no benchmark is run).


def fake_benchmark(group: str, system: str, seconds_per_round: float, **extra: object) -> dict:
    return {
        "name": f"test_case[{system}]",
        "group": group,
        "extra_info": {"system": system, **extra},
        "stats": {
            "median": seconds_per_round,
            "min": seconds_per_round * 0.9,
            "max": seconds_per_round * 1.1,
            "rounds": 3,
            "data": [seconds_per_round] * 3,
        },
    }


def fake_layer(tmp_path: Path, benchmarks: list[dict], goals: list[dict]) -> LayerResults:
    (tmp_path / "x.json").write_text(json.dumps({"benchmarks": benchmarks}))
    (tmp_path / "x.cases.json").write_text(json.dumps({"goals": goals, "cases": []}))
    layer = LayerResults(layer="x", suite=tmp_path / "test_x.py")
    load_layer(layer, tmp_path / "x.json", tmp_path / "x.cases.json")
    return layer


def goal(factor: float, baseline_system: str = "peer") -> dict:
    return {
        "text": f"keyval >= {factor}x peer",
        "group": "g",
        "system": "keyval",
        "baseline_group": "g",
        "baseline_system": baseline_system,
        "factor": factor,
    }


def test_goal_verdicts_follow_the_measured_ratio(tmp_path):
    # keyval: 1000 ops in 0.1 s = 10,000 ops/s; peer: 1000 ops in 0.3 s = 3,333 ops/s: 3x.
    layer = fake_layer(
        tmp_path,
        [
            fake_benchmark("g", "keyval", 0.1, ops=1000),
            fake_benchmark("g", "peer", 0.3, ops=1000),
        ],
        [goal(2.0), goal(5.0), goal(1.0, baseline_system="absent")],
    )

    met, not_met, unmeasured = goal_lines(layer)

    assert met.startswith("- **met**") and "**3.00x**" in met
    assert not_met.startswith("- **NOT MET**") and "**3.00x**" in not_met
    assert unmeasured.startswith("- **not measured**") and "absent" in unmeasured


def test_an_absolute_goal_compares_the_median_with_its_target(tmp_path):
    # keyval: 1 GB in 0.5 s = 2 GB/s.
    layer = fake_layer(
        tmp_path,
        [fake_benchmark("g", "keyval", 0.5, bytes=10**9)],
        [
            {**goal(1.0), "baseline_system": None, "at_least": target, "text": f"t{target}"}
            for target in (1.5, 2.5)
        ]
        + [{**goal(1.0), "group": "absent", "baseline_system": None, "at_least": 1.0}],
    )

    met, not_met, unmeasured = goal_lines(layer)

    assert met.startswith("- **met**: t1.5") and "**2.00 GB/s**" in met
    assert not_met.startswith("- **NOT MET**: t2.5") and "goal 2.5 GB/s" in not_met
    assert unmeasured.startswith("- **not measured**")


def test_a_reference_is_never_the_best_peer(tmp_path):
    layer = fake_layer(
        tmp_path,
        [
            fake_benchmark("g", "keyval", 0.2, bytes=10**9),
            fake_benchmark("g", "peer", 0.4, bytes=10**9),
            fake_benchmark("g", "ceiling", 0.1, bytes=10**9, reference=True),
        ],
        [],
    )

    header, _, row = layer_table(layer)

    assert "ceiling (reference)" in header
    assert "| **5.00** |" in row  # keyval: 1 GB in 0.2 s
    assert row.endswith("| peer | 2.00x |")


def test_time_only_cases_compare_lower_as_faster(tmp_path):
    layer = fake_layer(
        tmp_path,
        [fake_benchmark("g", "keyval", 0.002), fake_benchmark("g", "peer", 0.004)],
        [goal(1.5)],
    )

    (line,) = goal_lines(layer)

    assert "ms/round" in layer_table(layer)[2]
    assert line.startswith("- **met**") and "**2.00x**" in line
