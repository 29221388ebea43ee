"""DBLogStorage: the Raft storage API with the log kept in a keyval.db bucket.

The design of hashicorp's raft-boltdb (each entry a key of a B+tree, every write one durable
transaction), built as the peer that :class:`keyval.raft.storage.RaftStorage` (the log on the
WAL) is measured against. Same API, same answers, same errors; not the node's default store.

Layout of ``DATA_DIR/raft-log.db`` (a keyval.db file, format in :mod:`keyval.db.page`)::

    bucket "log"       key: index u64 big-endian (so key order is index order)
                       value: term u64 big-endian | data
    bucket "meta"      "hard_state": term u64 | vote u64 | commit u64       (big-endian)
                       "snapshot":   index u64 | term u64                   (absent: none)
    bucket "snapshot"  "data": the newest snapshot's bytes

Writes and when they are durable: every ``append``, ``set_hard_state``, ``save`` and
``save_snapshot`` is one ``DB.update()`` transaction, committed with fsync before it returns
(``DB(sync=True)``). A crash leaves the file at the last committed call, all of it or none of
it, so a snapshot and the compaction it causes can never be seen apart. A conflicting append
deletes the replaced suffix and writes the new entries in the same transaction.

Reads go to the B+tree; only ``first_index``, ``last_index`` and the snapshot's index and term
are held in memory (read back on open: the snapshot metadata and the last key of "log").
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence

from keyval.db import DB
from keyval.dirsync import makedirs_durable
from keyval.errors import ClosedError, LogCompacted, LogUnavailable
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.validation import check_entries, check_hard_state, check_snapshot

DB_FILE = "raft-log.db"
LOG, META, SNAPSHOT = b"log", b"meta", b"snapshot"
HARD_STATE_KEY, SNAPSHOT_KEY, SNAPSHOT_DATA_KEY = b"hard_state", b"snapshot", b"data"
_INDEX = struct.Struct(">Q")
_TERM = struct.Struct(">Q")
_HARD_STATE = struct.Struct(">QQQ")
_SNAP_META = struct.Struct(">QQ")


class DBLogStorage:
    """Durable Raft state in ``data_dir`` (created if missing), the log in a keyval.db bucket.

    Answers every call exactly as :class:`keyval.raft.memory.MemoryStorage` does. Empty:
    ``first_index == 1``, ``last_index == 0``, ``term(0) == 0``, hard state all zeros. Reads
    below ``first_index`` raise :class:`~keyval.errors.LogCompacted`, past ``last_index``
    :class:`~keyval.errors.LogUnavailable`. Every write is one fsynced transaction, durable on
    return. Bad input raises ``ValueError``/``TypeError`` and writes nothing. Thread-safe: one
    lock serialises the calls. Use after ``close()`` raises ClosedError.
    """

    def __init__(self, data_dir: str | os.PathLike[str]):
        self._dir = os.fspath(data_dir)
        makedirs_durable(self._dir)
        self._lock = threading.RLock()
        self._closed = False
        self._db = DB(os.path.join(self._dir, DB_FILE), sync=True)
        try:
            self._load()
        except BaseException:
            self._db.close()
            raise

    def _load(self) -> None:
        with self._db.view() as tx:
            missing = {LOG, META, SNAPSHOT} - set(tx.buckets())
        if missing:  # a new file; an existing one is opened without a write
            with self._db.update() as tx:
                for name in sorted(missing):
                    tx.create_bucket(name)
        with self._db.view() as tx:
            log, meta = tx.bucket(LOG), tx.bucket(META)
            raw = meta.get(HARD_STATE_KEY)
            self._hard_state = HardState(*_HARD_STATE.unpack(raw)) if raw else HardState()
            raw = meta.get(SNAPSHOT_KEY)
            self._snap_index, self._snap_term = _SNAP_META.unpack(raw) if raw else (0, 0)
            last = log.cursor().last()
            self._last = _INDEX.unpack(last[0])[0] if last else self._snap_index

    # -- reads ---------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._snap_index + 1

    @property
    def last_index(self) -> int:
        return self._last

    @property
    def path(self) -> str:
        return self._dir

    def hard_state(self) -> HardState:
        self._check_open()
        return self._hard_state

    def term(self, index: int) -> int:
        """The term of entry ``index`` (the snapshot's term at its index; 0 for index 0)."""
        with self._lock:
            self._check_open()
            if index == self._snap_index:
                return self._snap_term
            if index < self._snap_index:
                raise LogCompacted(f"index {index} is compacted (first index {self.first_index})")
            if index > self._last:
                raise LogUnavailable(f"index {index} is past the last index {self._last}")
            with self._db.view() as tx:
                value = tx.bucket(LOG).get(_INDEX.pack(index))
            return _TERM.unpack_from(value)[0]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; with ``max_bytes``, stops once the data passes that many
        bytes (but returns at least one entry)."""
        with self._lock:
            self._check_open()
            if lo < self.first_index:
                raise LogCompacted(f"index {lo} is compacted (first index {self.first_index})")
            if hi > self._last + 1:
                raise LogUnavailable(f"index {hi - 1} is past the last index {self._last}")
            if lo >= hi:
                return []
            out: list[Entry] = []
            size = 0
            with self._db.view() as tx:
                for key, value in tx.bucket(LOG).items(_INDEX.pack(lo), _INDEX.pack(hi)):
                    data = value[_TERM.size :]
                    out.append(Entry(_INDEX.unpack(key)[0], _TERM.unpack_from(value)[0], data))
                    size += len(data)
                    if max_bytes is not None and size >= max_bytes:
                        break
            return out

    def snapshot(self) -> Snapshot | None:
        """The newest snapshot; None if there is none."""
        with self._lock:
            self._check_open()
            if not self._snap_index:
                return None
            with self._db.view() as tx:
                data = tx.bucket(SNAPSHOT).get(SNAPSHOT_DATA_KEY, b"")
            return Snapshot(self._snap_index, self._snap_term, data)

    # -- writes --------------------------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        """Durable on return. The commit index is not checked against the log (the SPEC's
        own example sets one on an empty store): Raft itself never persists one past it."""
        if hs is None:
            raise TypeError("expected a HardState, not None")
        self.save(hard_state=hs)

    def append(self, entries: Sequence[Entry]) -> None:
        """Durable on return, one transaction however many entries. An entry whose index is at
        or below ``last_index`` replaces that entry and everything after it."""
        self.save(entries=entries)

    def save(self, hard_state: HardState | None = None, entries: Sequence[Entry] = ()) -> None:
        """Entries and hard state in one durable transaction (one Raft ready batch)."""
        with self._lock:
            self._check_open()
            entries = list(entries)
            if hard_state is not None:
                check_hard_state(hard_state, self._hard_state)
            if entries:
                check_entries(entries, self.first_index, self._last, self.term)
            if hard_state is None and not entries:
                return
            with self._db.update() as tx:
                if entries:
                    log = tx.bucket(LOG)
                    new_last = entries[-1].index
                    # Entries past the new last one belong to the replaced suffix; the rest
                    # of it is overwritten by the puts below.
                    for index in range(new_last + 1, self._last + 1):
                        log.delete(_INDEX.pack(index))
                    put, pack_index, pack_term = log.put, _INDEX.pack, _TERM.pack
                    for e in entries:
                        put(pack_index(e.index), pack_term(e.term) + e.data)
                if hard_state is not None:
                    tx.bucket(META).put(HARD_STATE_KEY, _HARD_STATE.pack(*_fields(hard_state)))
            if entries:
                self._last = entries[-1].index
            if hard_state is not None:
                self._hard_state = hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        """Stores ``snap`` and compacts the log up to its index, in one durable transaction.

        Entries after ``snap.index`` are kept only when the log holds ``snap.index`` with
        ``snap.term``; otherwise (a leader's snapshot over a divergent log) the whole log goes.
        """
        with self._lock:
            self._check_open()
            check_snapshot(snap, self._snap_index)
            keep = (
                self._snap_index <= snap.index <= self._last and self.term(snap.index) == snap.term
            )
            drop_to = snap.index if keep else self._last
            with self._db.update() as tx:
                log = tx.bucket(LOG)
                for index in range(self.first_index, drop_to + 1):
                    log.delete(_INDEX.pack(index))
                tx.bucket(META).put(SNAPSHOT_KEY, _SNAP_META.pack(snap.index, snap.term))
                tx.bucket(SNAPSHOT).put(SNAPSHOT_DATA_KEY, bytes(snap.data))
            self._snap_index, self._snap_term = snap.index, snap.term
            self._last = self._last if keep else snap.index

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()

    def __enter__(self) -> DBLogStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation (the rules of RaftStorage, so both reject the same calls) -------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"DBLogStorage {self._dir} is closed")


def _fields(hs: HardState) -> tuple[int, int, int]:
    return hs.term, hs.vote, hs.commit
