"""The messages Raft peers exchange, and their compact binary encoding.

A message is one-way: a request and its response are two messages, each carrying the sender's
term. The consensus core (:mod:`keyval.raft.core`) consumes and produces them; a transport (the
simulated network in tests, TCP later) moves them between nodes, encoded with :func:`encode`.

Wire format (version 1), all integers unsigned LEB128 varints unless noted::

    field        size     meaning
    version      u8       1
    type         u8       MsgType value
    to           varint   receiver id
    frm          varint   sender id
    term         varint   sender's current term (the candidate's next term for PRE_VOTE)
    log_term     varint   term of the entry at ``index`` (or a reject's conflict-term hint)
    index        varint   log index the message is about
    commit       varint   the sender's commit index
    hint_index   varint   on a rejected append: where the follower's log may match
    flags        u8       bit 0 reject, bit 1 snapshot chunk present; other bits must be 0
    n_entries    varint   then per entry: index varint, term varint, length varint, bytes
    context      varint   length, then bytes (ReadIndex request id)
    [chunk]      if flag bit 1: index, term, offset, total varints; length varint, bytes

Nothing may follow the last field. :func:`decode` raises :class:`MessageDecodeError` (a
``ValueError``) for any input that is not exactly one well-formed message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from keyval.errors import MessageDecodeError
from keyval.raft.records import Entry

VERSION = 1
FLAG_REJECT = 0x01
FLAG_CHUNK = 0x02
# A varint of more than 10 bytes cannot hold a 64-bit value; refusing longer ones bounds the
# work a corrupt or hostile buffer can cause.
MAX_VARINT_BYTES = 10
MAX_VALUE = 2**64 - 1


class MsgType(enum.IntEnum):
    APP = 1  # AppendEntries: entries after (index, log_term), plus the leader's commit
    APP_RESP = 2  # index = last index now matching (or the rejected index when reject)
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5  # "would you vote for me at term?" without anyone changing term
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # commit = min(follower match, leader commit); index = last entry sent before
    # it (the answer echoes it: entries up to there unacknowledged mean appends were lost);
    # context = ReadIndex round
    HEARTBEAT_RESP = 8
    SNAP = 9  # one chunk of an InstallSnapshot transfer
    SNAP_RESP = 10  # chunk.offset = bytes received so far; reject = restart from 0
    READ_INDEX = 11  # follower forwards a read request to the leader
    READ_INDEX_RESP = 12  # index = the read index the follower must apply before reading


RESPONSES = frozenset(
    {
        MsgType.APP_RESP,
        MsgType.VOTE_RESP,
        MsgType.PRE_VOTE_RESP,
        MsgType.HEARTBEAT_RESP,
        MsgType.SNAP_RESP,
        MsgType.READ_INDEX_RESP,
    }
)


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Bytes ``[offset, offset + len(data))`` of the snapshot at (``index``, ``term``) whose data
    is ``total`` bytes long. In a SNAP_RESP, ``offset`` is how many bytes the follower holds."""

    index: int
    term: int
    offset: int
    total: int
    data: bytes = b""

    @property
    def done(self) -> bool:
        return self.offset + len(self.data) >= self.total


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Fields a type does not use stay at their defaults."""

    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    chunk: SnapshotChunk | None = None
    context: bytes = b""


def _check_contents(
    mtype: MsgType,
    term: int,
    log_term: int,
    index: int,
    entries: list[Entry],
    chunk: SnapshotChunk | None,
) -> None:
    """What no correct peer sends, though it decodes: refused here, as a malformed frame is,
    rather than stepped into the consensus core, whose invariants it would break.

    Appended entries follow ``index`` one by one, with terms that never go back, from the term
    of the entry before them up to the sender's; a snapshot chunk names an index and a term,
    and lies within the snapshot's total size."""
    if mtype is MsgType.APP and entries:
        prev_index, prev_term = index, log_term
        for e in entries:
            if e.index != prev_index + 1:
                raise MessageDecodeError(f"append after {index}: entry {e.index} out of order")
            if not prev_term <= e.term <= term:
                raise MessageDecodeError(
                    f"append at term {term}: entry {e.index} has term {e.term} after {prev_term}"
                )
            prev_index, prev_term = e.index, e.term
    if chunk is not None and (chunk.index < 1 or chunk.term < 1):
        raise MessageDecodeError(f"snapshot chunk at index {chunk.index}, term {chunk.term}")
    if chunk is not None and chunk.offset + len(chunk.data) > chunk.total:
        raise MessageDecodeError(
            f"snapshot chunk of {len(chunk.data)} bytes at {chunk.offset} past its total "
            f"{chunk.total}"
        )


def _put(out: bytearray, value: int) -> None:
    if value < 0 or value > MAX_VALUE:
        raise ValueError(f"cannot encode {value}: outside 0..2**64-1")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, data: bytes) -> None:
    _put(out, len(data))
    out += data


