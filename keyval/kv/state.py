"""The replicated key/value state machine, kept in a ``keyval.db`` file.

Commands are Raft log entries (format below); applying one changes the ``kv`` bucket and
records the client's sequence number and reply in ``sessions``, so a retried request is
applied exactly once and gets the reply of its first application. The applied index lives in
``meta`` and is committed in the same transaction as the data it covers.

Durability: the Raft log is the durable record of every acknowledged write. Applied entries
are committed to the DB in batches (every ``batch_entries`` entries or ``batch_seconds``
seconds, whichever comes first, and on :meth:`flush`/:meth:`close`/:meth:`snapshot`), as
etcd's backend does: one DB fsync per entry would make the state machine, not consensus, the
bottleneck. After a crash the DB is at some applied index *a* (all of it or none of it) and
the node replays the log after *a*. Snapshots are encoded and restored a chunk at a time, never
held whole; a restore writes in several transactions behind a "restoring" mark in ``meta``,
and a DB reopened with the mark reports applied index 0, so the node restores its snapshot
again (see :meth:`KVStateMachine.restore`).

::

    command (an entry's data)         reply
      u8  op (PUT 1, APPEND 2, DELETE 3, u8  status (OK 0, NOT_FOUND 1, INVALID 2, EXPIRED 3)
          SET_MAX_SESSIONS 4, REGISTER 5) ... REGISTER: u64 the new session's id
      u64 client id                      ... value (for GET), or why (INVALID)
      u64 sequence number (0 = none)
      u32 key length, key, value

    session (bucket "sessions", key u64 client id):
      u64 last sequence number | u64 index of the entry that last used it | its reply

    SET_MAX_SESSIONS: client 0, seq 0, key "max_sessions", value u64 (>= 1)
    REGISTER: client 0, seq 0, key "session", no value

    snapshot: "KVSNAP02" | u64 applied index | then records of
      u8 tag (1 kv, 2 sessions, 3 setting) | u32 key length | key | u32 value length | value
      (a setting record: key "max_sessions", value u64; written first, absent before it existed)

Sessions expire so that the table stays bounded: once more than ``max_sessions`` clients have
one, the session least recently used (lowest last index) is dropped, on every node at the
same entry. The limit is part of the replicated state, so it is the same on every node
whatever each was started with: a SET_MAX_SESSIONS entry sets it from that entry on (sessions
over a lowered limit expire there), the DB keeps it beside the applied index, and snapshots
carry it. A leader proposes its configured limit before the first write of each term it
leads (keyval.kv.service), so every session is made under a limit the log set; the
``max_sessions`` a state machine is built with applies only before that, to entries (and
snapshots without the setting) of a keyval from before the limit was replicated, when it had
to be the same on every node.
A session is opened by a REGISTER entry and named by that entry's index, so an id is never
used twice: not by two clients, and not by one client after its session expired (a delayed
duplicate of a REGISTER opens another session, never an old one again). A write with a
sequence number (1, 2, ...) in a session that does not exist (expired, or never opened) is
answered EXPIRED and changes nothing: it may be the retry of a write applied before the
session was dropped, and applying it again would apply it twice (the client opens a new
session; see keyval.kv.client); one in a session that cannot have been opened (its id is not
below the write's own index: a client of an older keyval, which chose its own ids) is
answered INVALID, which its server turns into a clear error. So a write is applied at most
once, always; exactly once unless its session expired while it was retried, which the client
reports. A sequence number of 0 writes outside any session, without de-duplication.

Files of the format before sessions expired (sessions without a last index; "KVSNAP01"
snapshots) are refused if they hold any session: the order in which those would expire
cannot be made the same on every node. Removing only kv.db does not help (the node's own
Raft snapshot, and its peers', hold the same sessions): such a cluster starts anew.

A key is 1 to MAX_KEY_SIZE bytes and a value at most MAX_VALUE (a PUT's, or what an APPEND
grows it to): a request carrying one fits a Raft message, and a GET's answer a frame.
The server refuses a command that breaks the format or these limits before proposing it; one
that reaches the log all the same (a server that did not check) is answered INVALID on every
node alike and changes nothing, so it can never stop a node that applies it, now or on every
restart after.

An empty entry (a new leader's no-op) changes nothing but the applied index. Thread safety:
apply/snapshot/restore come from the Raft driver (one at a time); :meth:`get` may run on
other threads and sees every applied entry; :meth:`flush_if_due` may run on another thread
(a server's tick) and writes the batch to the DB while entries go on being applied.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from keyval.db import DB
from keyval.db.page import MAX_KEY_SIZE, MAX_VALUE_SIZE
from keyval.errors import CorruptionError, FormatVersionError
from keyval.raft.records import Entry
from keyval.raft.snapdata import (
    CHUNK_BYTES,
    FileBuffer,
    SnapshotData,
    open_reader,
    remove_stale_buffers,
)

# The longest value (see the module docstring): 4 MiB, half a frame (keyval.kv.frames).
MAX_VALUE = 4 * 2**20

PUT, APPEND, DELETE, SET_MAX_SESSIONS, REGISTER = 1, 2, 3, 4, 5
CLIENT_OPS = (PUT, APPEND, DELETE, REGISTER)  # a client's to ask; SET_MAX_SESSIONS the leader's
OK, NOT_FOUND, INVALID, EXPIRED = 0, 1, 2, 3
MAX_SESSIONS = 100_000  # client sessions kept (see the module docstring)
_COMMAND = struct.Struct("<BQQI")
MAX_COMMAND = _COMMAND.size + MAX_KEY_SIZE + MAX_VALUE  # the longest entry data a client's makes
_SESSION = struct.Struct("<Q")  # a session's key: the client id
_SESSION_HEAD = struct.Struct("<QQ")  # a session's value: last seq, last index (then reply)
_FORMAT, _FORMAT_KEY = b"\x02", b"format"  # of the DB file, in "meta"
_APPLIED = struct.Struct("<Q")
_SNAP_MAGIC, _OLD_SNAP_MAGIC = b"KVSNAP02", b"KVSNAP01"
_SNAP_RECORD = struct.Struct("<BI")
_LEN = struct.Struct("<I")
KV, SESSIONS, META = b"kv", b"sessions", b"meta"
_BUCKET_TAGS = {1: KV, 2: SESSIONS}
_KV_TAG, _SESSIONS_TAG = 1, 2
_SETTING_TAG = 3  # a snapshot record of a replicated setting (the one: max_sessions)
_MAX_SESSIONS_KEY = b"max_sessions"  # in "meta" and in snapshots: u64
_REGISTER_KEY = b"session"  # the key of a REGISTER command (every command has one)
_KEY_LENGTHS = {  # tag -> the shortest and longest key a snapshot record of it may have
    _KV_TAG: (1, MAX_KEY_SIZE),
    _SESSIONS_TAG: (_SESSION.size, _SESSION.size),
    _SETTING_TAG: (len(_MAX_SESSIONS_KEY), len(_MAX_SESSIONS_KEY)),
}
_RESTORING_KEY = b"restoring"  # in "meta" while a snapshot is written in: its applied index
RESTORE_BATCH_BYTES = 8 << 20  # keys and values written per transaction by restore()
_DELETED = object()  # marks a key deleted in the pending batch
_OK, _NOT_FOUND, _EXPIRED = bytes([OK]), bytes([NOT_FOUND]), bytes([EXPIRED])


def encode_command(op: int, client: int, seq: int, key: bytes, value: bytes = b"") -> bytes:
    """The entry data of a command (what :meth:`Command.encode` returns), without making one."""
    return _COMMAND.pack(op, client, seq, len(key)) + key + value


def decode_command(data: bytes) -> tuple[int, int, int, bytes, bytes]:
    """``(op, client, seq, key, value)`` of a command's entry data; ValueError if malformed
    or if the key is empty or longer than MAX_KEY_SIZE. A tuple, not a :class:`Command`: the
    state machine decodes every entry it applies."""
    if len(data) < _COMMAND.size:
        raise ValueError(f"a command of {len(data)} bytes is too short")
    op, client, seq, klen = _COMMAND.unpack_from(data)
    end = _COMMAND.size + klen
    if op not in (PUT, APPEND, DELETE, SET_MAX_SESSIONS, REGISTER) or end > len(data):
        raise ValueError(f"malformed command (op {op}, key length {klen})")
    if not 0 < klen <= MAX_KEY_SIZE:
        raise ValueError(f"keys must be 1 to {MAX_KEY_SIZE} bytes, not {klen}")
    return op, client, seq, data[_COMMAND.size : end], data[end:]


@dataclass(frozen=True, slots=True)
class Command:
    op: int
    client: int
    seq: int
    key: bytes
    value: bytes = b""

    def encode(self) -> bytes:
        return encode_command(self.op, self.client, self.seq, self.key, self.value)

    @staticmethod
    def decode(data: bytes) -> Command:
        return Command(*decode_command(data))


def register_command() -> Command:
    """The entry that opens a client session: its reply is OK and the session's id (u64), the
    entry's own index, so no two sessions ever share an id (see the module docstring)."""
    return Command(REGISTER, 0, 0, _REGISTER_KEY)


