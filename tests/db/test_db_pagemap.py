"""The C page codec and lookups (keyval.db.pagemap) against the Python codec, the reference.

Random pages decode identically both ways; garbage, truncated and bit-flipped pages are a
CorruptionError both ways (never a crash or a silent wrong answer); lookups through the map
give what the Python descent gives, name the damaged page, and survive the file outgrowing the
map while readers are open.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyval.db import DB, pagemap
from keyval.db.page import (
    HEADER_SIZE,
    OVERFLOW_REF,
    PAGE_HEADER,
    TYPE_BRANCH,
    TYPE_LEAF,
    BucketHeader,
    OverflowRef,
    build_page,
    decode_branch_body,
    decode_leaf_body,
    encode_branch_body,
    encode_leaf_body,
)
from keyval.errors import CorruptionError

from .conftest import flip_bit, pages

pytestmark = pytest.mark.skipif(not pagemap.AVAILABLE, reason="keyval._db_cffi is not usable")

PS = 512


def python_decode(run: bytes):
    """The Python codec's reading of a leaf or branch run, as decode_node returns it."""
    _, _, ptype, _, _, count, _ = PAGE_HEADER.unpack_from(run)
    if ptype == TYPE_LEAF:
        return (ptype, *decode_leaf_body(run, HEADER_SIZE, count, len(run), None, None))
    if ptype == TYPE_BRANCH:
        return (ptype, *decode_branch_body(run, HEADER_SIZE, count, len(run), None, None))
    raise CorruptionError("not a node")


def comparable(decoded):
    ptype, keys, vals = decoded
    out = []
    for v in vals:
        if type(v) is OverflowRef:
            out.append(("overflow", v.pgid, v.length))
        elif type(v) is BucketHeader:
            out.append(("bucket", v.root, v.count, v.raw))
        else:
            out.append(v)
    return ptype, keys, out


def both(run: bytes):
    """Decode ``run`` both ways; both must agree, on the entries or on refusing the page."""
    try:
        expected = comparable(python_decode(run))
    except CorruptionError:
        expected = None
    try:
        got = comparable(pagemap.decode_node(run))
    except CorruptionError:
        got = None
    assert got == expected
    return got


keys_st = st.lists(st.binary(min_size=1, max_size=40), max_size=40, unique=True).map(sorted)
plain_values = st.binary(max_size=60)
leaf_values = st.one_of(
    plain_values,
    st.builds(OverflowRef, st.integers(2, 2**40), st.integers(0, 2**31 - 1)),
    st.builds(BucketHeader.of_page, st.integers(2, 2**40), st.integers(0, 2**40)),
    st.lists(plain_values, max_size=3).map(
        lambda vs: BucketHeader.inline(len(vs), [b"k%d" % i for i in range(len(vs))], vs)
    ),
)


@settings(max_examples=100, deadline=None)
@given(keys=keys_st, data=st.data())
def test_random_leaves_decode_identically(keys, data):
    vals = [data.draw(leaf_values) for _ in keys]
    run = bytes(build_page(7, TYPE_LEAF, len(keys), encode_leaf_body(keys, vals), PS))
    assert both(run) is not None


@settings(max_examples=100, deadline=None)
@given(keys=keys_st, data=st.data())
def test_random_branches_decode_identically(keys, data):
    children = [data.draw(st.integers(2, 2**63)) for _ in keys]
    run = bytes(build_page(7, TYPE_BRANCH, len(keys), encode_branch_body(keys, children), PS))
    assert both(run) == (TYPE_BRANCH, keys, children)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=keys_st, data=st.data())
def test_damaged_pages_are_refused_the_same_way(keys, data):
    """Flipped bits, cut runs and random counts: both codecs refuse or both read the same."""
    ptype = data.draw(st.sampled_from([TYPE_LEAF, TYPE_BRANCH]))
    if ptype == TYPE_LEAF:
        body = encode_leaf_body(keys, [data.draw(plain_values) for _ in keys])
    else:
        body = encode_branch_body(keys, [data.draw(st.integers(0, 2**64 - 1)) for _ in keys])
    run = bytearray(build_page(7, ptype, len(keys), body, PS))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(HEADER_SIZE - 12, len(run) - 1))
        run[at] ^= 1 << data.draw(st.integers(0, 7))
    if data.draw(st.booleans()):
        PAGE_HEADER.pack_into(run, 0, 0, 7, ptype, 0, 0, data.draw(st.integers(0, 2**32 - 1)), 0)
    cut = data.draw(st.integers(HEADER_SIZE, len(run)))
    both(bytes(run[:cut]))


@settings(max_examples=100, deadline=None)
@given(run=st.binary(min_size=HEADER_SIZE, max_size=PS), ptype=st.sampled_from([2, 3]))
def test_garbage_never_crashes(run, ptype):
    run = bytearray(run)
    run[16] = ptype
    both(bytes(run))


@pytest.mark.parametrize(("ptype", "element"), [(TYPE_LEAF, 7), (TYPE_BRANCH, 10)])
@pytest.mark.parametrize("count", [2**32 - 1, 2**31, "one more than fits"])
def test_a_count_larger_than_the_page_is_refused(ptype, element, count):
    if count == "one more than fits":
        count = (PS - HEADER_SIZE) // element + 1
    run = bytearray(PS)
    PAGE_HEADER.pack_into(run, 0, 0, 7, ptype, 0, 0, count, 0)
    with pytest.raises(CorruptionError, match="more"):
        pagemap.decode_node(bytes(run))
    with pytest.raises(CorruptionError, match="more"):
        python_decode(bytes(run))  # before building a struct for billions of elements


