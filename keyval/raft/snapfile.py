"""Snapshot files: one checksummed file per Raft snapshot, written atomically.

::

    off  size  field (little-endian)
      0     8  magic "KVRAFTSN"
      8     4  format version (1)
     12     4  header size (64)
     16     8  index of the last entry the snapshot covers
     24     8  term of that entry
     32     8  data length
     40     8  xxh3_64 of the data
     48     8  reserved, zero
     56     8  xxh3_64 of bytes 0..55
     64     -  data

The name is ``<index:016x>-<term:016x>.snap``. A file is written as ``<name>.tmp``, fsynced,
renamed, and its directory fsynced, so a crash leaves either the whole file under its name or a
``.tmp`` that the next open removes.
"""

from __future__ import annotations

import contextlib
import os
import struct

import xxhash

from keyval.dirsync import fsync_dir
from keyval.errors import CorruptionError, FormatVersionError
from keyval.raft.records import Snapshot
from keyval.raft.snapdata import FileData, iter_chunks, write_at

MAGIC = b"KVRAFTSN"
VERSION = 1
HEADER = struct.Struct("<8sII QQQQ Q Q")
assert HEADER.size == 64
SUFFIX = ".snap"
TMP_SUFFIX = ".tmp"


def file_name(index: int, term: int) -> str:
    return f"{index:016x}-{term:016x}{SUFFIX}"


def parse_name(name: str) -> tuple[int, int] | None:
    """``(index, term)`` of a snapshot file name, or None if it is not one."""
    if not name.endswith(SUFFIX) or len(name) != 33 + len(SUFFIX) or name[16] != "-":
        return None
    try:
        return int(name[:16], 16), int(name[17:33], 16)
    except ValueError:
        return None


def write(directory: str, snap: Snapshot) -> str:
    """Writes ``snap`` durably into ``directory``; returns its path. The data is streamed (a
    file-backed snapshot is copied a chunk at a time, never held whole)."""
    path = os.path.join(directory, file_name(snap.index, snap.term))
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            digest, length, pos = xxhash.xxh3_64(), 0, HEADER.size
            for chunk in iter_chunks(snap.data):
                digest.update(chunk)
                length += len(chunk)
                pos = write_at(fd, chunk, pos)
            # The header last: it needs the length and digest of what was streamed.
            head = HEADER.pack(
                MAGIC, VERSION, HEADER.size, snap.index, snap.term, length, digest.intdigest(), 0, 0
            )
            write_at(fd, head[:56] + struct.pack("<Q", xxhash.xxh3_64_intdigest(head[:56])), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # Nothing is left behind by a write that failed (a full disk, unreadable data):
        # the caller was told, and fsck would otherwise report an interrupted write.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.rename(tmp, path)  # after the data is durable, so the name never points at a torn file
    fsync_dir(directory)
    return path


def read_header(path: str) -> tuple[int, int, int, int]:
    """``(index, term, length, data digest)``, header verified; raises CorruptionError."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise CorruptionError(f"snapshot header truncated ({len(head)} bytes)", path, 0)
    magic, version, size, index, term, length, digest, _, check = HEADER.unpack(head)
    if magic != MAGIC:
        raise CorruptionError("not a keyval snapshot file (bad magic)", path, 0)
    if version != VERSION:
        raise FormatVersionError(
            f"snapshot of format version {version}; this keyval reads version {VERSION}", path, 8
        )
    if size != HEADER.size or check != xxhash.xxh3_64_intdigest(head[:56]):
        raise CorruptionError("snapshot header fails its checksum", path, 0)
    return index, term, length, digest


def read(path: str) -> Snapshot:
    """The snapshot in ``path``, every byte verified (a chunk at a time); raises
    CorruptionError naming the file. Its data is a :class:`~keyval.raft.snapdata.FileData`
    on the open file: later reads need no path, and a rename or unlink does not disturb them.
    A file named as a snapshot must hold that snapshot: another one's file copied or renamed
    over it would be restored in its place."""
    index, term, length, digest = read_header(path)
    named = parse_name(os.path.basename(path))
    if named is not None and named != (index, term):
        raise CorruptionError(
            f"the header disagrees with the file name: it holds the snapshot at index {index}"
            f" term {term}",
            path,
            0,
        )
    fd = os.open(path, os.O_RDONLY)
    try:
        actual = os.fstat(fd).st_size - HEADER.size
        if actual != length:
            raise CorruptionError(
                f"snapshot data is {actual} bytes, header says {length}", path, HEADER.size
            )
        data = FileData(fd, HEADER.size, length)
    except BaseException:
        os.close(fd)
        raise
    check = xxhash.xxh3_64()
    for chunk in data.chunks():
        check.update(chunk)
    if check.intdigest() != digest:
        data.close()
        raise CorruptionError("snapshot data fails its checksum", path, HEADER.size)
    return Snapshot(index=index, term=term, data=data)
