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
    # A branch without children is corrupt (no commit writes one): both codecs refuse it.
    assert both(run) == ((TYPE_BRANCH, keys, children) if keys else None)


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
            b._no_c()  # the Python descent over the node cache
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


# -- the branch search index (csrc/db/branch.c) ----------------------------------------------

# Keys built to stress the index: long shared prefixes, keys that are prefixes of others, runs
# of keys that agree on the 7 bytes after their branch's common prefix and differ later, and
# bytes 0x00 / 0xff where zero padding and length order meet.
_stems = st.sampled_from([b"", b"a", b"prefix/shared/by/many/keys/", b"\x00" * 9, b"\xff" * 8])
_tails = st.binary(max_size=14).map(lambda b: bytes((0, 1, 255)[x % 3] for x in b))
index_keys = st.lists(
    st.builds(lambda s, t, u: s + t + u, _stems, _tails, st.sampled_from([b"", b"z", b"\x00"])),
    min_size=30,  # more than an inline bucket holds: the tree is in pages
    max_size=400,
    unique=True,
).filter(lambda ks: all(ks))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=index_keys, data=st.data())
def test_lookups_through_the_branch_index_match_the_python_descent(tmp_path_factory, keys, data):
    path = str(tmp_path_factory.mktemp("index") / "t.db")
    values = {k: b"v" * (len(k) % 50) + k for k in keys}
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, values[k])
        # Probes: every key, its neighbours one byte longer or shorter, and random strings.
        probes = set(keys)
        for k in keys:
            probes.update((k[:-1], k + b"\x00", k + b"\xff", k[:-1] + bytes([k[-1] ^ 1])))
        probes.update(data.draw(st.lists(st.binary(min_size=1, max_size=30), max_size=50)))
        probes.discard(b"")
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert b._cmap is not None
            fast = {p: b.get(p) for p in probes}
            b._no_c()
            slow = {p: b.get(p) for p in probes}
        assert fast == slow
        assert {k: fast[k] for k in keys} == values


def _rewrite_branch(path: str, pgid: int, change) -> None:
    """Re-seal branch page ``pgid`` of ``path`` with ``change(keys, children)`` applied: a valid
    checksum over content no correct writer produces."""
    with open(path, "r+b") as f:
        f.seek(pgid * PS)
        run = f.read(PS)
        _, _, ptype, _, _, count, overflow = PAGE_HEADER.unpack_from(run)
        assert ptype == TYPE_BRANCH and overflow == 0
        keys, children = decode_branch_body(run, HEADER_SIZE, count, PS, None, None)
        keys, children = change(keys, children)
        f.seek(pgid * PS)
        f.write(build_page(pgid, TYPE_BRANCH, len(keys), encode_branch_body(keys, children), PS))


def test_a_branch_with_keys_out_of_order_is_corruption_at_that_page(path):
    """Under a valid checksum (a bug, not a flipped bit): the index refuses to be built from
    it instead of routing lookups by a prefix the keys do not share."""
    with DB(path, page_size=PS) as db:
        content = fill(db, 800)
        root = db._meta.root
    branches = [p for p, t, _ in pages(path, PS) if t == TYPE_BRANCH]
    with DB(path) as db, db.view() as tx:
        bucket_root = tx.bucket(b"b")._root
    assert bucket_root in branches and bucket_root != root

    def swap(keys, children):
        keys[0], keys[-1] = keys[-1], keys[0]
        return keys, children

    _rewrite_branch(path, bucket_root, swap)
    with DB(path) as db, db.view() as tx:
        b = tx.bucket(b"b")
        with pytest.raises(CorruptionError, match="out of order") as e:
            b.get(next(iter(content)))
        assert (e.value.path, e.value.offset) == (path, bucket_root * PS)


def test_a_branch_index_is_rebuilt_when_its_page_is_rewritten(path):
    """A page id reused for another branch must not route through the old page's index."""
    with DB(path, page_size=PS) as db:
        content = fill(db, 2000)
        for round_ in range(30):
            with db.view() as tx:  # builds indexes for the branches of this tree
                b = tx.bucket(b"b")
                sample = random.Random(round_).sample(sorted(content), 50)
                assert {k: b.get(k) for k in sample} == {k: content[k] for k in sample}
            with db.update() as tx:  # frees and reuses branch pages
                b = tx.bucket(b"b")
                rng = random.Random(round_)
                for k in rng.sample(sorted(content), 100):
                    b.delete(k)
                    del content[k]
                for _ in range(100):
                    k = b"k%06d" % rng.randrange(10**6)
                    content[k] = b"r%d" % round_
                    b.put(k, content[k])
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert {k: b.get(k) for k in content} == content