def test_a_run_shorter_than_a_header_is_refused():
    with pytest.raises(CorruptionError):
        pagemap.decode_node(b"\x03" * 20)


# -- lookups through the map ---------------------------------------------------------------


def fill(db: DB, n: int, seed: int = 0) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    content = {}
    with db.update() as tx:
        b = tx.create_bucket(b"b", exist_ok=True)
        for _ in range(n):
            k = b"k%06d" % rng.randrange(10 * n)
            v = rng.randbytes(rng.choice([0, 5, 60, 200, 1500]))
            b.put(k, v)
            content[k] = v
        b.create_bucket(b"nested", exist_ok=True).put(b"x", b"y")
    return content


def test_lookups_in_c_match_the_python_descent(path):
    with DB(path, page_size=PS) as db:
        content = fill(db, 3000)
        probes = [*content, b"absent", b"k", b"zzz", b"nested"]
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert b._cmap is not None
            fast = {k: b.get(k) for k in probes}
            contains = {k: k in b for k in probes}
            b._cmap = b._ctree = b._cvalue = None  # the Python descent over the node cache
            slow = {k: b.get(k) for k in probes}
            assert {k: k in b for k in probes} == contains
        assert fast == slow
        assert {k: fast[k] for k in content} == content
        assert fast[b"nested"] is None  # a bucket's name is not a key


def test_a_write_transaction_reads_its_own_writes_after_the_c_path(path):
    with DB(path, page_size=PS) as db:
        content = fill(db, 500)
        key = next(iter(content))
        with db.update() as tx:
            b = tx.bucket(b"b")
            assert b.get(key) == content[key]  # committed pages, through the map
            b.put(key, b"new")
            assert b._cmap is None
            assert b.get(key) == b"new"
            b.delete(key)
            assert b.get(key) is None


def test_a_flipped_bit_on_a_lookup_path_is_corruption_at_that_page(tmp_path):
    path = str(tmp_path / "src.db")
    with DB(path, page_size=PS) as db:
        content = fill(db, 800)
    with DB(path) as db:
        free = set(db._freelist.free)  # just opened: every free page is reusable, none pending
    node_pages = {p: o for p, t, o in pages(path, PS) if t in (TYPE_LEAF, TYPE_BRANCH)}
    rng = random.Random(3)
    for trial in range(60):
        pgid = rng.choice(sorted(set(node_pages) - free))
        offset = pgid * PS + rng.randrange((node_pages[pgid] + 1) * PS)
        copy = str(tmp_path / f"flip{trial}.db")
        shutil.copy(path, copy)
        flip_bit(copy, offset, rng.randrange(8))
        errors = set()
        with DB(copy) as db, db.view() as tx:
            try:
                b = tx.bucket(b"b")
                for k, v in content.items():
                    try:
                        assert b.get(k) == v
                    except CorruptionError as e:
                        errors.add((e.path, e.offset))
            except CorruptionError as e:  # the top-level tree itself
                errors.add((e.path, e.offset))
        assert errors == {(copy, pgid * PS)}, (trial, pgid, errors)


def test_readers_keep_their_map_when_the_file_outgrows_it(path, monkeypatch):
    monkeypatch.setattr(pagemap, "MAP_BYTES", 64 * PS)
    with DB(path, page_size=PS) as db:
        first = fill(db, 50)
        old_map = db._map
        with db.view() as old:
            content = fill(db, 3000, seed=1)  # far more than 64 pages
            assert db._map is not old_map and db._map.pages > old_map.pages
            b = old.bucket(b"b")
            assert b._cmap is old_map
            assert {k: b.get(k) for k in first} == first
            with db.view() as new:
                nb = new.bucket(b"b")
                assert {k: nb.get(k) for k in content} == content


def test_lookups_after_shrink_see_the_shrunk_file(path):
    with DB(path, page_size=PS) as db:
        content = fill(db, 2000)
        with db.update() as tx:
            b = tx.bucket(b"b")
            for k in list(content)[: len(content) * 9 // 10]:
                b.delete(k)
                del content[k]
        db.shrink()
        assert os.path.getsize(path) // PS == db._meta.hwm
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert {k: b.get(k) for k in content} == content


def test_overflow_values_come_back_through_the_c_path(path):
    with DB(path, page_size=PS) as db:
        big = os.urandom(5000)
        with db.update() as tx:
            tx.create_bucket(b"b").put(b"big", big)
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert b._cmap is not None
            assert b.get(b"big") == big
            raw = b._lookup(b"big")
            assert type(raw) is OverflowRef and raw.length == len(big)
            assert OVERFLOW_REF.size == 12


def test_the_longest_inline_value_comes_back_whole(path):
    """A quarter of a 64 KiB page is the longest value a leaf holds: the C copy's limit."""
    with DB(path, page_size=65536) as db:
        longest = os.urandom(65536 // 4)
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            b.put(b"a", longest)
            b.put(b"b", longest[:-1])
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert type(b._lookup(b"a")) is bytes  # stored in the leaf, not an overflow run
            assert b.get(b"a") == longest
            assert b.get(b"b") == longest[:-1]
