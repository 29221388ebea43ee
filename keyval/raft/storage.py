"""RaftStorage: the durable state of one Raft node, in one data directory.

Layout of a node's data directory (the FORMAT of it; each file's own format is documented in
its module)::

    NODE_DIR/
      wal/            keyval.wal log (csrc/format.h) holding three record types:
                        ENTRY       index u64 | term u64 | data
                        HARD_STATE  term u64 | vote u64 | commit u64
                        SNAPSHOT    index u64 | term u64 | keep u8   (a snapshot was saved here)
      raft.db         keyval.db file (keyval/db/page.py): bucket "meta" holds the hard state as
                      of the last checkpoint, bucket "snapshot" the newest snapshot's metadata
      snap/           snapshot files (keyval/raft/snapfile.py), the newest two kept

Writes and when they are durable:

- ``append(entries)`` / ``set_hard_state(hs)`` / ``save(hs, entries)``: one WAL batch and one
  fdatasync, durable on return. The log is append-only: an entry whose index is at or below
  ``last_index`` is appended after the old ones, and replay lets it replace the old suffix, so
  a conflict never rewrites the file and no crash can bring a replaced entry back.
- ``save_snapshot(snap)``: the snapshot file (fsynced, renamed, directory fsynced), then a
  SNAPSHOT record in the WAL that says whether the entries after it are kept (the log holds
  the snapshot's index with its term) or dropped (it does not), with the current hard state
  beside it (one fsync), then the hard state and the snapshot's metadata in raft.db (one
  transaction), then compaction: the WAL forgets the records
  before the first kept one, whole segments are deleted, older snapshot files removed.
- ``stage_snapshot(snap)`` then ``save_snapshot(snap, staged=True)``: the same, with the file
  (the long part) written first without the storage's lock, so that appends and reads go on
  meanwhile; a staged snapshot is not in force until it is saved (recovery removes it).

Snapshots are never held whole in memory: ``snapshot()`` verifies the file a chunk at a time
and hands out its data as a :class:`~keyval.raft.snapdata.FileData` read on demand (what the
leader slices its chunks from), ``snapshot_buffer()`` gives a follower an unnamed file to
gather a received snapshot in, and ``save_snapshot`` streams either kind into its file.

Recovery (on open): raft.db gives the checkpointed hard state and snapshot; the WAL is then
replayed from its first record: ENTRY records build an index (raft index -> WAL sequence number
and term; payloads stay on disk and are read on demand), the last HARD_STATE record wins (one
is written beside every SNAPSHOT record, so an older one retained before it never overrides
the checkpoint), SNAPSHOT records at or after the checkpointed one are applied exactly as when
they were written. ``.tmp`` files of an
interrupted snapshot are removed, and snapshot files newer than any SNAPSHOT record (the crash
came before it was written) too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from keyval.db import DB
from keyval.dirsync import fsync_dir, makedirs_durable
from keyval.errors import (
    ClosedError,
    CorruptionError,
    LogCompacted,
    LogUnavailable,
)
from keyval.raft import snapfile
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.snapdata import FileBuffer
from keyval.raft.validation import check_entries, check_hard_state, check_snapshot
from keyval.wal import RECORD_OVERHEAD, WAL

log = logging.getLogger("keyval.raft.storage")

ENTRY, HARD_STATE, SNAPSHOT = 1, 2, 3  # WAL record types
_ENTRY_HEAD = struct.Struct("<QQ")
_HARD_STATE = struct.Struct("<QQQ")
_MARKER = struct.Struct("<QQB")
_SNAP_META = struct.Struct("<QQ")  # raft.db "snapshot"/"latest": index, term
# Bytes a segment holds besides an entry's data when that entry is its only record: an entry
# with more data than segment_size - ENTRY_OVERHEAD cannot be appended (ValueTooLarge).
ENTRY_OVERHEAD = RECORD_OVERHEAD + _ENTRY_HEAD.size
WAL_DIR, DB_FILE, SNAP_DIR = "wal", "raft.db", "snap"
SNAPSHOTS_KEPT = 2
DEFAULT_SEGMENT_SIZE = 64 * 2**20


@dataclass
class _State:
    """What replaying a node's WAL over its raft.db checkpoint yields."""

    hard_state: HardState
    snap_index: int
    snap_term: int
    base: int  # raft index held at position 0 of seqs/terms
    seqs: array  # WAL sequence number of each entry
    terms: array
    sizes: array  # bytes of data of each entry

    @property
    def last_index(self) -> int:
        return self.base + len(self.seqs) - 1

    def apply_snapshot_point(self, index: int, term: int, keep: bool) -> None:
        """Entries up to ``index`` give way to the snapshot; later ones stay only if ``keep``."""
        if keep and index >= self.base - 1:
            drop = index + 1 - self.base
            del self.seqs[:drop], self.terms[:drop], self.sizes[:drop]
        else:
            del self.seqs[:], self.terms[:], self.sizes[:]
        self.base = index + 1
        self.snap_index, self.snap_term = index, term


