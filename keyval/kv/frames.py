"""The frames keyval nodes and clients exchange over TCP, and their incremental decoder.

TCP delivers a byte stream; a frame gives it boundaries. Layout (version 1), big-endian::

    offset  size  field     meaning
    0       4     length    u32: number of payload bytes (not counting this header or the check)
    4       1     version   u8: 1
    5       1     kind      u8: what the payload is (KIND_* below); the transport never parses it
    6       n     payload   ``length`` bytes
    6+n     4     check     u32: low 32 bits of xxh3_64 over bytes 4 .. 6+n (version, kind, payload)

Validity, checked in this order as soon as the bytes concerned have arrived: the version byte is
1; ``length`` is at most the receiver's maximum (checked on the 6-byte header, *before* any of the
body is buffered, so a hostile or corrupt length cannot make a node allocate gigabytes); the
check matches. Any failure raises :class:`FrameError` and the connection must be closed: after a
bad frame the stream has no trustworthy boundary left to resynchronise on.

Why xxh3 rather than CRC32C: keyval already depends on ``xxhash`` (DB pages and snapshot files use
xxh3_64), it runs at memory speed from Python, while CRC32C would need a new dependency (the
standard library's ``zlib.crc32`` is the other polynomial). TCP's own 16-bit checksum misses
roughly one corrupted segment in 65,536, and a framing bug (a length off by one) would otherwise
be read as a different, plausible frame. 32 bits of the 64-bit hash suffice to detect both.

Why the version before the kind, and checked first: a connection from something that does not
speak this protocol (an HTTP probe, a stray telnet) fails on byte 4, with a clear message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import xxhash

from keyval.errors import KeyvalError

VERSION = 1
HEADER = struct.Struct(">IBB")  # length, version, kind
CHECK = struct.Struct(">I")
OVERHEAD = HEADER.size + CHECK.size
# Large enough for a Raft append of a full batch or a snapshot chunk, small enough that a peer
# cannot make another buffer a big share of its memory per connection.
DEFAULT_MAX_PAYLOAD = 8 * 2**20
MAX_KIND = 255

# Frame kinds. The transport gives meaning to HELLO, REQUEST and RESPONSE only; the payload of
# RAFT (an encoded keyval.raft.messages.Message) is opaque to it.
KIND_HELLO = 1  # first frame of a peer connection; payload: u64 sender node id
KIND_RAFT = 2  # peer to peer: one encoded Raft message
KIND_REQUEST = 3  # client to server; answered by exactly one KIND_RESPONSE on the same connection
KIND_RESPONSE = 4  # server to client: the answer to the oldest unanswered request

HELLO = struct.Struct(">Q")


class FrameError(KeyvalError, ValueError):
    """The bytes received are not a valid frame stream; close the connection they came on."""


class Frame(NamedTuple):
    kind: int
    payload: bytes


def _check(body: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(body) & 0xFFFFFFFF


def encode(kind: int, payload: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """One frame carrying ``payload``. Raises ``ValueError`` for a kind outside 0..255 and
    :class:`FrameError` for a payload longer than ``max_payload`` (the receiver would refuse it)."""
    if not 0 <= kind <= MAX_KIND:
        raise ValueError(f"frame kind {kind} is not a u8")
    if len(payload) > max_payload:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the maximum of {max_payload}")
    head = HEADER.pack(len(payload), VERSION, kind)
    body = head[4:] + payload
    return head[:4] + body + CHECK.pack(_check(body))


class FrameDecoder:
    """Turns received bytes, split anywhere, back into frames.

    :meth:`feed` buffers the bytes and returns an iterator over the frames they complete, parsed
    as it is consumed: frames before a bad one are delivered, then :class:`FrameError` is raised
    at the bad one. The decoder then stays failed (every later :meth:`feed` raises the same error)
    since the stream cannot be resynchronised. Frames an iterator left unconsumed are yielded by
    the next one. The buffer holds at most what one ``recv`` added plus one incomplete frame (a
    header, then a body no longer than ``max_payload``). Not thread-safe: one decoder per
    connection, fed by its reader.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte; trimmed lazily to avoid O(n^2) copies
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Frame]:
        """Add ``data``; return an iterator over every frame now complete, in stream order."""
        if self._error is not None:
            raise self._error
        if not self._buf and type(data) is bytes:
            # The common case on a request/response connection: one read, one whole frame.
            # Parsed here, without the generator and the copies into the buffer.
            frame = self._only_frame(data)
            if frame is not None:
                return iter((frame,))
        self._buf += data
        return self._frames()

    def _only_frame(self, data: bytes) -> Frame | None:
        """The frame ``data`` holds if it is exactly one valid frame; None for anything else
        (left to the general path, which also reports the errors)."""
        if len(data) < OVERHEAD:
            return None
        length, version, kind = HEADER.unpack_from(data)
        if version != VERSION or length > self.max_payload or len(data) != OVERHEAD + length:
            return None
        body = data[4 : -CHECK.size]
        if _check(body) != CHECK.unpack_from(data, len(data) - CHECK.size)[0]:
            return None
        return Frame(kind, body[2:])

    def _frames(self) -> Iterator[Frame]:
        while self._error is None and len(self._buf) - self._pos >= HEADER.size:
            buf, pos = self._buf, self._pos
            length, version, kind = HEADER.unpack_from(buf, pos)
            if version != VERSION:
                self._fail(f"frame version {version}, expected {VERSION}")
            if length > self.max_payload:
                self._fail(f"frame of {length} bytes exceeds the maximum of {self.max_payload}")
            end = pos + HEADER.size + length + CHECK.size
            if len(buf) < end:
                break
            body = bytes(buf[pos + 4 : end - CHECK.size])
            (expected,) = CHECK.unpack_from(buf, end - CHECK.size)
            if _check(body) != expected:
                self._fail(f"frame checksum mismatch (kind {kind}, {length} bytes)")
            self._pos = end
            yield Frame(kind, body[2:])
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def _fail(self, message: str) -> None:
        self._error = FrameError(message)
        self._buf = bytearray()
        self._pos = 0
        raise self._error
