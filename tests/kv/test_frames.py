"""The frame format: round trips however the stream is split, and a decoder that refuses bad
input with FrameError only, before buffering an oversized body."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.kv.frames import (
    CHECK,
    HEADER,
    OVERHEAD,
    VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    encode,
)

MAX = 4096
kinds = st.integers(min_value=0, max_value=255)
frames = st.lists(st.builds(Frame, kinds, st.binary(max_size=300)), max_size=12)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def decode_all(chunks: list[bytes], max_payload: int = MAX) -> list[Frame]:
    decoder = FrameDecoder(max_payload)
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert decoder.buffered == 0
    return out


def test_layout_is_length_version_kind_payload_check():
    data = encode(7, b"abc")
    assert len(data) == OVERHEAD + 3
    assert HEADER.unpack_from(data) == (3, VERSION, 7)
    assert data[6:9] == b"abc"


@given(frames, st.lists(st.integers(min_value=0), max_size=20))
def test_a_valid_stream_decodes_exactly_however_it_is_split(fs, cuts):
    stream = b"".join(encode(f.kind, f.payload) for f in fs)
    assert decode_all(split(stream, cuts)) == fs


@given(frames)
def test_a_stream_fed_one_byte_at_a_time_decodes_exactly(fs):
    stream = b"".join(encode(f.kind, f.payload) for f in fs)
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == fs


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=300)
def test_random_bytes_raise_nothing_but_frame_error(data, cuts):
    decoder = FrameDecoder(MAX)
    try:
        for chunk in split(data, cuts):
            for frame in decoder.feed(chunk):
                assert 0 <= frame.kind <= 255 and len(frame.payload) <= MAX
    except FrameError:
        with pytest.raises(FrameError):  # a failed decoder stays failed
            list(decoder.feed(b""))
    assert decoder.buffered <= HEADER.size + MAX + CHECK.size


@given(frames, st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_valid_frames_then_garbage_deliver_a_prefix_then_frame_error(fs, garbage, cuts):
    stream = b"".join(encode(f.kind, f.payload) for f in fs) + garbage
    decoder = FrameDecoder(MAX)
    got: list[Frame] = []
    try:
        for chunk in split(stream, cuts):
            got += decoder.feed(chunk)
    except FrameError:
        pass
    assert got[: len(fs)] == fs  # every frame before the garbage is delivered


@given(st.builds(Frame, kinds, st.binary(min_size=1, max_size=100)), st.data())
def test_any_single_corrupted_byte_is_detected(frame, data):
    good = bytearray(encode(frame.kind, frame.payload))
    i = data.draw(st.integers(min_value=0, max_value=len(good) - 1))
    good[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    decoder = FrameDecoder(MAX)
    try:
        got = list(decoder.feed(bytes(good)))
    except FrameError:
        return
    # A corrupted length can only make the frame look incomplete: nothing is delivered.
    assert i < 4 and got == []


def test_an_oversized_length_is_refused_from_the_header_alone():
    decoder = FrameDecoder(max_payload=100)
    header = HEADER.pack(101, VERSION, 1)
    with pytest.raises(FrameError, match="exceeds the maximum"):
        list(decoder.feed(header))
    assert decoder.buffered == 0


def test_a_huge_length_is_refused_without_buffering_its_body():
    decoder = FrameDecoder(max_payload=100)
    with pytest.raises(FrameError, match="exceeds the maximum"):
        list(decoder.feed(struct.pack(">IBB", 2**32 - 1, VERSION, 1) + b"x" * 50))


def test_a_frame_of_the_next_version_is_refused():
    data = bytearray(encode(1, b"hi"))
    data[4] = VERSION + 1
    with pytest.raises(FrameError, match="version 2"):
        list(FrameDecoder().feed(bytes(data)))


def test_a_bad_checksum_is_refused():
    data = bytearray(encode(1, b"hi"))
    data[-1] ^= 1
    with pytest.raises(FrameError, match="checksum"):
        list(FrameDecoder().feed(bytes(data)))


def test_an_http_request_is_refused_at_the_version_byte():
    with pytest.raises(FrameError, match="version"):
        list(FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n"))


def test_an_incomplete_frame_waits_for_the_rest():
    data = encode(2, b"payload") + encode(3, b"")
    decoder = FrameDecoder()
    assert list(decoder.feed(data[:-1])) == [Frame(2, b"payload")]
    assert decoder.buffered == OVERHEAD - 1
    assert list(decoder.feed(data[-1:])) == [Frame(3, b"")]


def test_frames_left_unconsumed_come_with_the_next_feed():
    decoder = FrameDecoder()
    it = decoder.feed(encode(1, b"a") + encode(2, b"b"))
    assert next(it) == Frame(1, b"a")
    assert list(decoder.feed(encode(3, b"c"))) == [Frame(2, b"b"), Frame(3, b"c")]


def test_encode_refuses_what_no_receiver_would_accept():
    with pytest.raises(ValueError):
        encode(256, b"")
    with pytest.raises(FrameError):
        encode(1, b"x" * 11, max_payload=10)
    frame = encode(1, b"x" * 10, max_payload=10)
    assert list(FrameDecoder(10).feed(frame)) == [Frame(1, b"x" * 10)]
