"""A pure-Python framed log: the baseline keyval's C WAL has to beat.

It is what a competent Python programmer writes in an afternoon: a struct header, ``zlib.crc32``
and a buffered file, with an optional ``fdatasync`` per append. It exists only to be measured
against, so it has no segments, no recovery and no torn-tail handling.

File format (one file, records back to back, little-endian)::

    offset  size  field
    0       4     crc32   zlib.crc32 of the type byte followed by the payload
    4       4     length  payload length in bytes
    8       1     type    caller-defined record type, 0..255
    9       n     payload

A record is valid when the whole header and payload are present and the CRC matches. The
reader raises :class:`keyval.errors.CorruptionError` (path, offset) on the first invalid record.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from keyval.errors import CorruptionError

HEADER = struct.Struct("<IIB")
BUFFER_SIZE = 1 << 20
# Single-byte prefixes precomputed so the CRC of (type, payload) costs one crc32 call per record.
_TYPE_BYTES = [bytes([t]) for t in range(256)]


class FramedLogWriter:
    """Appends framed records to one growing file through a 1 MiB user-space buffer.

    ``sync_each=True`` makes every :meth:`append` flush and ``fdatasync`` before returning, i.e.
    durable on return; otherwise records are durable after :meth:`sync` or :meth:`close`.
    Thread-safe: one lock serialises appends (there is no group commit; that is the point).
    """

    def __init__(self, path: str | os.PathLike[str], *, sync_each: bool) -> None:
        self.path = Path(path)
        self.sync_each = sync_each
        self._file = open(self.path, "ab", buffering=BUFFER_SIZE)  # noqa: SIM115 (owned until close)
        self._lock = threading.Lock()
        self._next_seq = 1

    def append(self, payload: bytes, type: int = 1) -> int:
        """Append one record; return its sequence number (1, 2, ...)."""
        crc = zlib.crc32(payload, zlib.crc32(_TYPE_BYTES[type]))
        header = HEADER.pack(crc, len(payload), type)
        with self._lock:
            self._file.write(header)
            self._file.write(payload)
            if self.sync_each:
                self._file.flush()
                os.fdatasync(self._file.fileno())
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def append_many(self, payloads: list[bytes], type: int = 1) -> tuple[int, int]:
        """Append the records in order (one fdatasync at the end when ``sync_each``)."""
        type_crc = zlib.crc32(_TYPE_BYTES[type])
        pack = HEADER.pack
        with self._lock:
            write = self._file.write
            for payload in payloads:
                write(pack(zlib.crc32(payload, type_crc), len(payload), type))
                write(payload)
            if self.sync_each:
                self._file.flush()
                os.fdatasync(self._file.fileno())
            first = self._next_seq
            self._next_seq += len(payloads)
            return first, self._next_seq - 1

    def sync(self) -> None:
        """Make every record appended so far durable."""
        with self._lock:
            self._file.flush()
            os.fdatasync(self._file.fileno())

    def close(self) -> None:
        """Sync and close; the writer cannot be used afterwards."""
        with self._lock:
            if self._file.closed:
                return
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> FramedLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_framed_log(path: str | os.PathLike[str]) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(seq, type, payload)`` for every record of the file, checking every CRC.

    Reads 1 MiB at a time, so memory stays bounded however large the log is.
    Raises :class:`CorruptionError` at the first record that is truncated or fails its CRC.
    """
    header_size = HEADER.size
    unpack_from = HEADER.unpack_from
    crc32 = zlib.crc32
    seq = 0
    buf_offset = 0  # file offset of buf[0]
    buf = b""
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(BUFFER_SIZE):
            # A record may straddle two chunks: its start stays in buf until it is whole.
            buf = buf + chunk if buf else chunk
            pos = 0
            end = len(buf)
            while pos + header_size <= end:
                crc, length, rtype = unpack_from(buf, pos)
                stop = pos + header_size + length
                if stop > end:
                    break
                payload = buf[pos + header_size : stop]
                if crc32(payload, crc32(_TYPE_BYTES[rtype])) != crc:
                    raise CorruptionError("CRC mismatch", str(path), buf_offset + pos)
                seq += 1
                yield seq, rtype, payload
                pos = stop
            buf = buf[pos:]
            buf_offset += pos
    if buf:
        raise CorruptionError("truncated record at end of log", str(path), buf_offset)
