"""The WAL class: Python's view of the C write-ahead log in csrc/ (format: csrc/format.h)."""

from __future__ import annotations

import errno as _errno
import logging
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from struct import Struct

from keyval._wal_cffi import ffi, lib
from keyval.errors import (
    ClosedError,
    CorruptionError,
    FormatVersionError,
    KeyvalError,
    LockedError,
    ReadOnlyError,
    ValueTooLarge,
)

log = logging.getLogger("keyval.wal")

SYNC_MODES = {
    "none": lib.KV_SYNC_NONE,
    "always": lib.KV_SYNC_ALWAYS,
    "interval": lib.KV_SYNC_INTERVAL,
}
FAULTS = {"write": lib.KV_FAULT_WRITE, "fsync": lib.KV_FAULT_FSYNC, "prepare": lib.KV_FAULT_PREPARE}
DEFAULT_SEGMENT_SIZE = 64 * 2**20
MAX_SEGMENT_SIZE = 2**30
# A record's payload may be up to segment_size - RECORD_OVERHEAD bytes: the segment header (64)
# and its own record header (20) share the segment with it (csrc/format.h).
RECORD_OVERHEAD = 64 + 20
_BATCH_HEADER = Struct("<QIB")  # seq, length, type: the framing of kv_wal_read_batch
# replay's batches: buffer bytes and record count of the first read, then of every read.
_FIRST_READ_BUFFER, _FIRST_READ_RECORDS = 64 << 10, 256
_READ_BUFFER, _READ_RECORDS = 1 << 20, 16384


def _python_types() -> dict:
    """The Python types the C module makes at run time (see csrc/python/records.c)."""
    out: dict = {}
    if lib.kv_py_export(ffi.cast("void *", id(out))) != 0:  # pragma: no cover
        raise ImportError("keyval._wal_cffi could not make its Python types")
    return out


FramedRecords = _python_types()["FramedRecords"]


def error_from(err, code: int | None = None) -> Exception:
    """The keyval exception for a C ``kv_error``."""
    code = err.code or code
    msg = ffi.string(err.msg).decode("utf-8", "replace")
    path = ffi.string(err.path).decode("utf-8", "surrogateescape") or None
    offset = err.offset if err.offset >= 0 else None
    if code == lib.KV_ECORRUPT:
        return CorruptionError(msg, path, offset)
    if code == lib.KV_ETORN:
        exc = CorruptionError(msg, path, offset)
        exc.repairable = True
        return exc
    if code == lib.KV_EVERSION:
        return FormatVersionError(msg, path, offset)
    if code == lib.KV_EIO:
        return OSError(err.sys_errno, msg, path)
    if code == lib.KV_EFAILED:
        exc = ReadOnlyError(f"{path}: {msg}")
        exc.__cause__ = OSError(err.sys_errno, os.strerror(err.sys_errno), path)
        return exc
    if code == lib.KV_ETOOBIG:
        return ValueTooLarge(msg)
    if code == lib.KV_EINVAL:
        return ValueError(msg)
    if code == lib.KV_ERANGE:
        return IndexError(msg)
    if code == lib.KV_EBUSY:
        return LockedError(f"{path}: {msg}")
    return KeyvalError(f"{path}: {msg}")