def encode(msg: Message) -> bytes:
    """The wire form of ``msg`` (see the module docstring)."""
    out = bytearray((VERSION, int(msg.type)))
    # Most values fit in one byte: appended directly, without a call (this runs for every Raft
    # message a node sends).
    for value in (msg.to, msg.frm, msg.term, msg.log_term, msg.index, msg.commit, msg.hint_index):
        if 0 <= value < 0x80:
            out.append(value)
        else:
            _put(out, value)
    flags = (FLAG_REJECT if msg.reject else 0) | (FLAG_CHUNK if msg.chunk is not None else 0)
    out.append(flags)
    _put(out, len(msg.entries))
    for e in msg.entries:
        _put(out, e.index)
        _put(out, e.term)
        _put_bytes(out, e.data)
    _put_bytes(out, msg.context)
    if msg.chunk is not None:
        c = msg.chunk
        for value in (c.index, c.term, c.offset, c.total):
            _put(out, value)
        _put_bytes(out, c.data)
    return bytes(out)


_TYPES = {t.value: t for t in MsgType}


def _truncated(pos: int) -> MessageDecodeError:
    return MessageDecodeError(f"truncated message at offset {pos}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the offset after it. Every message decodes a dozen of these,
    on the path of every Raft message a node receives: one-byte values take the short way."""
    try:
        b = buf[pos]
    except IndexError:
        raise _truncated(pos) from None
    if b < 0x80:
        return b, pos + 1
    start, value, shift = pos, 0, 0
    while True:
        if shift >= 7 * MAX_VARINT_BYTES:
            raise MessageDecodeError(
                f"varint at offset {start} longer than {MAX_VARINT_BYTES} bytes"
            )
        try:
            b = buf[pos]
        except IndexError:
            raise _truncated(pos) from None
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value > MAX_VALUE:
                raise MessageDecodeError(f"varint at offset {start} exceeds 64 bits")
            return value, pos
        shift += 7


def _bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _varint(buf, pos)
    if n > len(buf) - pos:
        raise MessageDecodeError(f"length {n} at offset {pos} runs past the end")
    return buf[pos : pos + n], pos + n


def decode(buf: bytes) -> Message:
    """The message whose wire form is exactly ``buf``.

    Raises :class:`MessageDecodeError` for a truncated, over-long or malformed buffer, an
    unknown version, type or flag, and for entries whose index or term is 0.
    """
    buf = bytes(buf)
    if len(buf) < 2:
        raise _truncated(len(buf))
    version, raw_type = buf[0], buf[1]
    if version != VERSION:
        raise MessageDecodeError(f"unknown message version {version}")
    mtype = _TYPES.get(raw_type)
    if mtype is None:
        raise MessageDecodeError(f"unknown message type {raw_type}")
    to, pos = _varint(buf, 2)
    frm, pos = _varint(buf, pos)
    term, pos = _varint(buf, pos)
    log_term, pos = _varint(buf, pos)
    index, pos = _varint(buf, pos)
    commit, pos = _varint(buf, pos)
    hint_index, pos = _varint(buf, pos)
    if pos >= len(buf):
        raise _truncated(pos)
    flags = buf[pos]
    pos += 1
    if flags & ~(FLAG_REJECT | FLAG_CHUNK):
        raise MessageDecodeError(f"unknown flags {flags:#x}")
    n_entries, pos = _varint(buf, pos)
    # Each entry needs at least 3 bytes, so a count beyond that is corrupt; checking first
    # keeps a forged count from making us loop for a long time.
    if n_entries * 3 > len(buf) - pos:
        raise MessageDecodeError(f"{n_entries} entries cannot fit in the message")
    entries = []
    for _ in range(n_entries):
        e_index, pos = _varint(buf, pos)
        e_term, pos = _varint(buf, pos)
        if e_index == 0 or e_term == 0:
            raise MessageDecodeError(f"entry with index {e_index} and term {e_term}")
        data, pos = _bytes(buf, pos)
        entries.append(Entry(e_index, e_term, data))
    context, pos = _bytes(buf, pos)
    chunk = None
    if flags & FLAG_CHUNK:
        c_index, pos = _varint(buf, pos)
        c_term, pos = _varint(buf, pos)
        c_offset, pos = _varint(buf, pos)
        c_total, pos = _varint(buf, pos)
        data, pos = _bytes(buf, pos)
        chunk = SnapshotChunk(c_index, c_term, c_offset, c_total, data)
    if pos != len(buf):
        raise MessageDecodeError(f"{len(buf) - pos} trailing bytes after the message")
    _check_contents(mtype, term, log_term, index, entries, chunk)
    return Message(
        type=mtype,
        to=to,
        frm=frm,
        term=term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=commit,
        reject=bool(flags & FLAG_REJECT),
        hint_index=hint_index,
        chunk=chunk,
        context=context,
    )
