"""Log-shaped adapters: keyval's WAL and its peers behind one small interface.

Every system is driven through :class:`LogStore`, so a benchmark case runs the same records
through each of them with the same durability promise:

- ``append(payload)``: one record. When the store was opened with ``durable=True`` it is on
  stable storage when the call returns; otherwise it is durable only after :meth:`sync`.
- ``append_batch(payloads)``: the records in order, durable on return whatever ``durable`` is
  (one commit / one fsync for the whole batch where the system allows it).
- ``sync()``: everything appended so far is durable.

Each store is safe to call from several threads at once (how: see each class), so the same
adapters run the multi-threaded cases. :func:`open_log_store` raises :class:`PeerUnavailable`
with the reason when a peer's package cannot be imported; benchmarks turn that into a skip.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from bench.peers.framed_log import FramedLogWriter

# Display names; the report uses them as column headings.
KEYVAL = "keyval"
FRAMED_LOG = "framed-log"
BARE_FDATASYNC = "os.write+fdatasync"
SQLITE = "sqlite"
LMDB = "lmdb"
ROCKSDB = "rocksdb"

ALL_LOG_SYSTEMS = (KEYVAL, FRAMED_LOG, BARE_FDATASYNC, SQLITE, LMDB, ROCKSDB)

# LMDB reserves address space, not disk: large enough for any log a benchmark writes.
LMDB_MAP_SIZE = 64 << 30
# Longest wait for keyval's WAL to finish preparing its next segment after open.
STEADY_STATE_TIMEOUT = 30.0


class PeerUnavailable(Exception):
    """A system cannot be benchmarked here; ``str(exc)`` says why (shown as the skip reason)."""


class LogStore(Protocol):
    """The interface every benchmarked log implements (contract in the module docstring)."""

    system: str
    #: How :meth:`append` and :meth:`append_batch` drive the system, one line each, for the
    #: report's legend.
    append_method: str
    batch_method: str

    def append(self, payload: bytes) -> None: ...

    def append_batch(self, payloads: list[bytes]) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...

    def fsync_stats(self) -> tuple[int, int] | None:
        """(records appended, fsyncs issued) since open, when the system counts them; the
        ratio shows how well concurrent appends were grouped into one fsync."""
        ...


def import_peer(module: str, package: str) -> object:
    """Import a peer's module or raise :class:`PeerUnavailable` naming the missing package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(
            f"{module} not importable ({exc}); install with: pip install {package}"
        ) from exc


def await_next_segment(wal: object) -> None:
    """Return once keyval's ``wal`` has pre-written its next segment (or after 30 s).

    An opened WAL zero-fills its next 64 MiB segment in the background (~0.3 s here). A
    long-running log pays that once per 64 MiB; a benchmark case lasting a fraction of a second
    would instead measure every operation competing with it. Peers get the same treatment:
    they are measured from the moment they are ready.
    """
    deadline = time.monotonic() + STEADY_STATE_TIMEOUT
    while time.monotonic() < deadline:
        if wal.stats().get("next_segment_prepared", True):  # type: ignore[attr-defined]
            return
        time.sleep(0.001)


class KeyvalLog:
    """keyval's :class:`keyval.wal.WAL` (thread-safe by contract, group commit when durable)."""

    system = KEYVAL

    def __init__(self, directory: Path, *, durable: bool) -> None:
        try:
            from keyval.wal import WAL
        except ImportError as exc:
            raise PeerUnavailable(f"keyval.wal not importable yet ({exc})") from exc
        self.durable = durable
        mode = "always" if durable else "none"
        self.append_method = (
            f'WAL(sync="{mode}").append per record, timed once the next segment is prepared'
        )
        self.batch_method = (
            f'WAL(sync="{mode}").append_many(batch)'
            + ("" if durable else " then sync()")
            + ", timed once the next segment is prepared"
        )
        self._wal = WAL(str(directory), sync="always" if durable else "none")
        await_next_segment(self._wal)

    def append(self, payload: bytes) -> None:
        self._wal.append(payload, type=1)

    def append_batch(self, payloads: list[bytes]) -> None:
        self._wal.append_many(payloads, type=1)
        if not self.durable:
            self._wal.sync()

    def sync(self) -> None:
        self._wal.sync()

    def close(self) -> None:
        self._wal.close()

    def fsync_stats(self) -> tuple[int, int] | None:
        stats = self._wal.stats()
        return stats["last_seq"], stats["fsyncs"]


