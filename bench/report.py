"""The benchmark driver: ``python -m bench.report --quick|--full [--only wal,db]``.

1. Describes and measures the machine first (CPU, cores, kernel, the file system under
   ``--results-dir``, live fsync latency of 4 KiB overwrite/append + ``fdatasync``).
2. Runs each suite ``bench/test_<layer>.py`` in its own pytest process with pytest-benchmark
   saving JSON into a new run directory under ``--results-dir`` (default ``bench/results/``),
   together with the pytest log and the outcome of every case (skip reasons included).
3. Writes ``--out`` (default ``BENCHMARKS.md``): one table per layer (keyval's median and
   min-max, every peer, keyval's ratio to the best peer), the goals with met / not met computed
   from those numbers, latency percentiles, the machine, the exact command, and PNG plots in
   ``--plots-dir`` (default ``bench/plots/``; next to ``--out`` when ``--out`` is given).

Nothing in the report is typed by hand. A run that is not ``--full`` at full scale, or that
found the machine busy, carries a "provisional / noisy" banner. Exit status: 0 when every
suite ran (skipped peers are fine), 1 when a suite failed or wrote no results, 2 on usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import SCALE_ENV, SCALES, SCRATCH_ENV, SIDECAR_ENV
from keyval import diskcheck

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_OUT = REPO / "BENCHMARKS.md"
DEFAULT_RESULTS = BENCH / "results"
DEFAULT_PLOTS = BENCH / "plots"
# Layers in the order the report shows them; suites not listed follow alphabetically.
LAYER_ORDER = ("wal", "db", "raft_storage", "raft", "cluster")
KEYVAL = "keyval"
# Load average per core at the start above which the run is flagged as noisy.
BUSY_LOAD_PER_CORE = 0.3
# Share of the machine's CPU time (steal included) used by anything but this run above which
# the run is flagged as noisy.
BUSY_OTHERS_SHARE = 0.1
# fsync latency at the end of the run this many times higher or lower than at the start means
# the disk was shared (CPU accounting cannot see another process's fsyncs). p99 varies more.
FSYNC_DRIFT_FACTORS = {"p50_ms": 2.0, "p99_ms": 3.0}
# The time a whole run may take (the Makefile's promise), per scale; a run over it says which
# suites took the time.
RUN_BUDGET_SECONDS = {"tiny": 60, "quick": 120, "full": 900}
# Seconds spent on each live fsync probe of the machine section, per scale.
MACHINE_PROBE_SECONDS = {"tiny": 0.2, "quick": 1.0, "full": 3.0}
PARAM_COLUMNS = (
    ("sync", "sync"),
    ("batch", "batch"),
    ("record_size", "record B"),
    ("key_count", "keys"),
    ("threads", "threads"),
)
LATENCY_PERCENTILES = (50, 90, 99, 99.9)


# ----------------------------------------------------------------------------------------------
# Results model


@dataclass
class Measurement:
    """One system's numbers in one group, converted from round times to the case's unit."""

    system: str
    group: str
    name: str
    unit: str
    higher_is_better: bool
    median: float
    low: float
    high: float
    rounds: int
    extra: dict
    latencies_s: list[float] | None = None

    @property
    def speed(self) -> float:
        """Larger is faster, whatever the unit (for ratios)."""
        return self.median if self.higher_is_better else 1.0 / self.median


@dataclass
class LayerResults:
    layer: str
    suite: Path
    returncode: int | None = None
    seconds: float = 0.0
    log: Path | None = None
    groups: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    cases: list[dict] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)
    problem: str | None = None


def measurement_from(bench: dict) -> Measurement:
    """Convert one pytest-benchmark entry using the extra_info conventions of :mod:`bench`."""
    extra = bench.get("extra_info", {})
    stats = bench["stats"]
    t_median, t_min, t_max = stats["median"], stats["min"], stats["max"]
    if extra.get("bytes"):
        unit, higher = "GB/s", True
        n = extra["bytes"] / 1e9
    elif extra.get("ops"):
        unit, higher = f"{extra.get('op_name', 'ops')}/s", True
        n = extra["ops"]
    else:
        unit, higher = "ms/round", False
        n = None
    if higher:
        median, low, high = n / t_median, n / t_max, n / t_min
    else:
        median, low, high = t_median * 1e3, t_min * 1e3, t_max * 1e3
    latencies = None
    if extra.get("latency") and stats.get("data"):
        latencies = sorted(stats["data"])
    # A case that names no system is keyval's own, alone in a row named after it, unless it
    # shares a group with others: then its test name tells it apart.
    system = extra.get("system") or (bench["name"] if bench.get("group") else KEYVAL)
    return Measurement(
        system=str(system),
        group=bench.get("group") or bench["name"],
        name=bench["name"],
        unit=unit,
        higher_is_better=higher,
        median=median,
        low=low,
        high=high,
        rounds=stats["rounds"],
        extra=extra,
        latencies_s=latencies,
    )


def load_layer(layer: LayerResults, json_path: Path, sidecar_path: Path) -> None:
    """Fill ``layer`` from the pytest-benchmark JSON and the conftest's sidecar."""
    if sidecar_path.exists():
        sidecar = json.loads(sidecar_path.read_text())
        layer.cases = sidecar.get("cases", [])
        layer.goals = sidecar.get("goals", [])
    if json_path.exists():
        for bench in json.loads(json_path.read_text()).get("benchmarks", []):
            m = measurement_from(bench)
            layer.groups.setdefault(m.group, {})[m.system] = m


