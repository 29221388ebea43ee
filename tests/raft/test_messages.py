"""The wire encoding of Raft messages: round trip, and a decoder that fails cleanly."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyval.raft.messages import (
    Message,
    MessageDecodeError,
    MsgType,
    SnapshotChunk,
    decode,
    encode,
)
from keyval.raft.records import Entry

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=2**20)
positive = st.integers(min_value=1, max_value=2**64 - 1)

entries = st.lists(
    st.builds(Entry, index=positive, term=positive, data=st.binary(max_size=64)), max_size=5
).map(tuple)


@st.composite
def valid_chunk(draw) -> SnapshotChunk:
    """A chunk a leader may send: its bytes lie within the snapshot's total."""
    data = draw(st.binary(max_size=64))
    offset = draw(st.integers(0, 2**64 - 1 - len(data)))
    total = draw(st.integers(offset + len(data), 2**64 - 1))
    return SnapshotChunk(draw(positive), draw(positive), offset, total, data)


chunks = st.none() | valid_chunk()


@st.composite
def messages(draw) -> Message:
    """Any message a correct peer may send: an append's entries follow its index one by one,
    with terms from the term before them up to the sender's (other types carry any)."""
    mtype = draw(st.sampled_from(MsgType))
    term = draw(u64)
    log_term = draw(st.integers(0, term))
    index = draw(st.integers(0, 2**64 - 8))
    if mtype is MsgType.APP and term:
        n = draw(st.integers(0, 5))
        low = max(log_term, 1)
        terms = sorted(draw(st.lists(st.integers(low, term), min_size=n, max_size=n)))
        data = draw(st.lists(st.binary(max_size=64), min_size=n, max_size=n))
        carried = tuple(Entry(index + 1 + k, terms[k], data[k]) for k in range(n))
    elif mtype is MsgType.APP:
        carried = ()
    else:
        carried = draw(entries)
    return Message(
        type=mtype,
        to=draw(u64),
        frm=draw(u64),
        term=term,
        log_term=log_term,
        index=index,
        entries=carried,
        commit=draw(u64),
        reject=draw(st.booleans()),
        hint_index=draw(small),
        chunk=draw(chunks),
        context=draw(st.binary(max_size=32)),
    )


messages = messages()


@given(messages)
def test_encode_decode_round_trip(msg):
    assert decode(encode(msg)) == msg


@given(st.binary(max_size=200))
def test_decoding_random_bytes_fails_only_with_a_decode_error(data):
    try:
        decode(data)
    except MessageDecodeError as e:
        assert isinstance(e, ValueError)


@given(messages, st.data())
def test_corrupted_or_truncated_messages_fail_cleanly(msg, data):
    wire = bytearray(encode(msg))
    if data.draw(st.booleans()):
        wire = wire[: data.draw(st.integers(0, len(wire) - 1))]
    else:
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire[pos] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(MessageDecodeError):
        decode(bytes(wire))


@pytest.mark.parametrize(
    "msg",
    [
        # entries not right after the index, far ahead, or with terms going back, or above
        # the sender's: a node that stepped them stopped (an invariant of its log broke)
        Message(MsgType.APP, 2, 1, 1, index=0, entries=(Entry(2, 1), Entry(3, 1))),
        Message(MsgType.APP, 2, 1, 1, index=0, entries=(Entry(5, 1),), commit=1),
        Message(MsgType.APP, 2, 1, 2, index=0, entries=(Entry(1, 2), Entry(2, 1))),
        Message(MsgType.APP, 2, 1, 2, index=4, log_term=3, entries=(Entry(5, 2),)),
        Message(MsgType.APP, 2, 1, 2, index=0, entries=(Entry(1, 3),)),
        Message(MsgType.SNAP, 2, 1, 1, chunk=SnapshotChunk(5, 0, 0, 1, b"x")),
        Message(MsgType.SNAP, 2, 1, 1, chunk=SnapshotChunk(0, 1, 0, 1, b"x")),
        # bytes past the snapshot's total: a follower took them as part of it
        Message(MsgType.SNAP, 2, 1, 1, chunk=SnapshotChunk(5, 1, 9, 10, b"xy")),
    ],
)
def test_contents_no_correct_peer_sends_are_refused_as_malformed(msg):
    with pytest.raises(MessageDecodeError):
        decode(encode(msg))


def test_decoder_refuses_trailing_bytes_unknown_versions_and_huge_counts():
    wire = encode(Message(MsgType.HEARTBEAT, 2, 1, 3, commit=5))
    with pytest.raises(MessageDecodeError, match="trailing"):
        decode(wire + b"\0")
    with pytest.raises(MessageDecodeError, match="version"):
        decode(b"\x02" + wire[1:])
    with pytest.raises(MessageDecodeError, match="type"):
        decode(wire[:1] + b"\x63" + wire[2:])
    # A count of 2**62 entries in a few bytes must not make the decoder loop or allocate.
    forged = bytes([1, 1]) + b"\0" * 7 + b"\0" + bytes([0x80] * 8 + [0x40])
    with pytest.raises(MessageDecodeError):
        decode(forged)


def test_encoding_is_compact():
    msg = Message(
        MsgType.APP, 2, 1, 7, log_term=7, index=100, commit=99, entries=(Entry(101, 7, b"x" * 10),)
    )
    # Header and small varints take a few bytes; the entry its data plus 3 bytes.
    assert len(encode(msg)) <= 32