def _unpack(layout: struct.Struct, raw: bytes, what: str, path: str) -> tuple[int, ...]:
    """``raw`` as ``layout``. A value whose checksum held but whose size is wrong was never
    written by this code: CorruptionError naming ``what``, not a struct.error."""
    if len(raw) != layout.size:
        raise CorruptionError(
            f"{what} is {len(raw)} bytes, not {layout.size}: not written by keyval", path, None
        )
    return layout.unpack(raw)


def replay_state(wal: WAL, db: DB, wal_path: str) -> _State:
    """Rebuilds the log index and hard state from raft.db's checkpoint and the WAL; reads only
    (the fsck of a node directory uses it on a log opened for checking). Raises
    CorruptionError for any record or value this code could not have written (a wrong size,
    an entry at index or term 0), even when its checksum holds."""
    hs, snap_index, snap_term = HardState(), 0, 0
    with db.view() as tx:
        names = set(tx.buckets())
        if b"meta" in names and (raw := tx.bucket(b"meta").get(b"hard_state")) is not None:
            hs = HardState(*_unpack(_HARD_STATE, raw, "the hard state in meta", db.path))
        if b"snapshot" in names and (raw := tx.bucket(b"snapshot").get(b"latest")) is not None:
            snap_index, snap_term = _unpack(_SNAP_META, raw, "snapshot/latest", db.path)
    state = _State(hs, snap_index, snap_term, snap_index + 1, array("Q"), array("Q"), array("L"))
    seqs, terms, sizes = state.seqs, state.terms, state.sizes
    for seq, kind, payload in wal.replay():
        if kind == ENTRY:
            if len(payload) < _ENTRY_HEAD.size:
                raise CorruptionError(
                    f"WAL record {seq}: an entry of {len(payload)} bytes, shorter than its header",
                    wal_path,
                    None,
                )
            index, term = _ENTRY_HEAD.unpack_from(payload)
            if index < 1 or term < 1:
                # Never appended (validation refuses both); taken as below the snapshot, it
                # would wipe the log after it.
                raise CorruptionError(
                    f"WAL record {seq} holds an entry at index {index}, term {term}",
                    wal_path,
                    None,
                )
            if index < state.base:
                # Covered by the snapshot; but in the log it replaced every entry after it,
                # those past the snapshot too (a conflict rewritten before a snapshot whose
                # compaction a crash cut short): they must not come back.
                del seqs[:], terms[:], sizes[:]
                continue
            pos = index - state.base
            if pos != len(seqs):  # not the next entry: a conflict replaced a suffix, or a gap
                if pos > len(seqs):
                    raise CorruptionError(
                        f"WAL record {seq} holds entry {index} after entry {state.last_index}: "
                        "the log has a gap",
                        wal_path,
                        None,
                    )
                del seqs[pos:], terms[pos:], sizes[pos:]
            seqs.append(seq)
            terms.append(term)
            sizes.append(len(payload) - _ENTRY_HEAD.size)
        elif kind == HARD_STATE:
            # In WAL order the last one is the newest: every snapshot marker is followed by
            # the hard state checkpointed with it, so older records before it never win.
            state.hard_state = HardState(
                *_unpack(_HARD_STATE, payload, f"WAL record {seq} (hard state)", wal_path)
            )
        elif kind == SNAPSHOT:
            index, term, keep = _unpack(
                _MARKER, payload, f"WAL record {seq} (snapshot marker)", wal_path
            )
            if index >= state.snap_index:
                state.apply_snapshot_point(index, term, bool(keep))
        else:
            raise CorruptionError(f"WAL record {seq} has unknown type {kind}", wal_path, None)
    return state


