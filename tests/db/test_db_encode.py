"""The C page encoder (keyval.db.encode) against the Python codec, the reference.

For any entries the format can hold, both build the same bytes (header, elements, data, zero
padding, checksum), whatever the page size and however many pages the run spans; entries the
format cannot hold are refused by both, and a refused call leaves its output untouched.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.db import encode
from keyval.db.page import (
    TYPE_BRANCH,
    TYPE_LEAF,
    build_page,
    decode_leaf_body,
    encode_branch_body,
    encode_leaf_body,
)
from keyval.db.pagemap import ffi, lib

pytestmark = pytest.mark.skipif(not encode.AVAILABLE, reason="keyval._db_cffi is not usable")

keys_st = st.lists(st.binary(min_size=1, max_size=300), max_size=60, unique=True).map(sorted)
page_sizes = st.sampled_from([512, 1024, 4096])


# The leaf encoders: straight from the lists (csrc/db/pyencode.c, what commits use) and through
# packed bytes and kvdb_encode_leaf (its fallback); both must give the Python codec's pages.
LEAF_ENCODERS = [
    pytest.param((encode.leaf_parts, encode.encode_leaf), id="lists"),
    pytest.param((encode.packed_leaf_parts, encode.encode_packed_leaf), id="packed"),
]
# The same two for branches.
BRANCH_ENCODERS = [
    pytest.param((encode.branch_parts, encode.encode_branch), id="lists"),
    pytest.param((encode.packed_branch_parts, encode.encode_packed_branch), id="packed"),
]


@pytest.mark.parametrize("leaf_encoder", LEAF_ENCODERS)
@settings(max_examples=300, deadline=None)
@given(keys=keys_st, data=st.data(), page_size=page_sizes, pgid=st.integers(2, 2**64 - 1))
def test_leaf_pages_are_those_of_the_python_codec(leaf_encoder, keys, data, page_size, pgid):
    parts, encode_leaf = leaf_encoder
    vals = [data.draw(st.binary(max_size=page_size // 4)) for _ in keys]
    expected = build_page(pgid, TYPE_LEAF, len(keys), encode_leaf_body(keys, vals), page_size)
    assert encode_leaf(pgid, parts(keys, vals), page_size) == expected
    assert parts(keys, vals)[2] == 32 + len(encode_leaf_body(keys, vals))


@pytest.mark.parametrize(
    ("keys", "vals", "error"),
    [
        ([b"k", "v"], [b"v", b"w"], TypeError),
        ([b"k"], [bytearray(b"v")], TypeError),
        ([b"k"], [None], TypeError),
        ([b"k", b"l"], [b"v"], ValueError),
        ((b"k",), [b"v"], TypeError),
    ],
)
def test_the_list_encoder_refuses_what_is_not_a_plain_leaf(keys, vals, error):
    if encode.leaf_parts is encode.packed_leaf_parts:
        pytest.skip("no Python-API encoder in this build")
    with pytest.raises(error):
        encode.leaf_parts(keys, vals)
    with pytest.raises(error):
        encode.encode_leaf(5, (keys, vals, 0), 512)


@pytest.mark.parametrize("keys", [[b"a", "b"], (b"a",), [bytearray(b"a")]])
def test_branch_size_refuses_what_is_not_a_list_of_bytes(keys):
    if encode.branch_size is None:
        pytest.skip("no Python-API encoder in this build")
    with pytest.raises(TypeError):
        encode.branch_size(keys)


@pytest.mark.parametrize("branch_encoder", BRANCH_ENCODERS)
@settings(max_examples=300, deadline=None)
@given(keys=keys_st, data=st.data(), page_size=page_sizes, pgid=st.integers(2, 2**64 - 1))
def test_branch_pages_are_those_of_the_python_codec(branch_encoder, keys, data, page_size, pgid):
    parts, encode_branch = branch_encoder
    children = [data.draw(st.integers(0, 2**64 - 1)) for _ in keys]
    expected = build_page(
        pgid, TYPE_BRANCH, len(keys), encode_branch_body(keys, children), page_size
    )
    got = encode_branch(pgid, parts(keys), children, page_size)
    assert got == expected
    if encode.branch_size is not None:
        assert encode.branch_size(keys) == 32 + len(encode_branch_body(keys, children))


@pytest.mark.parametrize("branch_encoder", BRANCH_ENCODERS)
@pytest.mark.parametrize("leaf_encoder", LEAF_ENCODERS)
def test_a_key_too_long_for_the_format_is_refused_by_both_codecs(leaf_encoder, branch_encoder):
    parts, encode_leaf = leaf_encoder
    keys, vals = [b"k" * 65536], [b"v"]
    with pytest.raises(struct.error):
        encode_leaf_body(keys, vals, plain=True)
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_leaf(5, parts(keys, vals), 65536)
    with pytest.raises(struct.error):
        encode_branch_body(keys, [3])
    branch_parts, encode_branch = branch_encoder
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_branch(5, branch_parts(keys), [3], 65536)


@pytest.mark.parametrize("branch_encoder", BRANCH_ENCODERS)
def test_children_must_match_keys(branch_encoder):
    parts, encode_branch = branch_encoder
    with pytest.raises(ValueError, match="2 keys, 1 children"):
        encode_branch(5, parts([b"a", b"b"]), [3], 512)


@pytest.mark.parametrize(
    ("keys", "children", "error"),
    [
        ([b"a", b"b"], [3, "4"], TypeError),  # a child that is not a page id
        ([b"a", b"b"], [3, 4.0], TypeError),
        ([b"a", b"b"], [3, -1], OverflowError),  # page ids are u64
        ([b"a", b"b"], [3, 2**64], OverflowError),
        ([b"a", bytearray(b"b")], [3, 4], TypeError),
        ((b"a", b"b"), [3, 4], TypeError),  # the lists of a dirty node, nothing else
        ([b"a", b"b"], (3, 4), TypeError),
        ([b"a", b"b"], [3], ValueError),
    ],
)
def test_the_list_branch_encoder_refuses_what_is_not_a_branch(keys, children, error):
    encode_branch = encode.PY_EXPORTS_ENCODE_BRANCH
    if encode_branch is None:
        pytest.skip("no Python-API encoder in this build")
    with pytest.raises(error):
        encode_branch(5, keys, children, 512)
    with pytest.raises(ValueError, match="page size"):
        encode_branch(5, [b"a"], [3], 1000)


def raw_leaf(out: bytearray, packed: bytes, lens: list[int], page_size: int = 512) -> int:
    return lib.kvdb_encode_leaf(
        ffi.from_buffer(out), len(out), page_size, 9, packed, len(packed), lens, len(lens)
    )


@pytest.mark.parametrize(
    ("packed", "lens", "code"),
    [
        (b"abc", [1, 1], lib.KVDB_EINVAL),  # lengths add up to less than the data
        (b"ab", [1, 2], lib.KVDB_EINVAL),  # ... or to more
        (b"abc", [1, 1, 1], lib.KVDB_EINVAL),  # a key without a value
        (b"a" * 600, [1, 599], lib.KVDB_ESPACE),  # a run longer than the buffer
    ],
)
def test_bad_encoder_input_is_refused_and_writes_nothing(packed, lens, code):
    out = bytearray(b"\xaa" * 512)
    assert raw_leaf(out, packed, lens) == code
    assert out == b"\xaa" * 512


@pytest.mark.parametrize("leaf_encoder", LEAF_ENCODERS)
def test_a_leaf_longer_than_a_page_spans_a_run(leaf_encoder):
    parts, encode_leaf = leaf_encoder
    keys = [bytes([i]) * 10 for i in range(1, 9)]
    vals = [b"v" * 120] * 8  # 8 * (7 + 130) + 32 bytes: three 512-byte pages
    page = encode_leaf(7, parts(keys, vals), 512)
    assert len(page) == 3 * 512
    assert page == build_page(7, TYPE_LEAF, 8, encode_leaf_body(keys, vals), 512)
    assert decode_leaf_body(bytes(page), 32, 8, len(page), None, None) == (keys, vals)


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_span_for_is_whole_pages_and_at_least_one(page_size):
    from keyval.db.page import span_for

    for size in [*range(-2, 3), *range(page_size - 2, page_size + 3), 5 * page_size + 1]:
        assert span_for(size, page_size) == max(1, -(-size // page_size))
