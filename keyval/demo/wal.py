"""``keyval demo wal``: the write-ahead log alone, under load and through a crash.

1. Measures append throughput in each durability mode on this disk (100-byte records).
2. Starts a child process appending durably, kills it with SIGKILL mid-stream, reopens the
   log, and checks that every record the child had acknowledged is there, intact.
3. Runs the integrity checker on the result.

Data goes to ``./data/demo-wal`` (removed first).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from keyval.fsck import check_path
from keyval.wal import WAL

RECORD = b"r" * 100
SEGMENT = 16 * 2**20


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f}"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(base: str) -> list[tuple[str, int, float]]:
    """(case, records, seconds) for each append mode."""
    rows = []

    def run(name, sync, body, n):
        path = os.path.join(base, name.split()[0])
        with WAL(path, segment_size=SEGMENT, sync=sync) as wal:
            rows.append((name, n, _timed(lambda: body(wal))))

    def buffered(wal):
        for _ in range(200_000):
            wal.append(RECORD)
        wal.sync()

    def durable(wal):
        for _ in range(1_000):
            wal.append(RECORD)

    def durable_threads(wal):
        def worker():
            for _ in range(500):
                wal.append(RECORD)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def batches(wal):
        for _ in range(50):
            wal.append_many([RECORD] * 1000)
            wal.sync()

    run("buffered  sync=none, then one sync", "none", buffered, 200_000)
    run("durable   sync=always, 1 thread", "always", durable, 1_000)
    run("grouped   sync=always, 8 threads", "always", durable_threads, 4_000)
    run("batched   append_many(1000) + sync", "none", batches, 50_000)
    with WAL(os.path.join(base, "buffered"), segment_size=SEGMENT) as wal:
        rows.append(
            ("replay    CRC-checked read back", 200_000, _timed(lambda: list(wal.replay())))
        )
    return rows


CHILD = """
import os, sys
from keyval.wal import WAL
wal = WAL(sys.argv[1], segment_size=1 << 20, sync="always")
n = 0
while True:
    seq = wal.append(b"demo-%d" % n + b"." * (n % 200))
    os.write(1, b"%d %d\\n" % (seq, n))
    n += 1
"""


def crash(path: str, acks_before_kill: int) -> dict:
    """Kills an appending child after `acks_before_kill` acknowledgements; verifies the log."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE)
    acked = {}
    for line in child.stdout:
        seq, n = map(int, line.split())
        acked[seq] = n
        if len(acked) >= acks_before_kill:
            break
    child.send_signal(signal.SIGKILL)
    for line in child.stdout.read().splitlines():  # acknowledged between our read and the kill
        seq, n = map(int, line.split())
        acked[seq] = n
    child.wait()
    t = time.perf_counter()
    with WAL(path, segment_size=1 << 20) as wal:
        reopen = time.perf_counter() - t
        records = {seq: payload for seq, _, payload in wal.replay()}
        torn = wal.torn_tail
    missing = [s for s, n in acked.items() if records.get(s, b"").split(b".")[0] != b"demo-%d" % n]
    return {
        "acknowledged": len(acked),
        "on_disk": len(records),
        "missing": missing,
        "reopen_ms": reopen * 1000,
        "torn_bytes": torn[2] if torn else 0,
    }


def main(base: str = os.path.join("data", "demo-wal")) -> int:
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    print("keyval demo: the write-ahead log on this disk\n")
    print(f"{'case (100-byte records)':<38}{'records':>10}{'records/s':>13}{'MB/s':>8}")
    for name, n, secs in measure(base):
        mb = n * len(RECORD) / secs / 1e6
        print(f"{name:<38}{n:>10,}{_rate(n, secs)}{mb:>8.1f}")

    print("\ncrash test: a child appends with sync='always'; we SIGKILL it mid-stream")
    crash_dir = os.path.join(base, "crash")
    ok = True
    for round_no in range(3):
        r = crash(crash_dir, random.randrange(200, 2000))
        verdict = "all present" if not r["missing"] else f"MISSING {r['missing'][:5]}"
        ok &= not r["missing"]
        print(
            f"  round {round_no + 1}: killed after {r['acknowledged']:,} acknowledged appends; "
            f"reopened in {r['reopen_ms']:.1f} ms with {r['on_disk']:,} records "
            f"(torn tail cut: {r['torn_bytes']} bytes): {verdict}"
        )
    report = check_path(crash_dir)
    print(f"\nfsck {crash_dir}: {'clean' if report.exit_code == 0 else report.to_dict()}")
    ok &= report.exit_code == 0
    print("\nOK: every acknowledged write survived" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