def _fields(hs: HardState) -> tuple[int, int, int]:
    return hs.term, hs.vote, hs.commit


class RaftStorage:
    """Durable Raft state in ``data_dir`` (created if missing): hard state, log, snapshots.

    Empty storage: ``first_index == 1``, ``last_index == 0``, ``term(0) == 0``, hard state all
    zeros. After a snapshot at index *i*: ``first_index == i + 1``, ``last_index >= i``,
    ``term(i)`` is the snapshot's term, and reads below ``first_index`` raise
    :class:`~keyval.errors.LogCompacted` (:class:`~keyval.errors.LogUnavailable` past
    ``last_index``). Every write is durable on return (see the module doc). Thread-safe: one
    lock serialises the calls. Bad input raises ``ValueError``/``TypeError`` and writes nothing.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, segment_size: int = DEFAULT_SEGMENT_SIZE
    ):
        started = time.perf_counter()
        self._dir = os.fspath(data_dir)
        self._lock = threading.RLock()
        self._closed = False
        # The node directory may be new: its name (and snap/'s) must survive a power loss
        # like the files synced inside it, or a crash loses every write acked since.
        makedirs_durable(os.path.join(self._dir, SNAP_DIR))
        self._snap_dir = os.path.join(self._dir, SNAP_DIR)
        self._db = DB(os.path.join(self._dir, DB_FILE))
        try:
            self._wal = WAL(
                os.path.join(self._dir, WAL_DIR), segment_size=segment_size, sync="always"
            )
        except BaseException:
            self._db.close()
            raise
        try:
            self._recover()
        except BaseException:
            self._wal.close()
            self._db.close()
            raise
        log.info(
            "%s: recovered in %.3f s: snapshot at %d, entries %d..%d, term %d, %d WAL records, "
            "%d bytes",
            self._dir,
            time.perf_counter() - started,
            self._s.snap_index,
            self.first_index,
            self.last_index,
            self._s.hard_state.term,
            self._wal.last_seq - self._wal.first_seq + 1 if self._wal.last_seq else 0,
            self._wal.stats()["bytes"],
        )

    # -- recovery ------------------------------------------------------------------------------

    def _recover(self) -> None:
        self._s = replay_state(self._wal, self._db, os.path.join(self._dir, WAL_DIR))
        self._tidy_snapshot_files()
        if self._s.snap_index and not os.path.exists(
            self._snap_path(self._s.snap_index, self._s.snap_term)
        ):
            raise CorruptionError(
                f"the snapshot at index {self._s.snap_index} (term {self._s.snap_term}) is missing",
                self._snap_path(self._s.snap_index, self._s.snap_term),
                None,
            )

    def _snap_path(self, index: int, term: int) -> str:
        return os.path.join(self._snap_dir, snapfile.file_name(index, term))

    def _tidy_snapshot_files(self) -> None:
        """Removes .tmp files and snapshots newer than the one in force (never recorded)."""
        changed = False
        for name in os.listdir(self._snap_dir):
            parsed = snapfile.parse_name(name)
            if name.endswith(snapfile.TMP_SUFFIX) or (parsed and parsed[0] > self._s.snap_index):
                os.unlink(os.path.join(self._snap_dir, name))
                changed = True
        if changed:
            fsync_dir(self._snap_dir)

    # -- reads ---------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._s.base

    @property
    def last_index(self) -> int:
        return self._s.last_index

    @property
    def path(self) -> str:
        return self._dir

    def hard_state(self) -> HardState:
        self._check_open()
        return self._s.hard_state

    def term(self, index: int) -> int:
        """The term of entry ``index`` (the snapshot's term at its index; 0 for index 0)."""
        with self._lock:
            self._check_open()
            if index == self._s.base - 1:
                return self._s.snap_term
            if index < self._s.base:
                raise LogCompacted(f"index {index} is compacted (first index {self._s.base})")
            if index > self.last_index:
                raise LogUnavailable(f"index {index} is past the last index {self.last_index}")
            return self._s.terms[index - self._s.base]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, read from the WAL; with ``max_bytes``, stops once the data
        passes that many bytes (but returns at least one entry)."""
        with self._lock:
            self._check_open()
            if lo < self._s.base:
                raise LogCompacted(f"index {lo} is compacted (first index {self._s.base})")
            if hi > self.last_index + 1:
                raise LogUnavailable(f"index {hi - 1} is past the last index {self.last_index}")
            if lo >= hi:
                return []
            # Entries are in WAL order, but hard states and replaced entries may lie between.
            seqs = self._s.seqs
            pos, end = lo - self._s.base, hi - self._s.base
            out: list[Entry] = []
            size = 0
            for seq, kind, payload in self._wal.replay(seqs[pos], seqs[end - 1] + 1):
                if kind != ENTRY or seq != seqs[pos]:
                    continue
                index, term = _ENTRY_HEAD.unpack_from(payload)
                data = payload[16:]
                out.append(Entry(index, term, data))
                size += len(data)
                pos += 1
                if pos == end or (max_bytes is not None and size >= max_bytes):
                    break
            return out

    def size_bytes(self) -> int:
        """Bytes of entry data in the log after the snapshot (kept in memory, O(entries))."""
        with self._lock:
            return sum(self._s.sizes)

    def snapshot(self) -> Snapshot | None:
        """The newest snapshot, verified; None if there is none. Its data is read from the
        file on demand (a :class:`~keyval.raft.snapdata.FileData`), never held whole."""
        with self._lock:
            self._check_open()
            if not self._s.snap_index:
                return None
            # snapfile.read checks that the file holds the snapshot its name (this one) says.
            return snapfile.read(self._snap_path(self._s.snap_index, self._s.snap_term))

    def snapshot_buffer(self) -> FileBuffer:
        """Where a snapshot received from the leader is gathered: an unnamed file beside the
        snapshot files (nothing of it survives a crash), handed to :meth:`save_snapshot`."""
        with self._lock:
            self._check_open()
            return FileBuffer(self._snap_dir)

    # -- writes --------------------------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        """Durable on return. The commit index is not checked against the log (the SPEC's
        own example sets one on an empty store): Raft itself never persists one past it."""
        if hs is None:
            raise TypeError("expected a HardState, not None")
        self.save(hard_state=hs)

    def append(self, entries: Sequence[Entry]) -> None:
        """Durable on return, with one fsync however many entries. An entry whose index is at
        or below ``last_index`` replaces that entry and everything after it."""
        self.save(entries=entries)

    def save(self, hard_state: HardState | None = None, entries: Sequence[Entry] = ()) -> None:
        """Entries and hard state in one WAL batch: one fsync for a whole Raft ready batch."""
        with self._lock:
            self._check_open()
            entries = list(entries)
            if hard_state is not None:
                check_hard_state(hard_state, self._s.hard_state)
            if entries:
                check_entries(entries, self._s.base, self.last_index, self.term)
            payloads = [_ENTRY_HEAD.pack(e.index, e.term) + e.data for e in entries]
            types = [ENTRY] * len(entries)
            lead = 0
            if hard_state is not None:
                payloads.append(_HARD_STATE.pack(*_fields(hard_state)))
                types.append(HARD_STATE)
                now = self._s.hard_state
                if entries and (hard_state.term, hard_state.vote) != (now.term, now.vote):
                    # A batch bigger than a segment spans several, and a crash may keep only a
                    # prefix of it: the new term goes first, so that no entry is ever stored
                    # without the term it was written in (kept last, it was lost with the tail
                    # while entries of its term stayed). Its commit stays the durable one until
                    # the batch's last record: it may point into these entries.
                    early = HardState(hard_state.term, hard_state.vote, now.commit)
                    payloads.insert(0, _HARD_STATE.pack(*_fields(early)))
                    types.insert(0, HARD_STATE)
                    lead = 1
            if not payloads:
                return
            first, _ = self._wal.append_many(payloads, type=types)
            first += lead
            if entries:
                s, pos = self._s, entries[0].index - self._s.base
                del s.seqs[pos:], s.terms[pos:], s.sizes[pos:]
                s.seqs.extend(range(first, first + len(entries)))
                s.terms.extend(e.term for e in entries)
                s.sizes.extend(len(e.data) for e in entries)
            if hard_state is not None:
                self._s.hard_state = hard_state

    def stage_snapshot(self, snap: Snapshot) -> None:
        """Writes ``snap``'s file durably without putting it in force, holding no lock while it
        writes: appends, reads and even :meth:`save_snapshot` of another snapshot go on. Then
        :meth:`save_snapshot` ``(snap, staged=True)`` puts it in force, or
        :meth:`discard_staged` removes it. A crash in between leaves the older snapshot in
        force (recovery removes the staged file). Raises ValueError, writing nothing, for a
        snapshot not newer than the one in force."""
        with self._lock:
            self._check_open()
            check_snapshot(snap, self._s.snap_index)
            if snap.index == self._s.snap_index:  # its file is the one in force
                raise ValueError(f"the snapshot at {snap.index} is in force already")
        snapfile.write(self._snap_dir, snap)

    def discard_staged(self, snap: Snapshot) -> None:
        """Removes the file :meth:`stage_snapshot` wrote for ``snap``, unless it is in force."""
        with self._lock:
            self._check_open()
            if (snap.index, snap.term) == (self._s.snap_index, self._s.snap_term):
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._snap_path(snap.index, snap.term))

    def save_snapshot(self, snap: Snapshot, *, staged: bool = False) -> None:
        """Stores ``snap`` durably and compacts the log up to its index (see the module doc);
        ``staged``: :meth:`stage_snapshot` wrote its file already."""
        with self._lock:
            self._check_open()
            check_snapshot(snap, self._s.snap_index)
            keep = (
                self._s.base - 1 <= snap.index <= self.last_index
                and self.term(snap.index) == snap.term
            )
            if not staged:
                snapfile.write(self._snap_dir, snap)
            elif not os.path.exists(self._snap_path(snap.index, snap.term)):
                raise ValueError(f"no staged file for the snapshot at index {snap.index}")
            hs = _HARD_STATE.pack(*_fields(self._s.hard_state))
            marker, _ = self._wal.append_many(
                [_MARKER.pack(snap.index, snap.term, keep), hs], type=[SNAPSHOT, HARD_STATE]
            )
            with self._db.update() as tx:
                tx.create_bucket(b"meta", exist_ok=True).put(b"hard_state", hs)
                tx.create_bucket(b"snapshot", exist_ok=True).put(
                    b"latest", _SNAP_META.pack(snap.index, snap.term)
                )
            self._s.apply_snapshot_point(snap.index, snap.term, keep)
            # The hard state is in raft.db now, so the WAL may forget everything before the
            # first entry still needed (or before the marker when none is).
            self._wal.truncate_front(self._s.seqs[0] if self._s.seqs else marker)
            self._remove_old_snapshots()

    def _remove_old_snapshots(self) -> None:
        """Keeps the snapshot in force and the newest ones before it (SNAPSHOTS_KEPT in all);
        files of newer snapshots are staged ones, not this call's to judge."""
        in_force = (self._s.snap_index, self._s.snap_term)
        older = sorted(
            (parsed, name)
            for name in os.listdir(self._snap_dir)
            if (parsed := snapfile.parse_name(name)) is not None and parsed <= in_force
        )
        doomed = older[:-SNAPSHOTS_KEPT]
        for _, name in doomed:
            os.unlink(os.path.join(self._snap_dir, name))
        if doomed:
            fsync_dir(self._snap_dir)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._wal.close()
            finally:
                self._db.close()

    def __enter__(self) -> RaftStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"RaftStorage {self._dir} is closed")