def max_sessions_command(limit: int) -> Command:
    """The entry a leader proposes to set the session limit of every node (see the module
    docstring)."""
    if type(limit) is not int or not 1 <= limit < 2**64:
        raise ValueError(f"max_sessions must be an int of at least 1, not {limit!r}")
    return Command(SET_MAX_SESSIONS, 0, 0, _MAX_SESSIONS_KEY, _APPLIED.pack(limit))


class KVStateMachine:
    """The KV state of one node, in the database file ``path`` (created if missing)."""

    def __init__(
        self,
        path: str,
        *,
        batch_entries: int = 1000,
        batch_seconds: float = 0.1,
        max_sessions: int = MAX_SESSIONS,
    ):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.max_sessions = max_sessions
        self._db = DB(path)
        # The DB's lock makes this node the directory's only user: a snapshot buffer a crash
        # left behind (see FileBuffer) is nobody's now.
        remove_stale_buffers(os.path.dirname(os.path.abspath(path)))
        # _lock guards the in-memory state below; _flush_lock is held by the one thread that
        # writes a batch to the DB (taken before _lock, never while holding it).
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.batch_entries = batch_entries
        self.batch_seconds = batch_seconds
        try:
            with self._db.update() as tx:
                for name in (KV, SESSIONS, META):
                    tx.create_bucket(name, exist_ok=True)
                meta = tx.bucket(META)
                if meta.get(_FORMAT_KEY) != _FORMAT:
                    if meta.get(_FORMAT_KEY) is not None or any(True for _ in tx.bucket(SESSIONS)):
                        raise FormatVersionError(
                            "KV state of an older format with client sessions (see "
                            "keyval.kv.state); its Raft snapshots hold them too: the cluster's "
                            "data directories must be made anew",
                            path,
                            None,
                        )
                    meta.put(_FORMAT_KEY, _FORMAT)
            with self._db.view() as tx:
                raw = tx.bucket(META).get(b"applied")
                if tx.bucket(META).get(_RESTORING_KEY) is not None:
                    raw = None  # a restore was cut short: the node restores its snapshot again
                limit = tx.bucket(META).get(_MAX_SESSIONS_KEY)
                if limit is not None:  # set by the log: it wins over the default given here
                    self.max_sessions = _APPLIED.unpack(limit)[0]
                # Sessions by last use, least recent first: the next to expire.
                self._sessions_by_use = _by_last_use(tx.bucket(SESSIONS).items())
        except BaseException:
            self._db.close()
            raise
        self._durable_index = _APPLIED.unpack(raw)[0] if raw else 0
        self._applied = self._durable_index
        # Applied changes not yet in the DB, newest first: the batch being applied to, then
        # the batch being written to the DB (if a flush is under way).
        self._pending: dict[bytes, bytes | object] = {}
        self._pending_sessions: dict[bytes, bytes | object] = {}
        self._flushing: dict[bytes, bytes | object] = {}
        self._flushing_sessions: dict[bytes, bytes | object] = {}
        self._pending_count = 0
        self._batch_started = time.monotonic()

    @property
    def applied_index(self) -> int:
        """The last applied entry's index (the DB holds at least ``durable_index``)."""
        return self._applied

    @property
    def durable_index(self) -> int:
        """The applied index committed to the DB: a restart resumes after it."""
        return self._durable_index

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` after every applied entry."""
        with self._lock:
            return self._get_locked(key)

    def session(self, client: int) -> tuple[int, bytes] | None:
        """``(last sequence number, its reply)`` recorded for ``client``."""
        with self._lock:
            return self._session_locked(_SESSION.pack(client))

    # -- the Raft state machine interface ----------------------------------------------------

    def apply(self, entry: Entry) -> bytes:
        """Applies one committed entry and returns its reply (the first reply again for a
        retried client request). Writes the batch to the DB here only once it holds
        ``batch_entries`` entries; a batch due by age is left to :meth:`flush_if_due`, so that
        applying (on the Raft node's critical path) does not wait for the DB's fsync."""
        return self.apply_many([entry])[0]

    def apply_many(self, entries: list[Entry]) -> list[bytes]:
        """Applies consecutive committed entries, as :meth:`apply` each; their replies. One
        call for a node's whole ready batch, or a chunk of the log replayed on restart (then
        one DB transaction for the chunk)."""
        replies = []
        with self._lock:
            for entry in entries:
                if entry.index <= self._applied:
                    raise ValueError(f"entry {entry.index} was applied already ({self._applied})")
                replies.append(self._apply_command(entry) if entry.data else b"")
                self._applied = entry.index
            self._pending_count += len(entries)
            full = self._pending_count >= self.batch_entries
        if full:
            self.flush()
        return replies

    def _apply_command(self, entry: Entry) -> bytes:
        try:
            op, client, seq, key, value = decode_command(entry.data)
        except ValueError as exc:
            return bytes([INVALID]) + str(exc).encode()
        if op == SET_MAX_SESSIONS:
            return self._set_max_sessions_locked(key, value)
        if op == REGISTER:  # a new session, named by this entry's index
            session = _SESSION.pack(entry.index)
            self._use_session_locked(session, 0, entry.index, b"")
            return _OK + session
        session_key = _SESSION.pack(client)
        if seq:
            last = self._session_locked(session_key)
            if last is None and client >= entry.index:  # no REGISTER came before it
                return (
                    bytes([INVALID]) + b"no session %d: a client opens one with REGISTER" % client
                )
            if last is None:
                return _EXPIRED  # perhaps applied before its session expired: not again
            if seq <= last[0]:
                return last[1] if seq == last[0] else bytes([OK])  # a stale retry
        if op == PUT:  # the one op that needs no read of the current value
            if len(value) > MAX_VALUE:  # changes nothing, session too
                return bytes([INVALID]) + b"values are at most %d bytes" % MAX_VALUE
            self._pending[key] = value
            reply = _OK
        elif op == APPEND:
            current = self._get_locked(key) or b""
            if len(current) + len(value) > MAX_VALUE:  # changes nothing, session too
                return bytes([INVALID]) + b"the value would grow past %d bytes" % MAX_VALUE
            self._pending[key] = current + value
            reply = _OK
        else:
            current = self._get_locked(key)
            self._pending[key] = _DELETED
            reply = _OK if current is not None else _NOT_FOUND
        if seq:
            self._use_session_locked(session_key, seq, entry.index, reply)
        return reply

    def _use_session_locked(self, session_key: bytes, seq: int, index: int, reply: bytes) -> None:
        """Records ``seq`` and its reply, and expires the least recently used session if
        this one is new and the table is full."""
        self._pending_sessions[session_key] = _SESSION_HEAD.pack(seq, index) + reply
        by_use = self._sessions_by_use
        by_use[session_key] = index
        by_use.move_to_end(session_key)
        self._expire_sessions_locked()

    def _expire_sessions_locked(self) -> None:
        by_use = self._sessions_by_use
        while len(by_use) > self.max_sessions:
            expired, _ = by_use.popitem(last=False)
            self._pending_sessions[expired] = _DELETED

    def _set_max_sessions_locked(self, key: bytes, value: bytes) -> bytes:
        """A SET_MAX_SESSIONS entry: the limit every node uses from this entry on (the least
        recently used sessions over it expire here)."""
        if key != _MAX_SESSIONS_KEY or len(value) != _APPLIED.size or value == bytes(8):
            return bytes([INVALID]) + b"max_sessions must be a u64 of at least 1"
        self.max_sessions = _APPLIED.unpack(value)[0]
        self._expire_sessions_locked()
        return _OK

    def _get_locked(self, key: bytes) -> bytes | None:
        return self._layered_get(key, self._pending, self._flushing, KV)

    def _session_locked(self, session_key: bytes) -> tuple[int, bytes] | None:
        if session_key not in self._sessions_by_use:
            return None
        raw = self._layered_get(
            session_key, self._pending_sessions, self._flushing_sessions, SESSIONS
        )
        return _SESSION_HEAD.unpack_from(raw)[0], raw[_SESSION_HEAD.size :]

    def _layered_get(self, key: bytes, pending: dict, flushing: dict, bucket: bytes):
        """``key``'s value after every applied entry: the pending batch, then the one being
        written, then the DB; None if absent or deleted."""
        value = pending.get(key)
        if value is None:
            value = flushing.get(key)
        if value is not None:
            return None if value is _DELETED else value
        with self._db.view() as tx:
            return tx.bucket(bucket).get(key)

    def flush(self) -> None:
        """Commits every applied entry to the DB (durable on return)."""
        with self._flush_lock:
            self._write_batch()

    def flush_if_due(self) -> None:
        """Commits the pending batch if it is older than ``batch_seconds`` (a server calls this
        on its tick, so a quiet node does not hold applied entries back for long). Entries
        are applied meanwhile: the DB write holds no lock that :meth:`apply` needs."""
        with self._lock:
            due = (
                self._pending_count and time.monotonic() - self._batch_started >= self.batch_seconds
            )
        if due and self._flush_lock.acquire(blocking=False):
            try:
                self._write_batch()
            finally:
                self._flush_lock.release()

    def _write_batch(self) -> None:
        """Writes the pending batch to the DB (the caller holds ``_flush_lock``): the batch
        becomes the flushing layer, which reads still see until the DB holds it."""
        with self._lock:
            self._flushing, self._pending = self._pending, {}
            self._flushing_sessions, self._pending_sessions = self._pending_sessions, {}
            count, self._pending_count = self._pending_count, 0
            self._batch_started = time.monotonic()
            applied, limit = self._applied, self.max_sessions
            if applied == self._durable_index:
                self._flushing, self._flushing_sessions = {}, {}
                return
        try:
            with self._db.update() as tx:
                for name, layer in ((KV, self._flushing), (SESSIONS, self._flushing_sessions)):
                    bucket = tx.bucket(name)
                    for key, value in layer.items():
                        if value is _DELETED:
                            bucket.delete(key)
                        else:
                            bucket.put(key, value)
                _record_applied(tx, applied, limit)
        except BaseException:
            with self._lock:  # not written: back under the newer changes, for the next try
                self._flushing.update(self._pending)
                self._flushing_sessions.update(self._pending_sessions)
                self._pending, self._flushing = self._flushing, {}
                self._pending_sessions, self._flushing_sessions = self._flushing_sessions, {}
                self._pending_count += count
            raise
        with self._lock:
            self._durable_index = applied
            self._flushing, self._flushing_sessions = {}, {}

    def snapshot(self) -> SnapshotData:
        """The whole state (data and sessions) as of the applied index, from one read view
        (see :meth:`snapshot_reader`)."""
        return self.snapshot_reader()()

    def snapshot_reader(self) -> Callable[[], SnapshotData]:
        """Fixes the state as of the applied index (the pending batch is written, then a DB
        read view taken) and returns a call that encodes it later, on this thread, while
        entries go on being applied (the view does not block the DB's writer, nor :meth:`get`).
        Call it exactly once: it ends the view. The encoding is streamed into an unnamed file
        beside the DB, a MiB at a time, and handed back file-backed: a state of any size
        costs a buffer of memory, not its size (nor the twice that building one bytes takes)."""
        views = contextlib.ExitStack()
        with self._flush_lock:
            self._write_batch()
            with self._lock:
                applied, limit = self._applied, self.max_sessions
                tx = views.enter_context(self._db.view())

        def encode() -> SnapshotData:
            out = FileBuffer(os.path.dirname(os.path.abspath(self._db.path)))
            # In-place appends to one buffer (about half the time of a list of parts joined),
            # written out whenever it passes a chunk.
            record, length = _SNAP_RECORD.pack, _LEN.pack
            buf = bytearray(_SNAP_MAGIC + _APPLIED.pack(applied))
            buf += record(_SETTING_TAG, len(_MAX_SESSIONS_KEY)) + _MAX_SESSIONS_KEY
            buf += length(_APPLIED.size) + _APPLIED.pack(limit)
            try:
                with views:
                    for tag, name in _BUCKET_TAGS.items():
                        for key, value in tx.bucket(name).items():
                            buf += record(tag, len(key))
                            buf += key
                            buf += length(len(value))
                            buf += value
                            if len(buf) >= CHUNK_BYTES:
                                out.append(buf)
                                del buf[:]
                out.append(buf)
                return out.finish()
            except BaseException:
                out.discard()
                raise

        return encode

    def restore(self, data: SnapshotData) -> None:
        """Replaces the whole state with a snapshot's, durably; on return the DB holds it.

        The snapshot is streamed (a file-backed one is never held whole), twice: first every
        record is checked, so that one that fails to decode raises CorruptionError
        (FormatVersionError for an old one with sessions) and changes nothing; then it is
        written in transactions of about RESTORE_BATCH_BYTES, so that memory stays bounded
        whatever the state's size. From the first of those to the last the DB is marked as
        being restored, and a crash in between leaves it reporting ``applied_index`` 0: the
        Raft driver saves a snapshot before it restores it, so on start it restores that
        snapshot again (and a node never serves a state it did not finish restoring)."""
        with open_reader(data) as reader:
            applied, checks = _read_snapshot(reader, len(data), check_only=True)
            for _ in checks:
                pass
        with self._flush_lock, self._lock, open_reader(data) as reader:
            _, records = _read_snapshot(reader, len(data))
            with self._db.update() as tx:
                for name in (KV, SESSIONS):
                    tx.delete_bucket(name)
                    tx.create_bucket(name)
                tx.bucket(META).put(_RESTORING_KEY, _APPLIED.pack(applied))
            # Memory follows the DB from here, so that a failure below leaves them alike.
            self._pending.clear()
            self._pending_sessions.clear()
            self._pending_count = 0
            self._sessions_by_use = OrderedDict()
            self._applied = self._durable_index = 0
            sessions, limit = [], self.max_sessions  # a snapshot without the setting: as is
            batch_end = False
            while not batch_end:
                with self._db.update() as tx:
                    buckets = {tag: tx.bucket(name) for tag, name in _BUCKET_TAGS.items()}
                    size = 0
                    for tag, key, value in records:
                        if tag == _SETTING_TAG:
                            limit = _APPLIED.unpack(value)[0]
                            continue
                        buckets[tag].put(key, value)
                        if tag == _SESSIONS_TAG:
                            sessions.append((key, value))
                        size += len(key) + len(value)
                        if size >= RESTORE_BATCH_BYTES:
                            break
                    else:
                        batch_end = True
                        _record_applied(tx, applied, limit)
                        tx.bucket(META).delete(_RESTORING_KEY)
            self.max_sessions = limit
            self._sessions_by_use = _by_last_use(sessions)
            self._applied = self._durable_index = applied

    def close(self, flush: bool = True) -> None:
        """Closes the database; with ``flush=False`` the pending batch is dropped, as a crash
        would drop it (the Raft log replays those entries on the next start)."""
        with self._flush_lock:
            if flush:
                self._write_batch()
            with self._lock:
                self._db.close()


def _record_applied(tx, applied: int, limit: int) -> None:
    """The applied index, and the session limit in force at it, into meta (in the transaction
    that writes the state they describe)."""
    meta = tx.bucket(META)
    meta.put(b"applied", _APPLIED.pack(applied))
    meta.put(_MAX_SESSIONS_KEY, _APPLIED.pack(limit))


def _by_last_use(sessions) -> OrderedDict[bytes, int]:
    """Session keys by last use, least recent first, from ``(key, value)`` pairs."""
    order = sorted((_SESSION_HEAD.unpack_from(value)[1], key) for key, value in sessions)
    return OrderedDict((key, index) for index, key in order)


def _read_snapshot(
    reader: BinaryIO, size: int, check_only: bool = False
) -> tuple[int, Iterator[tuple[int, bytes, bytes]]]:
    """A snapshot's applied index, and its records read one by one from ``reader`` (see
    _snapshot_records); raises CorruptionError (bad magic here, a bad record when reached)."""
    head = reader.read(16)
    old = head[:8] == _OLD_SNAP_MAGIC
    if not (old or head[:8] == _SNAP_MAGIC) or len(head) < 16:
        raise CorruptionError("not a KV snapshot (bad magic)", None, 0)
    return _APPLIED.unpack_from(head, 8)[0], _snapshot_records(reader, size, old, check_only)


def _snapshot_records(
    reader: BinaryIO, size: int, old: bool, check_only: bool = False
) -> Iterator[tuple[int, bytes, bytes]]:
    """The records after the header of a snapshot of ``size`` bytes, each checked (a length
    past the end is refused before anything is read for it); with ``check_only`` it only
    checks them (yielding nothing, and not copying the keys and values of the kv bucket)."""
    # Records are cut from chunks read a MiB at a time (a few unpack_from per record, not four
    # reads); a record that runs past the chunk is completed with the next.
    buf, pos, base = b"", 0, 16  # base: the snapshot offset of buf[0]
    head, length = _SNAP_RECORD.unpack_from, _LEN.unpack_from
    while True:
        need = pos + _SNAP_RECORD.size
        if need <= len(buf):
            tag, klen = head(buf, pos)
            low, high = _KEY_LENGTHS.get(tag, (1, 0))
            if not low <= klen <= high:
                off = base + pos
                raise CorruptionError(f"bad KV snapshot record at offset {off}", None, off)
            need += klen + _LEN.size
            if need <= len(buf):
                (vlen,) = length(buf, need - _LEN.size)
                if vlen > MAX_VALUE_SIZE:
                    off = base + pos
                    raise CorruptionError(f"bad KV snapshot record at offset {off}", None, off)
                need += vlen
                if need <= len(buf):
                    start, pos = pos, need
                    if tag != _KV_TAG or not check_only:
                        key = buf[start + _SNAP_RECORD.size : need - _LEN.size - vlen]
                        value = buf[need - vlen : need]
                        if tag != _KV_TAG:
                            _check_record(tag, key, value, old, base + pos)
                        if not check_only:
                            yield tag, key, value
                    continue
        if pos == len(buf) == size - base:
            return
        if base + need > size:
            raise CorruptionError(f"KV snapshot truncated at offset {base + pos}", None, base + pos)
        more = reader.read(max(CHUNK_BYTES, need - len(buf)))
        if not more:  # the data is shorter than it said (a file truncated under us)
            raise CorruptionError(f"KV snapshot truncated at offset {base + pos}", None, base + pos)
        buf, base, pos = buf[pos:] + more, base + pos, 0


def _check_record(tag: int, key: bytes, value: bytes, old: bool, off: int) -> None:
    """Raises if a decoded record cannot be part of a snapshot (``off``: where it ends)."""
    if tag == _SETTING_TAG:
        if key != _MAX_SESSIONS_KEY or len(value) != _APPLIED.size or value == bytes(8):
            raise CorruptionError(f"bad KV snapshot setting at offset {off}", None, off)
    elif tag not in _BUCKET_TAGS:
        raise CorruptionError(f"bad KV snapshot record at offset {off}", None, off)
    elif tag == _SESSIONS_TAG:
        if old:
            raise FormatVersionError(
                "a KVSNAP01 snapshot with client sessions (see keyval.kv.state)", None, off
            )
        if len(key) != _SESSION.size or len(value) < _SESSION_HEAD.size:
            raise CorruptionError(f"bad KV snapshot session at offset {off}", None, off)
