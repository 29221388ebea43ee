"""Snapshot data that need not fit in memory.

A snapshot's data is ``bytes`` or a :class:`FileData`: a read-only view of a region of an open
file, read on demand. Both are sized and sliceable (``data[a:b]`` is bytes), so the leader's
chunked sends read one chunk at a time whichever it holds; :func:`iter_chunks` and
:func:`open_reader` stream either kind, and ``bytes(data)`` reads a file-backed one whole
(for state machines small enough not to care).

A follower receives a snapshot's chunks into a buffer (:class:`MemoryBuffer` by default, or a
:class:`FileBuffer`, an unnamed file in the storage's directory that a crash leaves nothing
of); ``finish()`` hands back the data as one of the two kinds.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import weakref
from collections.abc import Iterator
from typing import BinaryIO, Protocol, Union

CHUNK_BYTES = 1 << 20  # read and write granularity when streaming a file-backed snapshot


class FileData:
    """``length`` bytes at ``offset`` of the open file ``fd``, which this object owns (it is
    closed by :meth:`close` or when the object is collected). The file may be renamed or
    unlinked meanwhile: the descriptor keeps its contents readable. Thread-safe (reads are
    ``pread``); an I/O error while reading raises OSError."""

    __slots__ = ("__weakref__", "_close", "_fd", "_length", "_offset")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"bad region: offset {offset}, length {length}")
        self._fd = fd
        self._offset = offset
        self._length = length
        self._close = weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice):
            raise TypeError("FileData supports slices only")
        start, stop, step = key.indices(self._length)
        if step != 1:
            raise ValueError("FileData supports contiguous slices only")
        return self._read(start, max(stop - start, 0))

    def __bytes__(self) -> bytes:
        return self._read(0, self._length)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (bytes, bytearray, memoryview, FileData)):
            return NotImplemented
        if len(other) != self._length:
            return False
        for off, chunk in zip(range(0, self._length, CHUNK_BYTES), self.chunks(), strict=True):
            if other[off : off + len(chunk)] != chunk:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # compared by content, as bytes, yet mutable-sized

    def __repr__(self) -> str:
        return f"FileData(fd={self._fd}, offset={self._offset}, length={self._length})"

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The data in order, ``size`` bytes at a time."""
        for off in range(0, self._length, size):
            yield self._read(off, min(size, self._length - off))

    def reader(self) -> BinaryIO:
        """A buffered binary file reading the data from its start."""
        return io.BufferedReader(_Region(self), CHUNK_BYTES)

    def close(self) -> None:
        self._close()

    def _read_into(self, start: int, view: memoryview) -> int:
        """Fills ``view`` from ``start`` with one read (straight into the caller's buffer, no
        copy); how many bytes it took, 0 only at the end of the file."""
        if not self._close.alive:
            raise ValueError("FileData is closed")
        return os.preadv(self._fd, [view], self._offset + start)

    def _read(self, start: int, n: int) -> bytes:
        if not self._close.alive:
            raise ValueError("FileData is closed")
        parts, pos, end = [], self._offset + start, self._offset + start + n
        while pos < end:
            part = os.pread(self._fd, end - pos, pos)
            if not part:  # the file shrank under us: nothing keyval writes does that
                raise OSError(f"snapshot file ends at {pos}, expected {end} bytes")
            parts.append(part)
            pos += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Region(io.RawIOBase):
    """Raw sequential reads of a FileData (for io.BufferedReader)."""

    def __init__(self, data: FileData) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), len(self._data) - self._pos)
        if n <= 0:
            return 0
        n = self._data._read_into(self._pos, memoryview(buffer)[:n])
        self._pos += n
        return n


SnapshotData = Union[bytes, FileData]  # noqa: UP007 (a runtime alias: isinstance and docs)


def iter_chunks(data: SnapshotData, size: int = CHUNK_BYTES) -> Iterator[bytes | memoryview]:
    """``data`` in order, ``size`` bytes at a time, without copying bytes."""
    if isinstance(data, FileData):
        yield from data.chunks(size)
        return
    view = memoryview(data)
    for off in range(0, len(view), size):
        yield view[off : off + size]


def open_reader(data: SnapshotData) -> BinaryIO:
    """A binary file reading ``data`` from its start (close it when done)."""
    return data.reader() if isinstance(data, FileData) else io.BytesIO(data)


class SnapshotBuffer(Protocol):
    """Where a follower gathers a snapshot's chunks, in order."""

    def __len__(self) -> int: ...

    def append(self, data: bytes) -> None: ...

    def finish(self) -> SnapshotData:
        """The whole data; the buffer is spent."""

    def discard(self) -> None:
        """Drops what was received (a newer snapshot replaces this one)."""


class MemoryBuffer:
    """Gathers the chunks in memory: for small snapshots and storages without files."""

    def __init__(self) -> None:
        self._data = bytearray()

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data

    def finish(self) -> bytes:
        data, self._data = bytes(self._data), bytearray()
        return data

    def discard(self) -> None:
        self._data = bytearray()


class FileBuffer:
    """Gathers the chunks in an unnamed file in ``directory`` (``O_TMPFILE``; where the file
    system lacks it, a named file unlinked at once), so a snapshot of any size costs a chunk
    of memory and a crash leaves no file behind. Not durable: whoever keeps the data writes
    it where it belongs (see keyval.raft.snapfile)."""

    def __init__(self, directory: str) -> None:
        self._fd = -1  # until opened: what __del__ finds if the open fails
        self._fd = _unnamed_file(directory)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        self._size = write_at(self._fd, data, self._size)

    def finish(self) -> FileData:
        fd, self._fd = self._fd, -1
        return FileData(fd, 0, self._size)

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.discard()


def write_at(fd: int, data, pos: int) -> int:
    """Writes all of ``data`` (bytes-like) at ``pos`` of ``fd``; the position after it."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        pos += written
        view = view[written:]
    return pos


# The name of a FileBuffer's file where the file system has no O_TMPFILE, for the instant
# before its unlink: what remove_stale_buffers looks for after a crash in that instant.
_STALE_PREFIX, _STALE_SUFFIX = ".keyval-buffer-", ".tmp"


def _unnamed_file(directory: str) -> int:
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix=_STALE_PREFIX, suffix=_STALE_SUFFIX, dir=directory)
        os.unlink(path)
        return fd


def remove_stale_buffers(directory: str) -> int:
    """Removes the named files FileBuffer left in ``directory`` when a crash came between
    their creation and their unlink (file systems without O_TMPFILE only); returns how many.
    Call it only while no FileBuffer of ``directory`` is being made (when opening its owner)."""
    removed = 0
    for name in os.listdir(directory):
        if name.startswith(_STALE_PREFIX) and name.endswith(_STALE_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed += 1
    return removed