# ----------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


@dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy CPU seconds (``/proc/stat``, steal included) and this process tree's
    own CPU seconds, at one instant: two of them tell how much CPU others used in between."""

    wall: float
    machine_busy: float | None
    own: float

    @classmethod
    def now(cls) -> CpuSnapshot:
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        busy = None
        try:
            with open("/proc/stat") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
            # user nice system idle iowait irq softirq steal (guest time is inside user).
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        return cls(wall=time.monotonic(), machine_busy=busy, own=own)


def others_cpu_share(start: CpuSnapshot, end: CpuSnapshot, cores: int) -> float | None:
    """Share of the machine's CPU capacity used by other processes (or stolen by the
    hypervisor) between two snapshots; None where /proc/stat is unavailable."""
    if start.machine_busy is None or end.machine_busy is None:
        return None
    capacity = (end.wall - start.wall) * cores
    others = (end.machine_busy - start.machine_busy) - (end.own - start.own)
    return max(0.0, others / capacity) if capacity > 0 else None


def measure_machine(scratch: Path, probe_seconds: float) -> dict:
    """What the numbers were measured on, including live fsync latencies in ``scratch``."""
    overwrite = diskcheck.LatencySummary.of(
        diskcheck.fsync_latencies(scratch, "overwrite", probe_seconds)
    )
    append = diskcheck.LatencySummary.of(
        diskcheck.fsync_latencies(scratch, "append", probe_seconds)
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "filesystem": diskcheck.filesystem_of(scratch),
        "bench_dir": str(scratch),
        "fsync_overwrite": overwrite.__dict__,
        "fsync_append": append.__dict__,
        "load_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": _git_revision(),
    }


# ----------------------------------------------------------------------------------------------
# Running the suites


def discover_suites(bench_dir: Path = BENCH) -> dict[str, Path]:
    """``{layer: bench/test_<layer>.py}`` in report order."""
    found = {p.stem.removeprefix("test_"): p for p in bench_dir.glob("test_*.py")}
    order = [layer for layer in LAYER_ORDER if layer in found]
    order += sorted(layer for layer in found if layer not in LAYER_ORDER)
    return {layer: found[layer] for layer in order}


def run_suite(layer: LayerResults, run_dir: Path, scale: str, scratch: Path) -> None:
    """Run one suite in its own pytest process; its JSON, sidecar and log go in ``run_dir``."""
    json_path = run_dir / f"{layer.layer}.json"
    sidecar_path = run_dir / f"{layer.layer}.cases.json"
    layer.log = run_dir / f"{layer.layer}.log"
    env = dict(os.environ)
    env[SCALE_ENV] = scale
    env[SCRATCH_ENV] = str(scratch)
    env[SIDECAR_ENV] = str(sidecar_path)
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(layer.suite),
        "--benchmark-enable",
        f"--benchmark-json={json_path}",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rsf",
    ]
    start = time.monotonic()
    with open(layer.log, "w") as log:
        log.write(shlex.join(command) + "\n\n")
        log.flush()
        completed = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=log)
    layer.seconds = time.monotonic() - start
    layer.returncode = completed.returncode
    load_layer(layer, json_path, sidecar_path)
    if completed.returncode not in (0, 5):
        failed = [c for c in layer.cases if c["outcome"] == "failed"]
        layer.problem = (
            f"pytest exited {completed.returncode}; {len(failed)} case(s) failed (log: {layer.log})"
        )
    elif not layer.groups:
        layer.problem = "no benchmark ran (every case skipped)"


# ----------------------------------------------------------------------------------------------
# Formatting


def fmt(value: float) -> str:
    """A table number: whole with thousands separators from 100 up, three significant figures
    below (never scientific notation)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def describe_params(extra: dict) -> str:
    """The parameters of a number, in words, e.g. ``sync=always, batch=1, record=100 B``."""
    parts = []
    for key, label in PARAM_COLUMNS:
        value = extra.get(key, "-")
        unit = " B" if key == "record_size" and isinstance(value, int | float) else ""
        parts.append(f"{label.split()[0]}={value}{unit}")
    return ", ".join(parts)


