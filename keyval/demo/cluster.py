"""``keyval demo``: a 3-node cluster on 127.0.0.1 loses every node at once and keeps every write.

1. Starts three ``keyval serve`` processes with data under ``./data/demo`` (removed first).
2. Eight clients run a mixed workload (puts, appends, gets) with a progress bar.
3. Halfway through, every server is killed with SIGKILL at the same moment, then restarted;
   the clients keep retrying (same sequence numbers: nothing is applied twice).
4. Every acknowledged write is read back, fsck checks every data directory, and the run
   prints throughput, latency percentiles and how long the cluster took to recover.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import threading
import time

from keyval.errors import KeyvalError
from keyval.fsck import check_path
from keyval.kv.local import LocalCluster

CLIENTS = 8
SECONDS = 6.0
ROOT = os.path.join("data", "demo")


class Worker(threading.Thread):
    """One client: puts to its own keys, appends to its own log, reads back."""

    def __init__(self, cluster: LocalCluster, n: int, stop: threading.Event):
        super().__init__(name=f"client-{n}", daemon=True)
        self.n, self.stop, self.client = n, stop, cluster.client(timeout=60.0)
        self.latencies: list[float] = []
        self.started: list[float] = []  # time.monotonic() at the start of each completed call
        self.puts: dict[bytes, bytes] = {}
        self.appends: list[bytes] = []
        self.acknowledged = 0  # writes the cluster confirmed
        self.errors: list[str] = []
        self.rng = random.Random(n)

    def run(self) -> None:
        i = 0
        log_key = b"log-%d" % self.n
        while not self.stop.is_set():
            i += 1
            kind = self.rng.random()
            started = time.monotonic()
            start = time.perf_counter()
            try:
                if kind < 0.6:
                    key, value = b"c%d-k%d" % (self.n, i % 25), b"v%d" % i * 10
                    self.client.put(key, value)
                    self.puts[key] = value
                    self.acknowledged += 1
                elif kind < 0.85:
                    self.client.append(log_key, b"%d," % i)
                    self.appends.append(b"%d," % i)
                    self.acknowledged += 1
                else:
                    key = b"c%d-k%d" % (self.n, self.rng.randrange(25))
                    if self.client.get(key) != self.puts.get(key):
                        self.errors.append(f"read of {key!r} did not see the last write")
            except KeyvalError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self.latencies.append(time.perf_counter() - start)
            self.started.append(started)


def _first_done_after(workers: list[Worker], killed_at: float) -> float | None:
    """Seconds from ``killed_at`` to the end of the first call that started after it."""
    ends = []
    for w in workers:
        # Appended together, latencies last: read started first and cut to the same length.
        started = list(w.started)
        latencies = w.latencies[: len(started)]
        for at, took in zip(reversed(started), reversed(latencies), strict=False):
            if at < killed_at:
                break
            ends.append(at + took - killed_at)
    return min(ends) if ends else None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def progress(done: int, elapsed: float, total: float, note: str) -> None:
    width = 30
    filled = int(width * min(elapsed / total, 1.0))
    bar = "#" * filled + "." * (width - filled)
    sys.stdout.write(f"\r  [{bar}] {elapsed:4.1f}s {done:7,} ops  {note:<28}")
    sys.stdout.flush()


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    print("keyval demo: a 3-node cluster on 127.0.0.1 loses every node at once\n")
    with LocalCluster(ROOT, size=3) as cluster:
        cluster.start()
        elected = cluster.wait_for_leader()
        print(f"  3 nodes up, leader elected in {elected * 1000:.0f} ms ({cluster.peers})")
        stop = threading.Event()
        workers = [Worker(cluster, n, stop) for n in range(CLIENTS)]
        for w in workers:
            w.start()
        began = time.monotonic()
        killed_at = recovered_in = None
        note = f"{CLIENTS} clients writing"
        while (elapsed := time.monotonic() - began) < SECONDS:
            done = sum(len(w.latencies) for w in workers)
            if killed_at is None and elapsed >= SECONDS / 2:
                cluster.kill()  # SIGKILL, all three at the same instant
                killed_at = time.monotonic()
                note = "SIGKILL all 3 nodes; restarting"
                cluster.start()
            elif killed_at is not None and recovered_in is None:
                # Recovered: a call that started after the kill has completed. (Calls that
                # were answered just before it do not count.)
                recovered_in = _first_done_after(workers, killed_at)
                if recovered_in is not None:
                    note = f"recovered in {recovered_in * 1000:.0f} ms"
            progress(done, elapsed, SECONDS, note)
            time.sleep(0.1)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        if killed_at is not None and recovered_in is None:
            recovered_in = _first_done_after(workers, killed_at)
        total = sum(len(w.latencies) for w in workers)
        progress(total, SECONDS, SECONDS, note)
        print("\n")

        print("  checking every acknowledged write ...")
        lost = 0
        with cluster.client(timeout=30.0) as reader:
            for w in workers:
                for key, value in w.puts.items():
                    lost += reader.get(key) != value
                if (reader.get(b"log-%d" % w.n) or b"") != b"".join(w.appends):
                    lost += 1
        cluster.stop()
    acked = sum(w.acknowledged for w in workers)
    errors = [e for w in workers for e in w.errors]
    clean = [check_path(cluster.dirs[i]).exit_code == 0 for i in cluster.ids]
    latencies = [x for w in workers for x in w.latencies]
    print(f"  {acked:,} acknowledged writes across the kill: {lost} missing or changed")
    print(f"  fsck of the 3 data directories: {'all clean' if all(clean) else clean}")
    print()
    print(f"  {'operations':<24}{total:>10,}")
    print(f"  {'throughput':<24}{total / SECONDS:>10,.0f} ops/s (kill and recovery included)")
    for p in (50, 90, 99):
        print(f"  {'latency p' + str(p):<24}{percentile(latencies, p) * 1000:>10.1f} ms")
    if recovered_in is not None:
        print(
            f"  {'recovery after kill':<24}{recovered_in * 1000:>10.0f} ms "
            "(kill to the first ack of a call made after it)"
        )
    ok = lost == 0 and all(clean) and not errors
    for e in errors[:5]:
        print(f"  client error: {e}")
    print("\nOK: every acknowledged write survived" if ok else "\nFAILED")
    return 0 if ok else 1
