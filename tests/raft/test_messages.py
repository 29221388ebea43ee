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
chunks = st.none() | st.builds(SnapshotChunk, u64, u64, u64, u64, st.binary(max_size=64))
messages = st.builds(
    Message,
    type=st.sampled_from(MsgType),
    to=u64,
    frm=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=entries,
    commit=u64,
    reject=st.booleans(),
    hint_index=small,
    chunk=chunks,
    context=st.binary(max_size=32),
)


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