class FramedLog:
    """The pure-Python framed log of :mod:`bench.peers.framed_log` (one lock, no group commit)."""

    system = FRAMED_LOG

    def __init__(self, directory: Path, *, durable: bool) -> None:
        self.append_method = "struct header + zlib.crc32 into a 1 MiB buffered file" + (
            ", flush + fdatasync per append" if durable else ", no fsync"
        )
        self.batch_method = "the same for each record, then one flush + fdatasync"
        self._writer = FramedLogWriter(directory / "framed.log", sync_each=durable)

    def append(self, payload: bytes) -> None:
        self._writer.append(payload)

    def append_batch(self, payloads: list[bytes]) -> None:
        # Buffered writes of every record then one fdatasync (append_many does it when sync_each).
        self._writer.append_many(payloads)
        if not self._writer.sync_each:
            self._writer.sync()

    def sync(self) -> None:
        self._writer.sync()

    def close(self) -> None:
        self._writer.close()

    def fsync_stats(self) -> tuple[int, int] | None:
        return None


class BareFdatasyncLog:
    """Raw ``os.write`` of each payload (no framing, no CRC) on a growing file, plus
    ``os.fdatasync`` per append when durable: the floor any durable log is measured against.
    A lock serialises writers."""

    system = BARE_FDATASYNC

    def __init__(self, directory: Path, *, durable: bool) -> None:
        self.durable = durable
        self.append_method = "os.write(payload) on an O_APPEND file" + (
            " + os.fdatasync per append" if durable else ", no fsync"
        )
        self.batch_method = "os.write per record, then one os.fdatasync"
        self._fd = os.open(directory / "bare.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def append(self, payload: bytes) -> None:
        with self._lock:
            os.write(self._fd, payload)
            if self.durable:
                os.fdatasync(self._fd)

    def append_batch(self, payloads: list[bytes]) -> None:
        with self._lock:
            for payload in payloads:
                os.write(self._fd, payload)
            os.fdatasync(self._fd)

    def sync(self) -> None:
        with self._lock:
            os.fdatasync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def fsync_stats(self) -> tuple[int, int] | None:
        return None


class SqliteLog:
    """sqlite3 in WAL mode, one ``INSERT`` of a blob row per record, autocommit.

    Durable: ``synchronous=FULL``, so every insert is its own fsynced commit. Not durable:
    ``synchronous=OFF``, still one commit per insert (each record reaches the OS, as it does for
    the other peers); a batch is one transaction with ``synchronous=FULL``. One connection
    shared under a lock: SQLite allows one writer at a time anyway, and separate connections
    would wait for each other in SQLite's sleeping busy handler, measuring its back-off rather
    than its writes.
    """

    system = SQLITE

    def __init__(self, directory: Path, *, durable: bool) -> None:
        self.durable = durable
        level = "FULL" if durable else "OFF"
        self.append_method = f"WAL mode, synchronous={level}, autocommit INSERT of a blob row"
        self.batch_method = (
            "WAL mode, synchronous=FULL, BEGIN + executemany INSERT + COMMIT per batch"
        )
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            directory / "log.sqlite", isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={level}")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, type INTEGER, payload BLOB)"
        )

    def append(self, payload: bytes) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO log (type, payload) VALUES (1, ?)", (payload,))

    def append_batch(self, payloads: list[bytes]) -> None:
        with self._lock:
            if not self.durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO log (type, payload) VALUES (1, ?)", [(p,) for p in payloads]
            )
            self._conn.execute("COMMIT")
            if not self.durable:
                self._conn.execute("PRAGMA synchronous=OFF")

    def sync(self) -> None:
        # With synchronous=OFF the WAL file was never fsynced; a FULL checkpoint copies the
        # pages into the database file and fsyncs it.
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def fsync_stats(self) -> tuple[int, int] | None:
        return None