def _peer_systems(layer: LayerResults) -> list[str]:
    seen: dict[str, None] = {}
    for systems in layer.groups.values():
        for system in systems:
            if system != KEYVAL:
                seen.setdefault(system, None)
    for case in layer.cases:
        system = case.get("system")
        if system and system != KEYVAL and case["outcome"] != "passed":
            seen.setdefault(system, None)
    return list(seen)


def best_peer(systems: dict[str, Measurement]) -> Measurement | None:
    """The fastest peer; references (ceilings such as a bare read) are not peers."""
    peers = [m for s, m in systems.items() if s != KEYVAL and not m.extra.get("reference")]
    return max(peers, key=lambda m: m.speed) if peers else None


def _reference_systems(layer: LayerResults) -> set[str]:
    return {
        m.system
        for systems in layer.groups.values()
        for m in systems.values()
        if m.extra.get("reference")
    }


def layer_table(layer: LayerResults) -> list[str]:
    peers = _peer_systems(layer)
    references = _reference_systems(layer)
    header = (
        ["case"]
        + [label for _, label in PARAM_COLUMNS]
        + ["unit", "rounds", "keyval median", "keyval min-max"]
        + [f"{p} (reference)" if p in references else p for p in peers]
        + ["best peer", "keyval / best"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, systems in layer.groups.items():
        any_m = systems.get(KEYVAL) or next(iter(systems.values()))
        kv = systems.get(KEYVAL)
        best = best_peer(systems)
        case = group + (f" ({any_m.extra['detail']})" if any_m.extra.get("detail") else "")
        row = [case.replace("|", "\\|")]
        row += [str(any_m.extra.get(key, "-")) for key, _ in PARAM_COLUMNS]
        row.append(any_m.unit)
        row.append(str(any_m.rounds))
        row.append(f"**{fmt(kv.median)}**" if kv else "not run")
        row.append(f"{fmt(kv.low)} - {fmt(kv.high)}" if kv else "-")
        row += [fmt(systems[p].median) if p in systems else "-" for p in peers]
        row.append(best.system if best else "-")
        row.append(f"{kv.speed / best.speed:.2f}x" if kv and best else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def absolute_goal_line(goal: dict, value) -> str:
    if value is None:
        return (
            f"- **not measured**: {goal['text']} (no result for {goal['system']} in "
            f"'{goal['group']}')"
        )
    verdict = "met" if value.median >= goal["at_least"] else "NOT MET"
    return (
        f"- **{verdict}**: {goal['text']}: {goal['system']} **{fmt(value.median)} {value.unit}**"
        f" ({describe_params(value.extra)}; goal {goal['at_least']:g} {value.unit})"
    )


def goal_lines(layer: LayerResults) -> list[str]:
    lines = []
    for goal in layer.goals:
        value = layer.groups.get(goal["group"], {}).get(goal["system"])
        if goal.get("at_least") is not None:
            lines.append(absolute_goal_line(goal, value))
            continue
        base = layer.groups.get(goal["baseline_group"], {}).get(goal["baseline_system"])
        if value is None or base is None:
            missing = [
                f"{s} in '{g}'"
                for s, g, m in (
                    (goal["system"], goal["group"], value),
                    (goal["baseline_system"], goal["baseline_group"], base),
                )
                if m is None
            ]
            lines.append(
                f"- **not measured**: {goal['text']} (no result for {' and '.join(missing)})"
            )
            continue
        ratio = value.speed / base.speed
        verdict = "met" if ratio >= goal["factor"] else "NOT MET"
        lines.append(
            f"- **{verdict}**: {goal['text']}: {goal['system']} {fmt(value.median)} {value.unit}"
            f" ({describe_params(value.extra)}) vs {goal['baseline_system']}"
            f" {fmt(base.median)} {base.unit} ({describe_params(base.extra)})"
            f" = **{ratio:.2f}x** (goal {goal['factor']:g}x)"
        )
    return lines


def latency_lines(layer: LayerResults) -> list[str]:
    lines: list[str] = []
    for group, systems in layer.groups.items():
        with_latency = [m for m in systems.values() if m.latencies_s]
        if not with_latency:
            continue
        with_latency.sort(key=lambda m: (m.system != KEYVAL, m.system))
        lines += [
            "",
            f"Per-operation latency, {group} ({describe_params(with_latency[0].extra)}), "
            "microseconds, one operation per round:",
            "",
            "| system | ops | " + " | ".join(f"p{p:g}" for p in LATENCY_PERCENTILES) + " | max |",
            "|---|---|" + "---|" * (len(LATENCY_PERCENTILES) + 1),
        ]
        for m in with_latency:
            cells = [fmt(diskcheck.percentile(m.latencies_s, p) * 1e6) for p in LATENCY_PERCENTILES]
            cells.append(fmt(m.latencies_s[-1] * 1e6))
            lines.append(f"| {m.system} | {len(m.latencies_s)} | " + " | ".join(cells) + " |")
    # Cases of many concurrent operations per round measure each operation's time themselves.
    for group, systems in layer.groups.items():
        measured = sorted(
            (m for m in systems.values() if "p50_ms" in m.extra),
            key=lambda m: (m.system != KEYVAL, m.system),
        )
        if not measured:
            continue
        lines += [
            "",
            f"Per-operation latency measured by the suite, {group} "
            f"({describe_params(measured[0].extra)}), milliseconds:",
            "",
            "| system | p50 | p99 |",
            "|---|---|---|",
        ]
        for m in measured:
            lines.append(f"| {m.system} | {fmt(m.extra['p50_ms'])} | {fmt(m.extra['p99_ms'])} |")
    return lines


def method_lines(layer: LayerResults) -> list[str]:
    """Per system, each way it was driven and the groups that used it."""
    methods: dict[str, dict[str, list[str]]] = {}
    for group, systems in layer.groups.items():
        for m in systems.values():
            if m.extra.get("method"):
                methods.setdefault(m.system, {}).setdefault(m.extra["method"], []).append(group)
    lines = []
    for system, by_method in sorted(methods.items(), key=lambda kv: (kv[0] != KEYVAL, kv[0])):
        lines.append(f"- **{system}**")
        for method, groups in by_method.items():
            lines.append(f"  - {method} ({'; '.join(groups)})")
    return lines


def skip_lines(layer: LayerResults) -> list[str]:
    reasons: dict[tuple[str, str], list[str]] = {}
    for case in layer.cases:
        if case["outcome"] in ("skipped", "failed"):
            reasons.setdefault((case["outcome"], case["reason"]), []).append(case["nodeid"])
    lines = []
    for (outcome, reason), nodeids in reasons.items():
        example = nodeids[0].split("::")[-1]
        lines.append(f"- {outcome} ({len(nodeids)} case(s), e.g. `{example}`): {reason}")
    return lines


# ----------------------------------------------------------------------------------------------
# Plots


def draw_plots(layers: list[LayerResults], plots_dir: Path) -> tuple[list[tuple[str, Path]], str]:
    """Draw every plot the results support; return ``([(title, png)], note)``.

    ``note`` says why plots are missing (matplotlib absent, no data).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"matplotlib is not importable ({exc}): no plots drawn (pip install matplotlib)."
    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.png"):
        stale.unlink()
    drawn: list[tuple[str, Path]] = []

    # Line plots requested by the suites (extra_info "plot" / "plot_x"), plus db get rate vs
    # key count from any db case that names "get" and states a numeric key count.
    lines: dict[str, dict[str, list[tuple[float, Measurement]]]] = {}
    for layer in layers:
        for systems in layer.groups.values():
            for m in systems.values():
                name, x_key = m.extra.get("plot"), m.extra.get("plot_x")
                if not name and layer.layer == "db" and "get" in (m.group + m.name).lower():
                    name, x_key = "db_get_rate_vs_keys", "key_count"
                if name and isinstance(m.extra.get(x_key), int | float):
                    lines.setdefault(f"{name}|{x_key}", {}).setdefault(m.system, []).append(
                        (m.extra[x_key], m)
                    )
    for key, series in lines.items():
        name, x_key = key.split("|")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sample = None
        for system, points in sorted(series.items(), key=lambda kv: (kv[0] != KEYVAL, kv[0])):
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            ys = [p[1].median for p in points]
            sample = points[0][1]
            ax.plot(xs, ys, marker="o", linewidth=2.5 if system == KEYVAL else 1.2, label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{sample.unit} (median)")
        # Only what every series shares belongs in the subtitle (e.g. not one peer's sync mode).
        every = [m for points in series.values() for _, m in points]
        other = {
            k: v
            for k, v in sample.extra.items()
            if k in dict(PARAM_COLUMNS) and k != x_key and all(m.extra.get(k) == v for m in every)
        }
        title = f"{name.replace('_', ' ')}"
        ax.set_title(f"{title}\n" + ", ".join(f"{k}={v}" for k, v in other.items()), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = plots_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        drawn.append((title, path))

    for layer in layers:
        for group, systems in layer.groups.items():
            with_latency = [m for m in systems.values() if m.latencies_s]
            if not with_latency:
                continue
            with_latency.sort(key=lambda m: (m.system != KEYVAL, m.system))
            fig, ax = plt.subplots(figsize=(7, 4.5))
            width = 0.8 / len(LATENCY_PERCENTILES)
            for i, p in enumerate(LATENCY_PERCENTILES):
                values = [diskcheck.percentile(m.latencies_s, p) * 1e6 for m in with_latency]
                xs = [j + i * width for j in range(len(with_latency))]
                ax.bar(xs, values, width, label=f"p{p:g}")
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(with_latency))])
            ax.set_xticklabels([m.system for m in with_latency], rotation=15, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("latency per operation (µs)")
            ax.set_title(
                f"{layer.layer}: {group}\n{describe_params(with_latency[0].extra)}", fontsize=9
            )
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8)
            slug = re.sub(r"[^a-z0-9]+", "_", f"{layer.layer} latency {group}".lower()).strip("_")
            path = plots_dir / f"{slug}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            drawn.append((f"{layer.layer} latency percentiles, {group}", path))
    return drawn, "" if drawn else "no results to plot."


# ----------------------------------------------------------------------------------------------
# The report


def provisional_reasons(
    scale: str, full: bool, machine: dict, others_share: float | None, layers: list[LayerResults]
) -> list[str]:
    reasons = []
    if not full or scale != "full":
        reasons.append(f"not a full run (scale={scale}: small sizes, few rounds)")
    cores = machine["cores"] or 1
    load = machine["load_at_start"]
    if load and load[0] > BUSY_LOAD_PER_CORE * cores:
        reasons.append(
            f"machine busy when the run started (1-min load average {load[0]:.2f} on {cores} cores)"
        )
    if others_share is not None and others_share > BUSY_OTHERS_SHARE:
        reasons.append(
            f"other processes (or the hypervisor) used {others_share:.0%} of the machine's CPU "
            "during the run"
        )
    drifts = []
    for key, factor in FSYNC_DRIFT_FACTORS.items():
        start = machine["fsync_overwrite"][key]
        end = machine.get("fsync_overwrite_at_end", {}).get(key, start)
        if max(start, end) > factor * min(start, end):
            drifts.append(
                f"{key[:3]} {start * 1e3:,.0f} µs at the start, {end * 1e3:,.0f} µs at the end"
            )
    if drifts:
        reasons.append(
            f"fsync latency changed during the run (4 KiB overwrite {'; '.join(drifts)}): "
            "the disk was shared"
        )
    for layer in layers:
        if layer.groups and not any(KEYVAL in systems for systems in layer.groups.values()):
            reasons.append(f"{layer.layer}: keyval itself did not run (see skipped cases)")
    return reasons


def render(
    *,
    command: str,
    scale: str,
    machine: dict,
    layers: list[LayerResults],
    missing_layers: list[str],
    plots: list[tuple[str, Path]],
    plot_note: str,
    reasons: list[str],
    others_share: float | None,
    out: Path,
    started: datetime,
    seconds: float,
    run_dir: Path,
) -> str:
    md = ["# keyval benchmarks", ""]
    if reasons:
        md += [
            "> **PROVISIONAL / NOISY: do not quote these numbers.** "
            + " ".join(f"({i + 1}) {r}." for i, r in enumerate(reasons)),
            "",
        ]
    md += [
        "Generated by `bench/report.py`; every number below comes from this run. Reproduce with:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Run started {started.isoformat(timespec='seconds')}, took {seconds:.0f} s, "
        f"scale `{scale}`, revision {machine['git']}. Raw pytest-benchmark JSON and logs: "
        f"`{_display_path(run_dir)}`.",
        "",
        *budget_lines(scale, seconds, layers),
        "Rates are medians over rounds (the table also gives keyval's slowest and fastest round),"
        " in the unit of the row. *keyval / best* is keyval's rate divided by the best peer's"
        " in the same group: above 1 keyval is faster. Systems in one group ran the same records"
        " with the same durability promise (see *How each system was driven*).",
        "",
        "## Machine",
        "",
    ]
    fs = machine["filesystem"]
    mem = machine["memory_gib"]
    md += [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable)"
        + (f", {mem:.1f} GiB RAM" if mem else ""),
        f"- Kernel: {machine['kernel']}; Python {machine['python']}",
        f"- Bench directory file system: {fs['type']} on {fs['device']} (mounted at "
        f"{fs['mount_point']}, options {fs['options'] or '-'})",
    ]
    for label, key in (
        ("4 KiB overwrite + fdatasync (pre-written file)", "fsync_overwrite"),
        ("4 KiB append + fdatasync (growing file)", "fsync_append"),
    ):
        s = machine[key]
        md.append(
            f"- fsync latency, {label}, measured live ({s['count']} samples, sync=fdatasync, "
            f"batch=1, record=4096 B, keys=-): p50 {fmt(s['p50_ms'] * 1e3)} µs, "
            f"p99 {fmt(s['p99_ms'] * 1e3)} µs, max {fmt(s['max_ms'] * 1e3)} µs"
        )
    if "fsync_overwrite_at_end" in machine:
        s = machine["fsync_overwrite_at_end"]
        md.append(
            f"- fsync latency, 4 KiB overwrite + fdatasync, measured again at the end "
            f"({s['count']} samples, sync=fdatasync, batch=1, record=4096 B, keys=-): "
            f"p50 {fmt(s['p50_ms'] * 1e3)} µs, p99 {fmt(s['p99_ms'] * 1e3)} µs, "
            f"max {fmt(s['max_ms'] * 1e3)} µs"
        )
    if machine["load_at_start"]:
        md.append(
            "- Load average at start: " + ", ".join(f"{x:.2f}" for x in machine["load_at_start"])
        )
    if others_share is not None:
        md.append(
            f"- CPU used by other processes or stolen by the hypervisor during the run: "
            f"{others_share:.1%} of the machine (the run is flagged noisy above "
            f"{BUSY_OTHERS_SHARE:.0%})"
        )
    md.append("")

    for layer in layers:
        md += [f"## {layer.layer}", ""]
        md.append(
            f"Suite `{_display_path(layer.suite)}`, ran in {layer.seconds:.0f} s"
            + (f". **Problem: {layer.problem}**" if layer.problem else "")
            + "."
        )
        md.append("")
        if layer.groups:
            md += layer_table(layer)
        goals = goal_lines(layer)
        if goals:
            md += ["", "### Goals", "", *goals]
        latency = latency_lines(layer)
        if latency:
            md += ["", "### Latency", *latency]
        methods = method_lines(layer)
        if methods:
            md += ["", "### How each system was driven", "", *methods]
        skips = skip_lines(layer)
        if skips:
            md += ["", "### Skipped or failed cases", "", *skips]
        md.append("")

    for layer in missing_layers:
        md += [f"## {layer}", "", f"No suite `bench/test_{layer}.py` yet: nothing measured.", ""]

    md += ["## Plots", ""]
    if plot_note:
        md += [f"- {plot_note}"]
    for title, path in plots:
        md += [f"![{title}]({os.path.relpath(path, out.parent)})", ""]
    if not any(layer.layer == "cluster" for layer in layers):
        md += ["- Cluster throughput vs client count: not measured yet (no cluster suite)."]
    md.append("")
    return "\n".join(md)


def budget_lines(scale: str, seconds: float, layers: list[LayerResults]) -> list[str]:
    """A warning paragraph when the run took longer than its scale's budget, else nothing."""
    budget = RUN_BUDGET_SECONDS[scale]
    if seconds <= budget:
        return []
    per_suite = ", ".join(f"{layer.layer} {layer.seconds:.0f} s" for layer in layers)
    return [
        f"**Over budget:** a {scale} run should take at most {budget} s; this one took "
        f"{seconds:.0f} s ({per_suite}).",
        "",
    ]


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _command_line(argv: list[str]) -> str:
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k == SCALE_ENV]
    env += [
        f"{k}={shlex.quote(v)}"
        for k, v in sorted(os.environ.items())
        if k.startswith("KEYVAL_BENCH_") and k not in (SCALE_ENV, SCRATCH_ENV, SIDECAR_ENV)
    ]
    return " ".join([*env, "python -m bench.report", *map(shlex.quote, argv)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Run keyval's benchmark suites side by side with their peers and write "
        "BENCHMARKS.md.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="small sizes (< 2 min)")
    mode.add_argument("--full", action="store_true", help="full sizes (< 15 min on 2 cores)")
    parser.add_argument("--only", help="comma-separated layers to run, e.g. wal,db")
    parser.add_argument("--out", type=Path, help=f"report path (default {DEFAULT_OUT.name})")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where run directories (JSON, logs, scratch) go (default bench/results)",
    )
    parser.add_argument(
        "--plots-dir",
        type=Path,
        help="where PNG plots go (default bench/plots, or plots/ next to --out)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the suites and write the report; see the module docstring for the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    # --quick/--full choose the size; KEYVAL_BENCH_SCALE (e.g. "tiny" in tests) overrides it.
    scale = os.environ.get(SCALE_ENV) or ("full" if args.full else "quick")
    if scale not in SCALES:
        parser.error(f"{SCALE_ENV}={scale!r}: expected one of {', '.join(SCALES)}")
    suites = discover_suites()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(suites)
    unknown = [w for w in wanted if w not in suites and w not in LAYER_ORDER]
    if unknown:
        parser.error(f"unknown layer(s) {', '.join(unknown)}; known: {', '.join(suites)}")
    out = (args.out or DEFAULT_OUT).resolve()
    plots_dir = (args.plots_dir or (out.parent / "plots" if args.out else DEFAULT_PLOTS)).resolve()

    started = datetime.now(UTC)
    t0 = time.monotonic()
    cpu_at_start = CpuSnapshot.now()
    run_dir = args.results_dir.resolve() / f"{started:%Y%m%dT%H%M%SZ}-{scale}"
    scratch = run_dir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        print(f"bench: measuring the machine (scratch {scratch}) ...", flush=True)
        machine = measure_machine(scratch, MACHINE_PROBE_SECONDS[scale])
        (run_dir / "machine.json").write_text(json.dumps(machine, indent=2))
        layers = []
        for name in wanted:
            if name not in suites:
                continue
            layer = LayerResults(layer=name, suite=suites[name])
            print(f"bench: running {_display_path(layer.suite)} (scale {scale}) ...", flush=True)
            run_suite(layer, run_dir, scale, scratch)
            ran = sum(len(s) for s in layer.groups.values())
            skipped = sum(1 for c in layer.cases if c["outcome"] == "skipped")
            print(
                f"bench: {name}: {ran} measured, {skipped} skipped in {layer.seconds:.0f} s"
                + (f" -- {layer.problem}" if layer.problem else ""),
                flush=True,
            )
            layers.append(layer)
        machine["fsync_overwrite_at_end"] = diskcheck.LatencySummary.of(
            diskcheck.fsync_latencies(scratch, "overwrite", MACHINE_PROBE_SECONDS[scale])
        ).__dict__
        (run_dir / "machine.json").write_text(json.dumps(machine, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    others_share = others_cpu_share(cpu_at_start, CpuSnapshot.now(), machine["cores"] or 1)
    plots, plot_note = draw_plots(layers, plots_dir)
    reasons = provisional_reasons(scale, args.full, machine, others_share, layers)
    text = render(
        command=_command_line(argv),
        scale=scale,
        machine=machine,
        layers=layers,
        missing_layers=[w for w in wanted if w not in suites],
        plots=plots,
        plot_note=plot_note,
        reasons=reasons,
        others_share=others_share,
        out=out,
        started=started,
        seconds=time.monotonic() - t0,
        run_dir=run_dir,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    elapsed = time.monotonic() - t0
    print(f"bench: wrote {out} in {elapsed:.0f} s", flush=True)
    if elapsed > RUN_BUDGET_SECONDS[scale]:
        print(
            f"bench: over the {scale} budget of {RUN_BUDGET_SECONDS[scale]} s: "
            + ", ".join(f"{layer.layer} {layer.seconds:.0f} s" for layer in layers),
            flush=True,
        )
    if reasons:
        print("bench: report is marked PROVISIONAL: " + "; ".join(reasons), flush=True)
    failed = [layer for layer in layers if layer.problem and layer.returncode not in (0, 5)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
