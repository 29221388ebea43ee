"""Is this disk fit for keyval? ``keyval bench DIR``, in the spirit of ``etcdctl check perf``.

keyval acknowledges a write only after ``fdatasync``, so the latency of that call bounds every
durable operation. The check measures, in scratch files inside ``DIR`` (removed afterwards):

1. fsync latency of 4 KiB ``pwrite`` + ``fdatasync`` overwriting a pre-written file
   (data-only flush: no metadata changes) — p50 / p90 / p99 / max;
2. the same for 4 KiB appends to a growing file (each flush also commits the new size);
3. durable appends per second: keyval's WAL with ``sync="always"`` and 100 B records when
   :mod:`keyval.wal` is importable, otherwise a raw ``os.write`` + ``fdatasync`` loop;
4. sequential write throughput: 1 MiB writes and one final ``fdatasync``.

It passes when both fsync p99 are below :data:`FSYNC_P99_LIMIT_MS` and durable appends reach
:data:`MIN_DURABLE_APPENDS_PER_S` (etcd's guidance: a p99 fsync above 10 ms makes leaders miss
heartbeats). Exit status: 0 pass, 1 fail (or the measurement itself failed), 2 usage error.
``--seconds`` bounds the total measuring time (each phase takes its share, but always at least
a few samples); ``--json`` prints one JSON object instead of the table.

The measuring functions are public because the benchmark driver reports the same numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TextIO

FSYNC_P99_LIMIT_MS = 10.0
MIN_DURABLE_APPENDS_PER_S = 500.0
DEFAULT_SECONDS = 5.0
BLOCK_SIZE = 4096
APPEND_RECORD_SIZE = 100
SEQUENTIAL_BLOCK = 1 << 20
WAL_SEGMENT_SIZE = 4 << 20
# The overwrite test cycles over this many blocks of a file written and synced beforehand.
OVERWRITE_FILE_BLOCKS = 256
# Even a tiny --seconds yields percentiles from more than one sample.
MIN_SAMPLES = 5
# Sequential writing stops early rather than eat the disk: at most this share of free space.
SEQUENTIAL_MAX_FREE_SHARE = 0.1

# Share of --seconds given to each phase, in the order they run.
PHASE_SHARES = {
    "fsync, 4 KiB overwrite": 0.3,
    "fsync, 4 KiB append": 0.3,
    "durable appends": 0.25,
    "sequential write": 0.15,
}

_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one latency sample, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        ordered = sorted(seconds)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 50) * 1e3,
            p90_ms=percentile(ordered, 90) * 1e3,
            p99_ms=percentile(ordered, 99) * 1e3,
            max_ms=ordered[-1] * 1e3,
        )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0 < q <= 100) of an ascending, non-empty list."""
    if not ordered:
        raise ValueError("percentile of no samples")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def filesystem_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """The mount holding ``path``: ``{"type", "device", "mount_point", "options"}``
    (``"unknown"`` fields where ``/proc/mounts`` is not available)."""
    real = os.path.realpath(path)
    best = {"type": "unknown", "device": "unknown", "mount_point": "unknown", "options": ""}
    best_len = -1
    try:
        with open("/proc/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        # /proc/mounts escapes blanks in mount points as octal (\040).
        mount_point = fields[1].encode().decode("unicode_escape")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > best_len:
            best_len = len(mount_point)
            best = {
                "type": fields[2],
                "device": fields[0],
                "mount_point": mount_point,
                "options": fields[3],
            }
    return best


def _timed_loop(
    step: Callable[[], None], seconds: float, progress: ProgressCallback | None
) -> list[float]:
    """Run ``step`` until ``seconds`` have passed (and at least MIN_SAMPLES times)."""
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    while True:
        t0 = clock()
        step()
        t1 = clock()
        latencies.append(t1 - t0)
        if t1 >= deadline and len(latencies) >= MIN_SAMPLES:
            break
        if progress is not None:
            progress(min(1.0, (t1 - start) / seconds) if seconds > 0 else 1.0)
    return latencies


def fsync_latencies(
    directory: str | os.PathLike[str],
    mode: Literal["overwrite", "append"],
    seconds: float,
    progress: ProgressCallback | None = None,
) -> list[float]:
    """Latencies (seconds) of 4 KiB writes each followed by ``fdatasync``, for ``seconds``.

    ``"overwrite"`` rewrites blocks of a file that was fully written and synced first, so no
    flush has to change metadata; ``"append"`` grows a new file, so each flush also commits its
    new size. The scratch file is created in ``directory`` and removed before returning.
    """
    block = os.urandom(BLOCK_SIZE)
    fd, path = tempfile.mkstemp(prefix=f"fsync-{mode}-", dir=directory)
    try:
        if mode == "overwrite":
            os.write(fd, block * OVERWRITE_FILE_BLOCKS)
            os.fsync(fd)
            offsets = iter(range(1 << 62))

            def step() -> None:
                offset = (next(offsets) % OVERWRITE_FILE_BLOCKS) * BLOCK_SIZE
                os.pwrite(fd, block, offset)
                _fdatasync(fd)

        elif mode == "append":

            def step() -> None:
                os.write(fd, block)
                _fdatasync(fd)

        else:
            raise ValueError(f"mode must be 'overwrite' or 'append', not {mode!r}")
        return _timed_loop(step, seconds, progress)
    finally:
        os.close(fd)
        os.unlink(path)


def durable_appends_per_second(
    directory: str | os.PathLike[str],
    seconds: float,
    progress: ProgressCallback | None = None,
) -> dict[str, object]:
    """Durable 100 B appends from one thread for ``seconds``:
    ``{"per_second", "count", "method"}``. Uses ``keyval.wal.WAL(sync="always")`` when it can be
    imported, else ``os.write`` + ``fdatasync``. Scratch files are removed before returning."""
    record = os.urandom(APPEND_RECORD_SIZE)
    scratch = Path(tempfile.mkdtemp(prefix="appends-", dir=directory))
    try:
        try:
            from keyval.wal import WAL
        except ImportError:
            WAL = None
        if WAL is not None:
            method = f'keyval WAL, sync="always", {APPEND_RECORD_SIZE} B records'
            # Small segments: right after open the WAL pre-writes its next segment with zeros,
            # and 64 MiB of that would swamp a measurement of a second or two.
            with WAL(str(scratch / "wal"), segment_size=WAL_SEGMENT_SIZE, sync="always") as wal:
                latencies = _timed_loop(lambda: wal.append(record), seconds, progress)
        else:
            method = f"os.write + fdatasync, {APPEND_RECORD_SIZE} B records (keyval.wal absent)"
            fd = os.open(scratch / "appends", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:

                def step() -> None:
                    os.write(fd, record)
                    _fdatasync(fd)

                latencies = _timed_loop(step, seconds, progress)
            finally:
                os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = sum(latencies)
    return {
        "per_second": len(latencies) / elapsed if elapsed > 0 else float("inf"),
        "count": len(latencies),
        "method": method,
    }


def sequential_write(
    directory: str | os.PathLike[str],
    seconds: float,
    progress: ProgressCallback | None = None,
) -> dict[str, float]:
    """Write 1 MiB blocks for ``seconds`` then ``fdatasync`` once: ``{"mb_per_s", "bytes"}``
    (MB = 10**6 bytes, time includes the final flush). Stops early at a tenth of the free
    space. The scratch file is removed before returning."""
    block = os.urandom(SEQUENTIAL_BLOCK)
    limit = int(shutil.disk_usage(directory).free * SEQUENTIAL_MAX_FREE_SHARE)
    fd, path = tempfile.mkstemp(prefix="sequential-", dir=directory)
    written = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            written += os.write(fd, block)
            now = time.perf_counter()
            if now >= deadline or written + SEQUENTIAL_BLOCK > limit:
                break
            if progress is not None:
                progress(min(1.0, (now - start) / seconds) if seconds > 0 else 1.0)
        _fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return {"mb_per_s": written / elapsed / 1e6, "bytes": written}


class ProgressBar:
    """A one-line progress bar on a terminal stream; one line per phase on anything else."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._done_share = 0.0
        self._last_draw = 0.0

    @contextlib.contextmanager
    def phase(self, name: str, share: float) -> Iterator[ProgressCallback]:
        if not self._tty:
            print(f"measuring {name} ...", file=self._stream, flush=True)

        def update(fraction: float) -> None:
            now = time.monotonic()
            if self._tty and now - self._last_draw >= 0.1:
                self._last_draw = now
                self._draw(self._done_share + share * fraction, name)

        yield update
        self._done_share += share
        if self._tty:
            self._draw(self._done_share, name)

    def finish(self) -> None:
        if self._tty:
            self._stream.write("\r" + " " * (self.WIDTH + 60) + "\r")
            self._stream.flush()

    def _draw(self, total: float, name: str) -> None:
        filled = round(self.WIDTH * min(1.0, total))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {total * 100:3.0f}% {name:<28}")
        self._stream.flush()


def run_check(directory: Path, seconds: float, progress: ProgressBar) -> dict:
    """Measure everything in a scratch directory inside ``directory``; return the report."""
    scratch = Path(tempfile.mkdtemp(prefix=".keyval-diskcheck-", dir=directory))
    shares = iter(PHASE_SHARES.items())
    try:
        name, share = next(shares)
        with progress.phase(name, share) as update:
            overwrite = LatencySummary.of(
                fsync_latencies(scratch, "overwrite", seconds * share, update)
            )
        name, share = next(shares)
        with progress.phase(name, share) as update:
            append = LatencySummary.of(fsync_latencies(scratch, "append", seconds * share, update))
        name, share = next(shares)
        with progress.phase(name, share) as update:
            appends = durable_appends_per_second(scratch, seconds * share, update)
        name, share = next(shares)
        with progress.phase(name, share) as update:
            sequential = sequential_write(scratch, seconds * share, update)
    finally:
        progress.finish()
        shutil.rmtree(scratch, ignore_errors=True)

    checks = [
        {
            "name": "fsync p99, 4 KiB overwrite",
            "value": overwrite.p99_ms,
            "unit": "ms",
            "threshold": f"< {FSYNC_P99_LIMIT_MS:g} ms",
            "passed": overwrite.p99_ms < FSYNC_P99_LIMIT_MS,
        },
        {
            "name": "fsync p99, 4 KiB append",
            "value": append.p99_ms,
            "unit": "ms",
            "threshold": f"< {FSYNC_P99_LIMIT_MS:g} ms",
            "passed": append.p99_ms < FSYNC_P99_LIMIT_MS,
        },
        {
            "name": "durable appends/s",
            "value": appends["per_second"],
            "unit": "appends/s",
            "threshold": f">= {MIN_DURABLE_APPENDS_PER_S:g}/s",
            "passed": appends["per_second"] >= MIN_DURABLE_APPENDS_PER_S,
        },
    ]
    return {
        "directory": str(directory),
        "filesystem": filesystem_of(directory),
        "seconds": seconds,
        "fsync_overwrite": asdict(overwrite),
        "fsync_append": asdict(append),
        "durable_appends": appends,
        "sequential_write": sequential,
        "checks": checks,
        "passed": all(check["passed"] for check in checks),
    }


def format_table(report: dict) -> str:
    """The human-readable report: one row per measurement, then the verdict."""
    fs = report["filesystem"]
    lines = [
        f"keyval disk check of {report['directory']} "
        f"({fs['type']} on {fs['device']}, measured for {report['seconds']:g} s)",
        "",
        f"{'fsync latency (write + fdatasync)':<36}{'n':>7}{'p50':>10}{'p90':>10}"
        f"{'p99':>10}{'max':>10}  (ms)",
    ]
    for label, key in (("4 KiB overwrite", "fsync_overwrite"), ("4 KiB append", "fsync_append")):
        s = report[key]
        lines.append(
            f"  {label:<34}{s['count']:>7}{s['p50_ms']:>10.3f}{s['p90_ms']:>10.3f}"
            f"{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}"
        )
    appends = report["durable_appends"]
    lines += [
        "",
        f"durable appends: {appends['per_second']:,.0f}/s ({appends['method']}, one thread)",
        f"sequential write: {report['sequential_write']['mb_per_s']:,.0f} MB/s "
        "(1 MiB writes, one fdatasync at the end)",
        "",
    ]
    for check in report["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        value = f"{check['value']:,.3f} {check['unit']}"
        lines.append(f"  {verdict}  {check['name']:<30} {value:>22}  (need {check['threshold']})")
    lines += ["", f"RESULT: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyval bench",
        description="Check whether the disk holding DIR is fit for keyval: fsync latency "
        "percentiles, durable appends/s and sequential write throughput.",
        epilog=f"PASS needs fsync p99 < {FSYNC_P99_LIMIT_MS:g} ms and >= "
        f"{MIN_DURABLE_APPENDS_PER_S:g} durable appends/s. Exit 0 pass, 1 fail, 2 usage error.",
    )
    parser.add_argument("dir", metavar="DIR", help="an existing directory on the disk to check")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"total measuring time in seconds (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the disk check; return 0 (pass), 1 (fail) or 2 (usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help
        return int(exc.code or 0)
    directory = Path(args.dir)
    if not directory.is_dir():
        parser.print_usage(sys.stderr)
        print(f"keyval bench: error: {args.dir} is not an existing directory", file=sys.stderr)
        return 2
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        parser.print_usage(sys.stderr)
        print("keyval bench: error: --seconds must be a positive number", file=sys.stderr)
        return 2
    try:
        report = run_check(directory, args.seconds, ProgressBar(sys.stderr))
    except OSError as exc:
        print(f"keyval bench: error: measuring {directory} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