class LmdbLog:
    """py-lmdb, key = 8-byte big-endian sequence number (``put(append=True)``, the sorted-insert
    fast path). Durable: one write transaction per record, ``sync=True`` environment. Not
    durable: the same with ``sync=False``, ``env.sync(True)`` at :meth:`sync`. LMDB serialises
    write transactions itself."""

    system = LMDB

    def __init__(self, directory: Path, *, durable: bool) -> None:
        lmdb = import_peer("lmdb", "lmdb")
        self.durable = durable
        self.append_method = f"one write txn per record (put append=True), sync={durable}"
        self.batch_method = "one write txn per batch (put append=True)" + (
            ", sync=True" if durable else ", sync=False, then env.sync(True)"
        )
        self._env = lmdb.open(  # type: ignore[attr-defined]
            str(directory / "lmdb"),
            map_size=LMDB_MAP_SIZE,
            sync=durable,
            metasync=durable,
            max_spare_txns=16,
        )
        self._seq = itertools.count(1)
        # Keys must be inserted in order for append=True; the counter and the commit must
        # therefore happen under one lock when several threads write.
        self._order = threading.Lock()

    def append(self, payload: bytes) -> None:
        with self._order, self._env.begin(write=True) as txn:
            txn.put(next(self._seq).to_bytes(8, "big"), payload, append=True)

    def append_batch(self, payloads: list[bytes]) -> None:
        with self._order:
            with self._env.begin(write=True) as txn:
                for payload in payloads:
                    txn.put(next(self._seq).to_bytes(8, "big"), payload, append=True)
            if not self.durable:
                self._env.sync(True)

    def sync(self) -> None:
        self._env.sync(True)

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()

    def fsync_stats(self) -> tuple[int, int] | None:
        return None


class RocksdbLog:
    """RocksDB through ``rocksdict`` (raw bytes mode), key = 8-byte big-endian sequence number.
    Durable: ``put`` with ``WriteOptions.sync=True`` (RocksDB does its own group commit across
    threads). Batches: one ``WriteBatch`` written with ``sync=True``."""

    system = ROCKSDB

    def __init__(self, directory: Path, *, durable: bool) -> None:
        rocksdict = import_peer("rocksdict", "rocksdict")
        self.append_method = f"put per record, WriteOptions.sync={durable}"
        self.batch_method = "one WriteBatch per batch, written with WriteOptions.sync=True"
        self._rocksdict = rocksdict
        self._db = rocksdict.Rdict(  # type: ignore[attr-defined]
            str(directory / "rocksdb"), rocksdict.Options(raw_mode=True)
        )
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = durable
        self._sync_options = rocksdict.WriteOptions()
        self._sync_options.sync = True
        # next() on itertools.count is atomic under the GIL: keys stay unique across threads.
        self._seq = itertools.count(1)

    def append(self, payload: bytes) -> None:
        self._db.put(next(self._seq).to_bytes(8, "big"), payload, self._write_options)

    def append_batch(self, payloads: list[bytes]) -> None:
        batch = self._rocksdict.WriteBatch(raw_mode=True)
        for payload in payloads:
            batch.put(next(self._seq).to_bytes(8, "big"), payload)
        self._db.write(batch, self._sync_options)

    def sync(self) -> None:
        self._db.flush_wal(True)

    def close(self) -> None:
        self._db.flush_wal(True)
        self._db.close()

    def fsync_stats(self) -> tuple[int, int] | None:
        return None


_LOG_STORES = {
    KEYVAL: KeyvalLog,
    FRAMED_LOG: FramedLog,
    BARE_FDATASYNC: BareFdatasyncLog,
    SQLITE: SqliteLog,
    LMDB: LmdbLog,
    ROCKSDB: RocksdbLog,
}


def open_log_store(system: str, directory: Path, *, durable: bool) -> LogStore:
    """Open ``system``'s log in the (existing, empty) ``directory``.

    Raises :class:`PeerUnavailable` when the system cannot run here.
    """
    return _LOG_STORES[system](directory, durable=durable)