class WAL:
    """A segmented write-ahead log in the directory ``path`` (created if missing).

    Records are ``bytes`` with a caller-defined ``type`` (0..255), numbered by consecutive
    sequence numbers from 1. Each record carries a CRC32C over its header and payload.

    Durability, by ``sync``:

    - ``"always"``: :meth:`append` and :meth:`append_many` return once the records are on stable
      storage (``fdatasync``). Appenders on several threads share one fsync (group commit).
    - ``"interval"``: durable within ``sync_interval`` seconds (a background thread syncs).
    - ``"none"``: durable after :meth:`sync` or :meth:`close`.

    After a crash, opening the log yields a prefix of what was appended that holds every
    durable record; a torn record at the very end is cut off (logged, and reported by
    :attr:`torn_tail`). Any other bad record raises :class:`~keyval.errors.CorruptionError`
    naming the file and offset; nothing is skipped.

    A failed write or fsync makes the log fail-stop: that call and every later write raise
    :class:`~keyval.errors.ReadOnlyError` (caused by the ``OSError``); reads still work and show
    the durable records. Reopen to go on. Only no space for a *new* segment is not fail-stop
    (nothing was written): it raises ``OSError(ENOSPC)`` and a later append may succeed.

    A record must fit in one segment: at most ``segment_size - RECORD_OVERHEAD`` (84) payload
    bytes, else :class:`~keyval.errors.ValueTooLarge`. Every method is thread-safe; the C core
    releases the GIL for writes, fsyncs and reads. One process at a time may open a log
    (:class:`~keyval.errors.LockedError` otherwise).
    """

    __slots__ = ("_closed", "_path", "_sync", "_w")

    def __init__(
        self,
        path: str | os.PathLike[str],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        sync: str = "always",
        sync_interval: float = 0.1,
        *,
        buffer_size: int = 1 << 20,
        _check_only: bool = False,
    ) -> None:
        self._w = None
        self._closed = False
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be str or os.PathLike[str], not {type(path).__name__}")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {sorted(SYNC_MODES)}, not {sync!r}")
        for name, value in (("segment_size", segment_size), ("buffer_size", buffer_size)):
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if buffer_size < 4096:
            raise ValueError("buffer_size must be at least 4096 bytes")
        if sync == "interval" and not sync_interval > 0:
            raise ValueError("sync_interval must be > 0")
        self._path = path
        self._sync = sync
        opts = ffi.new(
            "kv_options *",
            {
                "segment_size": segment_size if 0 < segment_size <= MAX_SEGMENT_SIZE else 0,
                "sync_mode": SYNC_MODES[sync],
                "sync_interval": float(sync_interval),
                "buffer_size": buffer_size,
                "flags": lib.KV_OPEN_CHECK if _check_only else 0,
            },
        )
        err = ffi.new("kv_error *")
        handle = lib.kv_wal_open(os.fsencode(path), opts, err)
        if handle == ffi.NULL:
            raise error_from(err)
        # Freed only when no thread holds the handle any more; close() just releases it.
        self._w = ffi.gc(handle, lib.kv_wal_free)
        torn = self.torn_tail
        if torn is not None and not _check_only:
            log.warning(
                "%s: cut a torn tail of %d bytes at offset %d (a write a crash cut short; "
                "it was never acknowledged)",
                torn[0],
                torn[2],
                torn[1],
            )

    # -- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes, type: int = 0) -> int:
        """Appends one record and returns its sequence number (see the class for durability)."""
        if payload.__class__ is not bytes:
            raise TypeError(f"payload must be bytes, not {payload.__class__.__name__}")
        if not 0 <= type <= 255:
            raise ValueError(f"type must be in 0..255, not {type}")
        seq = lib.kv_wal_append(self._w, type, payload, len(payload))
        if seq < 0:
            self._raise(seq)
        return seq

    def append_many(
        self, payloads: Iterable[bytes], type: int | Sequence[int] = 0
    ) -> tuple[int, int]:
        """Appends the records in order as one batch (one C call, and in ``"always"`` mode one
        fsync) and returns ``(first_seq, last_seq)``. ``type`` is one type for all, or one per
        record. A batch with a non-bytes item or an oversized record is refused whole, before
        anything is written. After a crash, a batch that fits in one segment is there whole or
        not at all; a bigger one spans segments, and a crash may leave a prefix of it."""
        payloads = payloads if isinstance(payloads, list) else list(payloads)
        if not payloads:
            raise ValueError("append_many needs at least one record")
        for p in payloads:
            if p.__class__ is not bytes:
                raise TypeError(f"payloads must be bytes, not {p.__class__.__name__}")
        types = ffi.NULL
        if isinstance(type, int):
            if not 0 <= type <= 255:
                raise ValueError(f"type must be in 0..255, not {type}")
        else:
            try:
                per_record = bytes(type)
            except (TypeError, ValueError):
                raise ValueError("types must be ints in 0..255") from None
            if len(per_record) != len(payloads):
                raise ValueError(f"{len(per_record)} types for {len(payloads)} records")
            types, type = per_record, 0
        try:
            lens = array("I", map(len, payloads))
        except OverflowError:
            raise ValueTooLarge("a record of 4 GiB or more cannot be stored") from None
        first = lib.kv_wal_append_batch(
            self._w, type, types, b"".join(payloads), ffi.from_buffer("uint32_t[]", lens), len(lens)
        )
        if first < 0:
            self._raise(first)
        return first, first + len(lens) - 1

    def sync(self) -> None:
        """Makes every record appended so far durable."""
        rc = lib.kv_wal_sync(self._w)
        if rc < 0:
            self._raise(rc)

    def truncate_front(self, seq: int) -> None:
        """Forgets the records before ``seq`` (compaction): durable on return; whole segments
        below it are deleted. ``seq`` may be at most :attr:`next_seq`."""
        self._check_seq(seq)
        rc = lib.kv_wal_truncate_front(self._w, seq)
        if rc < 0:
            self._raise(rc)

    def truncate_back(self, seq: int) -> None:
        """Forgets the records after ``seq``; durable on return: none of them comes back after a
        crash, even one during this call. The next append gets ``seq + 1``."""
        self._check_seq(seq)
        rc = lib.kv_wal_truncate_back(self._w, seq)
        if rc < 0:
            self._raise(rc)

    # -- reading ---------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """The first record's sequence number; 0 when the log is empty."""
        return lib.kv_wal_first_seq(self._open_handle())

    @property
    def last_seq(self) -> int:
        """The last record's sequence number; 0 when the log is empty."""
        return lib.kv_wal_last_seq(self._open_handle())

    @property
    def next_seq(self) -> int:
        """The sequence number the next append gets (numbering goes on after truncations)."""
        return lib.kv_wal_next_seq(self._open_handle())

    @property
    def path(self) -> str:
        return self._path

    def read(self, seq: int) -> bytes:
        """The payload of record ``seq``; ``IndexError`` outside ``first_seq..last_seq``."""
        self._check_seq(seq)
        if not seq:
            raise IndexError("sequence numbers start at 1")
        size = 4096
        while True:
            buf = bytearray(size)
            n, used = ffi.new("size_t *"), ffi.new("size_t *")
            rc = lib.kv_wal_read_batch(self._w, seq, 1, ffi.from_buffer(buf), size, n, used)
            if rc == -lib.KV_ESPACE:
                size = used[0]
                continue
            if rc < 0:
                self._raise(rc)
            if n[0] == 0:
                raise IndexError(f"seq {seq} is past the end of the log ({self.last_seq})")
            length = _BATCH_HEADER.unpack_from(buf)[1]
            return bytes(buf[16 : 16 + length])

    def replay(
        self, start: int | None = None, stop: int | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
        """Yields ``(seq, type, payload)`` for records ``start`` (default: the first) up to
        ``stop`` (exclusive; default: the end, including records appended while iterating), in
        order, each CRC-verified as it is read. A wrong type or negative seq raises at once; a
        seq outside the log (``IndexError``) or a damaged record (``CorruptionError``) raises
        when iteration reaches it, once every record before it has been yielded."""
        seq = self.first_seq if start is None else start
        self._check_seq(seq)
        if stop is not None:
            self._check_seq(stop)
        if seq == 0:
            if start is not None:  # as read(0): not "from the first", which is start=None
                raise IndexError("sequence numbers start at 1")
            return iter(())
        # The records come from C a batch at a time and each batch is handed out by a C
        # iterator (FramedRecords): no Python bytecode runs per record, which is what a 100 B
        # record needs.
        return chain.from_iterable(self._replay_batches(seq, stop))

    def _replay_batches(self, seq: int, stop: int | None) -> Iterator[Iterator[tuple]]:
        """One iterator of ``(seq, type, payload)`` per batch read by ``kv_wal_read_batch``.

        Every batch is read into the same buffer: chain drops a batch's iterator, which lets
        the buffer go once its last record is out, before it asks for the next batch."""
        # Small reads stay cheap; a long replay grows the buffer to amortise the C calls.
        cap, max_records = _FIRST_READ_BUFFER, _FIRST_READ_RECORDS
        out = bytearray(cap)
        n, used = ffi.new("size_t *"), ffi.new("size_t *")
        while stop is None or seq < stop:
            want = max_records if stop is None else min(max_records, stop - seq)
            rc = lib.kv_wal_read_batch(self._w, seq, want, ffi.from_buffer(out), len(out), n, used)
            if rc == -lib.KV_ESPACE:
                out = bytearray(max(used[0], len(out)))
                continue
            if rc < 0:
                self._raise(rc)
            count = n[0]
            if count == 0:
                return
            yield FramedRecords(out, used[0], count)
            seq += count
            # Grown once the first batch came back full: the log goes on past it.
            if max_records < _READ_RECORDS and (count == want or 2 * used[0] > cap):
                cap, max_records = _READ_BUFFER, _READ_RECORDS
                out = bytearray(max(cap, len(out)))

    # -- state -----------------------------------------------------------------------------

    @property
    def torn_tail(self) -> tuple[str, int, int] | None:
        """``(segment path, offset, bytes)`` of the torn tail cut when the log was opened."""
        st = self._stats()
        if st.torn_offset < 0:
            return None
        seg = self.segments()[-1]["path"] if lib.kv_wal_segment_count(self._w) else self._path
        return seg, st.torn_offset, st.torn_bytes

    def stats(self) -> dict:
        """Counters: segments, seq range, durable seq, bytes, writes, fsyncs, bytes written,
        and how many writes went straight to the device (O_DIRECT, see csrc/direct.c)."""
        st = self._stats()
        return {
            "segments": st.segments,
            "first_seq": st.first_seq,
            "last_seq": st.last_seq,
            "next_seq": st.next_seq,
            "durable_seq": st.durable_seq,
            "bytes": st.bytes,
            "writes": st.writes,
            "fsyncs": st.fsyncs,
            "bytes_written": st.bytes_written,
            "direct_writes": st.direct_writes,
            "next_segment_prepared": bool(st.prepared),
            "failed": bool(st.failed),
        }

    def segments(self) -> list[dict]:
        """One dict per segment file: id, path, first_seq, records, bytes used, file size."""
        out = []
        info = ffi.new("kv_segment_info *")
        for i in range(lib.kv_wal_segment_count(self._open_handle())):
            if lib.kv_wal_segment_info(self._w, i, info) == 0:
                out.append(
                    {
                        "id": info.id,
                        "path": ffi.string(info.path).decode("utf-8", "surrogateescape"),
                        "first_seq": info.first_seq,
                        "records": info.count,
                        "bytes": info.bytes,
                        "file_size": info.file_size,
                    }
                )
        return out

    def close(self) -> None:
        """Syncs and closes (durable on return, in every sync mode). Idempotent: a later
        call only waits until the first is done (another thread's) and raises nothing.

        Raises ReadOnlyError if the log failed (fail-stop) with records appended but not
        durable and no earlier call raised it (a background sync of ``"interval"``)."""
        if self._w is None:
            return
        first = not self._closed
        self._closed = True
        err = ffi.new("kv_error *")
        rc = lib.kv_wal_close(self._w, err)
        if rc < 0 and first:
            raise error_from(err, -rc)

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WAL({self._path!r}, sync={self._sync!r})"

    # -- tests -----------------------------------------------------------------------------

    def inject_fault(
        self, op: str, errno: int = _errno.EIO, after: int = 0, times: int = 1
    ) -> None:
        """Test hook: after ``after`` more successful ``op`` calls ("write", "fsync" or
        "prepare" of a new segment), the next ``times`` calls fail with ``errno``."""
        lib.kv_wal_inject_fault(self._w, FAULTS[op], errno, after, times)

    # -- internals -------------------------------------------------------------------------

    def _stats(self):
        st = ffi.new("kv_stats *")
        lib.kv_wal_stats(self._open_handle(), st)
        return st

    def _open_handle(self):
        """The C handle, for calls that would still answer after close (from the state
        close left behind): a closed log raises ClosedError for them too."""
        if self._closed:
            raise ClosedError(f"WAL {self._path} is closed")
        return self._w

    def _findings(self) -> list[CorruptionError]:
        err = ffi.new("kv_error *")
        out = []
        for i in range(lib.kv_wal_finding_count(self._w)):
            lib.kv_wal_finding(self._w, i, err)
            out.append(error_from(err))
        return out

    @staticmethod
    def _check_seq(seq: int) -> None:
        if type(seq) is not int:
            raise TypeError(f"seq must be an int, not {type(seq).__name__}")
        if seq < 0:
            raise ValueError(f"seq must be >= 0, not {seq}")

    def _raise(self, rc: int):
        code = -rc
        if code == lib.KV_ECLOSED:
            raise ClosedError(f"WAL {self._path} is closed")
        err = ffi.new("kv_error *")
        lib.kv_wal_last_error(self._w, err)
        if err.code != code:  # another thread's error since: say only what we know
            err.code, err.msg = code, b""
        raise error_from(err, code)
