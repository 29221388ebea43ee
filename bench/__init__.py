"""keyval's benchmarks: pytest-benchmark suites (``bench/test_<layer>.py``) and their driver.

Run everything with ``python -m bench.report --quick`` (or ``--full``); the driver runs each
suite in its own pytest process, saves pytest-benchmark's JSON under ``bench/results/`` and
writes ``BENCHMARKS.md``. This module holds what the suites and the driver agree on.

Conventions a suite follows so the driver can report it
-------------------------------------------------------
- One ``bench/test_<layer>.py`` per layer; the layer name (``wal``, ``db``, ...) is what
  ``--only`` selects and what titles its table.
- Every case calls ``benchmark.pedantic`` (explicit rounds keep the run time predictable) with
  ``group=`` set to the comparison: every system measured in one group ran the same data with
  the same durability promise, so ratios are computed within a group only.
- ``benchmark.extra_info`` keys (all optional except ``system``):

  ``system``       who was measured: ``"keyval"`` or a peer's name (a column of the table)
  ``ops``          operations per round: the driver reports ops/s = ops / round time
  ``bytes``        bytes processed per round: the driver reports GB/s instead of ops/s
  ``op_name``      what one op is, e.g. ``"records"`` or ``"gets"`` (the unit becomes records/s)
  ``sync``, ``batch``, ``record_size``, ``key_count``, ``threads``
                   the parameters of the case; the report states all of them for every number
  ``method``       one line on how the system was driven (the report's legend)
  ``detail``       a few words appended to the case's row, e.g. the size of the data set
  ``reference``    True for a yardstick that is not a peer (e.g. reading the bytes with no
                   parsing: a ceiling); shown, but never the "best peer" keyval is compared to
  ``latency``      True when each round is exactly one operation: the driver then reports
                   per-operation latency percentiles and plots them
  ``p50_ms``, ``p99_ms``
                   per-operation latency the case measured itself (when a round holds many
                   concurrent operations, e.g. cluster puts); shown in the layer's latency table
  ``plot``, ``plot_x``
                   put this case on the line plot named ``plot`` with x = ``extra_info[plot_x]``
                   (one line per system), e.g. ``plot="wal_throughput_vs_batch", plot_x="batch"``
- Performance goals are declared, never asserted: a module-level ``BENCH_GOALS: list[Goal]``
  is collected by ``bench/conftest.py`` and the driver prints each with met / not met.
- Sizes come from :func:`scale` (env ``KEYVAL_BENCH_SCALE=tiny|quick|full``, default quick) so
  that ``--quick`` stays under 2 minutes and ``--full`` under 15 on 2 cores.
- Scratch files go in the ``bench_dir`` fixture (a fresh directory on the file system being
  measured, removed after the case), never in the system temp dir, which may be tmpfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

SCALES = ("tiny", "quick", "full")
SCALE_ENV = "KEYVAL_BENCH_SCALE"
# Where suites put their scratch directories (the driver points it at the results dir).
SCRATCH_ENV = "KEYVAL_BENCH_DIR"
# The conftest writes goals and per-case outcomes (skips with reasons, failures) here.
SIDECAR_ENV = "KEYVAL_BENCH_SIDECAR"

T = TypeVar("T")


def scale() -> str:
    """The size class of this run: ``"tiny"`` (tests), ``"quick"`` or ``"full"``.

    Raises ``ValueError`` for an unknown value so a typo never silently runs the wrong size.
    """
    value = os.environ.get(SCALE_ENV, "quick")
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV}={value!r}: expected one of {', '.join(SCALES)}")
    return value


def by_scale(*, tiny: T, quick: T, full: T) -> T:
    """Pick the value for the current :func:`scale`."""
    return {"tiny": tiny, "quick": quick, "full": full}[scale()]


@dataclass(frozen=True)
class Goal:
    """A performance target: ``system``'s median rate in ``group`` must be at least ``factor``
    times ``baseline_system``'s median rate in ``baseline_group`` (rates: higher is better), or,
    for an absolute target, at least ``at_least`` in the group's own unit.

    ``text`` is the goal as the issue states it. The driver reports met / not met / not
    measured; no test ever asserts a goal, because a noisy machine must not fail a build.
    """

    text: str
    group: str
    baseline_system: str | None = None
    factor: float = 1.0
    system: str = "keyval"
    baseline_group: str | None = None  # None: the same group
    at_least: float | None = None  # an absolute target instead of a baseline

    def __post_init__(self) -> None:
        if (self.baseline_system is None) == (self.at_least is None):
            raise ValueError(f"goal {self.text!r}: give a baseline_system or at_least, not both")

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "group": self.group,
            "system": self.system,
            "baseline_group": self.baseline_group or self.group,
            "baseline_system": self.baseline_system,
            "factor": self.factor,
            "at_least": self.at_least,
        }
