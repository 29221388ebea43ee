"""WAL benchmarks: keyval's ``keyval.wal.WAL`` against its peers on the same records.

Peers (adapters in :mod:`bench.peers.logs`): a pure-Python framed log, a bare ``os.write`` +
``os.fdatasync`` loop, sqlite3 (WAL mode), LMDB and RocksDB (``rocksdict``). Each group below
holds one comparison; every system in it writes the same payloads with the same durability
promise. The issue's "Speed" goals are declared in ``BENCH_GOALS`` and reported, not asserted.

Sizes follow ``KEYVAL_BENCH_SCALE`` (tiny | quick | full); ``KEYVAL_BENCH_REPLAY_BYTES``
overrides the size of the replayed log (default 1 GiB in the full run).
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench import Goal, by_scale
from bench.peers.framed_log import BUFFER_SIZE, FramedLogWriter, read_framed_log
from bench.peers.logs import (
    ALL_LOG_SYSTEMS,
    BARE_FDATASYNC,
    FRAMED_LOG,
    KEYVAL,
    ROCKSDB,
    LogStore,
    PeerUnavailable,
    await_next_segment,
    open_log_store,
)

RECORD_SIZE = 100
THREADS = 8
BATCH_SIZES = (1, 10, 100, 1000)
GOAL_BATCH = 1000
REPLAY_RECORD_SIZES = (100, 4096, 65536)
# The replay peer that only reads the framed log's bytes: the page-cache bandwidth ceiling.
RAW_READ = "read() only"

APPEND_NOSYNC_RECORDS = by_scale(tiny=1_000, quick=20_000, full=100_000)
APPEND_NOSYNC_ROUNDS = by_scale(tiny=2, quick=5, full=10)
DURABLE_ROUNDS = by_scale(tiny=10, quick=500, full=3_000)
THREADED_RECORDS_PER_THREAD = by_scale(tiny=2, quick=10, full=50)
THREADED_ROUNDS = by_scale(tiny=2, quick=10, full=30)
BATCH_ROUNDS = by_scale(tiny=2, quick=50, full=200)
REPLAY_BYTES = int(
    os.environ.get("KEYVAL_BENCH_REPLAY_BYTES")
    or by_scale(tiny=256 << 10, quick=32 << 20, full=1 << 30)
)
REPLAY_ROUNDS = by_scale(tiny=1, quick=3, full=3)

GROUP_APPEND_NOSYNC = 'append, sync="none"'
GROUP_DURABLE_ONE = 'append, sync="always", 1 thread'
GROUP_DURABLE_THREADS = f'append, sync="always", {THREADS} threads'


def group_batch(batch: int) -> str:
    return f"append_many({batch}) + sync()"


def group_replay(record_size: int) -> str:
    return f"replay, {record_size} B records"


BENCH_GOALS = [
    Goal(
        'append, sync="none": keyval >= 1.5x the pure-Python framed log\'s records/s',
        group=GROUP_APPEND_NOSYNC,
        baseline_system=FRAMED_LOG,
        factor=1.5,
    ),
    Goal(
        'sync="always", one thread: keyval >= 1.3x the bare append+fdatasync loop',
        group=GROUP_DURABLE_ONE,
        baseline_system=BARE_FDATASYNC,
        factor=1.3,
    ),
    Goal(
        f'sync="always", {THREADS} threads: keyval >= 5x its one-thread durable rate '
        "(group commit)",
        group=GROUP_DURABLE_THREADS,
        baseline_group=GROUP_DURABLE_ONE,
        baseline_system=KEYVAL,
        factor=5.0,
    ),
    Goal(
        f"append_many of {GOAL_BATCH} records then sync(): keyval >= 2x RocksDB's synced "
        f"WriteBatch of {GOAL_BATCH}",
        group=group_batch(GOAL_BATCH),
        baseline_system=ROCKSDB,
        factor=2.0,
    ),
    *(
        Goal(
            f"replay of a log from page cache, {size} B records: >= 1 GB/s, every CRC checked",
            group=group_replay(size),
            at_least=1.0,
        )
        for size in REPLAY_RECORD_SIZES
    ),
]


def payload(size: int, seed: int = 0) -> bytes:
    """The same pseudo-random (incompressible) bytes for every system."""
    return random.Random(seed).randbytes(size)


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.4g} {unit}"
    return f"{n} B"


def open_or_skip(system: str, directory: Path, *, durable: bool) -> LogStore:
    try:
        return open_log_store(system, directory, durable=durable)
    except PeerUnavailable as exc:
        pytest.skip(f"{system}: {exc}")


def note_records_per_fsync(benchmark, store: LogStore) -> None:
    """Record how many appends shared each fsync (group commit at work), where counted."""
    counted = store.fsync_stats()
    if counted and counted[1]:
        records, fsyncs = counted
        benchmark.extra_info["records_per_fsync"] = records / fsyncs
        benchmark.extra_info["detail"] = f"keyval: {records / fsyncs:.2f} records per fsync"


def params(**values: object) -> dict:
    """The parameters every number states (``-`` where one does not apply)."""
    base: dict[str, object] = {
        "sync": "-",
        "batch": "-",
        "record_size": RECORD_SIZE,
        "key_count": "-",
        "threads": 1,
        "op_name": "records",
    }
    base.update(values)
    return base


@pytest.mark.parametrize("system", ALL_LOG_SYSTEMS)
def test_append_no_sync(benchmark, bench_dir: Path, system: str) -> None:
    """Appends of 100 B records with fsync deferred: the per-record CPU cost of each log."""
    store = open_or_skip(system, bench_dir, durable=False)
    record = payload(RECORD_SIZE)
    records = APPEND_NOSYNC_RECORDS

    def append_round() -> None:
        append = store.append
        for _ in range(records):
            append(record)

    benchmark.group = GROUP_APPEND_NOSYNC
    benchmark.extra_info.update(
        params(sync="none", batch=1),
        system=system,
        ops=records,
        method=store.append_method,
    )
    try:
        benchmark.pedantic(append_round, rounds=APPEND_NOSYNC_ROUNDS, warmup_rounds=1)
    finally:
        store.close()


@pytest.mark.parametrize("system", ALL_LOG_SYSTEMS)
def test_append_durable_one_thread(benchmark, bench_dir: Path, system: str) -> None:
    """One durable append per round: the rate and the latency distribution of a lone writer."""
    store = open_or_skip(system, bench_dir, durable=True)
    record = payload(RECORD_SIZE)
    benchmark.group = GROUP_DURABLE_ONE
    benchmark.extra_info.update(
        params(sync="always", batch=1),
        system=system,
        ops=1,
        latency=True,
        method=store.append_method,
    )
    try:
        benchmark.pedantic(store.append, args=(record,), rounds=DURABLE_ROUNDS, warmup_rounds=5)
        note_records_per_fsync(benchmark, store)
    finally:
        store.close()


@pytest.mark.parametrize("system", ALL_LOG_SYSTEMS)
def test_append_durable_threads(benchmark, bench_dir: Path, system: str) -> None:
    """Eight threads appending durably at once: where group commit pays off."""
    store = open_or_skip(system, bench_dir, durable=True)
    record = payload(RECORD_SIZE)
    per_thread = THREADED_RECORDS_PER_THREAD

    def writer() -> None:
        append = store.append
        for _ in range(per_thread):
            append(record)

    # A pool made once: each round only wakes the same eight threads, so thread start-up
    # is not timed.
    with ThreadPoolExecutor(max_workers=THREADS) as pool:

        def threaded_round() -> None:
            for future in [pool.submit(writer) for _ in range(THREADS)]:
                future.result()

        benchmark.group = GROUP_DURABLE_THREADS
        benchmark.extra_info.update(
            params(sync="always", batch=1, threads=THREADS),
            system=system,
            ops=THREADS * per_thread,
            method=store.append_method,
        )
        try:
            benchmark.pedantic(threaded_round, rounds=THREADED_ROUNDS, warmup_rounds=1)
            note_records_per_fsync(benchmark, store)
        finally:
            store.close()


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("system", ALL_LOG_SYSTEMS)
def test_append_batch_then_sync(benchmark, bench_dir: Path, system: str, batch: int) -> None:
    """A batch of 100 B records made durable with one commit: throughput against batch size."""
    store = open_or_skip(system, bench_dir, durable=False)
    records = [payload(RECORD_SIZE, seed) for seed in range(batch)]
    benchmark.group = group_batch(batch)
    benchmark.extra_info.update(
        params(sync="sync() per batch", batch=batch),
        system=system,
        ops=batch,
        method=store.batch_method,
        plot="wal_throughput_vs_batch",
        plot_x="batch",
    )
    try:
        benchmark.pedantic(
            store.append_batch, args=(records,), rounds=BATCH_ROUNDS, warmup_rounds=1
        )
    finally:
        store.close()


def _replay_records(record_size: int) -> list[bytes]:
    """Distinct payloads cycled through to build the replay log (cheap to generate)."""
    return [payload(record_size, seed) for seed in range(64)]


def _write_replay_log(system: str, directory: Path, record_size: int, count: int) -> None:
    records = _replay_records(record_size)
    chunk = max(1, min(10_000, BUFFER_SIZE // record_size))
    if system == KEYVAL:
        try:
            from keyval.wal import WAL
        except ImportError as exc:
            pytest.skip(f"keyval: keyval.wal not importable yet ({exc})")
        with WAL(str(directory), sync="none") as wal:
            for start in range(0, count, chunk):
                n = min(chunk, count - start)
                wal.append_many([records[(start + i) % len(records)] for i in range(n)], type=1)
    else:
        with FramedLogWriter(directory / "framed.log", sync_each=False) as writer:
            for start in range(0, count, chunk):
                n = min(chunk, count - start)
                writer.append_many([records[(start + i) % len(records)] for i in range(n)])


def _replay_pass(system: str, directory: Path, wal: object | None) -> int:
    """Read the whole log once; return how many records (or bytes, for raw read) were seen."""
    # Both logs are read as the SPEC writes it, ``for seq, type, payload in ...``: a loop
    # that unpacks each record, as any consumer of the records does.
    if system == KEYVAL:
        count = 0
        for _seq, _type, _payload in wal.replay():  # type: ignore[union-attr]
            count += 1
        return count
    if system == FRAMED_LOG:
        count = 0
        for _seq, _type, _payload in read_framed_log(directory / "framed.log"):
            count += 1
        return count
    total = 0
    with open(directory / "framed.log", "rb", buffering=0) as f:
        while chunk := f.read(BUFFER_SIZE):
            total += len(chunk)
    return total


@pytest.mark.parametrize("record_size", REPLAY_RECORD_SIZES)
@pytest.mark.parametrize("system", (KEYVAL, FRAMED_LOG, RAW_READ))
def test_replay(benchmark, bench_dir: Path, system: str, record_size: int) -> None:
    """Replay a log already in the page cache, every CRC checked (``read() only`` checks
    nothing: it is the ceiling set by copying the bytes out of the page cache)."""
    count = max(1, REPLAY_BYTES // record_size)
    _write_replay_log(system, bench_dir, record_size, count)
    wal = None
    if system == KEYVAL:
        from keyval.wal import WAL

        wal = WAL(str(bench_dir), sync="none")
        await_next_segment(wal)
    expected = count if system != RAW_READ else os.path.getsize(bench_dir / "framed.log")

    def replay_round() -> None:
        seen = _replay_pass(system, bench_dir, wal)
        # A replay that stops early would look fast: make that a failure, not a number.
        assert seen == expected, f"{system} replayed {seen}, expected {expected}"

    benchmark.group = group_replay(record_size)
    benchmark.extra_info.update(
        params(sync="-", batch="-", record_size=record_size),
        system=system,
        ops=count,
        bytes=count * record_size,
        detail=f"{size_label(count * record_size)} of payload, {count:,} records",
        reference=system == RAW_READ,
        method={
            KEYVAL: "for seq, type, payload in WAL.replay(): the whole log, CRC-verified"
            " (open not timed)",
            FRAMED_LOG: "for seq, type, payload in read_framed_log(): 1 MiB reads,"
            " struct.unpack + zlib.crc32 per record",
            RAW_READ: "os read of the framed log in 1 MiB chunks, no parsing, no CRC",
        }[system],
    )
    try:
        # The warm-up pass pulls any page the writer's close evicted back into the cache.
        benchmark.pedantic(replay_round, rounds=REPLAY_ROUNDS, warmup_rounds=1)
    finally:
        if wal is not None:
            wal.close()
