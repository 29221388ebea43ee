"""Pages whose checksums are valid but whose structure is impossible: what a bug in a writer or
a deliberate edit leaves, never bit rot (checksums catch that). Each must end in
CorruptionError, never a hang, a crash, a wrong answer or damage to other data."""

from __future__ import annotations

import os
import signal
import struct

import pytest
import xxhash

from keyval.db import DB
from keyval.db.page import CHECKSUM, HEADER_SIZE, PAGE_HEADER, TYPE_BRANCH, TYPE_LEAF
from keyval.errors import CorruptionError, KeyvalError
from keyval.fsck import main as fsck

from .conftest import dump
from .test_db_corruption import PS, _rewrite_metas


@pytest.fixture(autouse=True)
def no_hang():
    """A descent that loops forever fails the test instead of stalling the suite."""

    def stop(*_):
        raise AssertionError("still running after 20 s: an endless loop")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def reseal(path: str, pgid: int) -> None:
    """Recompute the checksum of the run at ``pgid`` after an edit."""
    with open(path, "r+b") as f:
        f.seek(pgid * PS)
        overflow = PAGE_HEADER.unpack(f.read(HEADER_SIZE))[6]
        f.seek(pgid * PS)
        run = bytearray(f.read((overflow + 1) * PS))
        CHECKSUM.pack_into(run, 0, xxhash.xxh3_64_intdigest(bytes(run[CHECKSUM.size :])))
        f.seek(pgid * PS)
        f.write(run)


def patch(path: str, pgid: int, at: int, fmt: str, *values) -> None:
    """Write ``values`` at byte ``at`` of page ``pgid``, then reseal the page."""
    with open(path, "r+b") as f:
        f.seek(pgid * PS + at)
        f.write(struct.pack(fmt, *values))
    reseal(path, pgid)


def read_page(path: str, pgid: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(pgid * PS)
        return f.read(PS)


def leaf_entry(path: str, pgid: int, key: bytes) -> tuple[int, int, int, int]:
    """(element offset, key length, value length, value offset) of ``key`` in leaf ``pgid``."""
    page = read_page(path, pgid)
    assert page[16] == TYPE_LEAF
    count = PAGE_HEADER.unpack_from(page)[5]
    pos = HEADER_SIZE + 7 * count
    for i in range(count):
        at = HEADER_SIZE + 7 * i
        _, klen, vlen = struct.unpack_from("<BHI", page, at)
        if page[pos : pos + klen] == key:
            return at, klen, vlen, pos + klen
        pos += klen + vlen
    raise KeyError(key)


def bucket_root(path: str, name: bytes) -> int:
    with DB(path) as db, db.view() as tx:
        return tx.bucket(name)._root


@pytest.fixture
def two_buckets(tmp_path) -> tuple[str, dict]:
    """Bucket b"a" with an overflow value and a plain one, and bucket b"b" whose root is a
    branch."""
    path = str(tmp_path / "hostile.db")
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            a = tx.create_bucket(b"a")
            a.put(b"big", os.urandom(3000))
            a.put(b"small", b"s" * 20)
            b = tx.create_bucket(b"b")
            for i in range(3000):
                b.put(b"k%05d" % i, b"v" * 20)
        content = dump(db)
    return path, content


def top_leaf(path: str) -> int:
    with DB(path) as db, db.view() as tx:
        return tx._meta.root


def test_a_bucket_count_no_file_can_hold_is_corruption(two_buckets):
    path, _ = two_buckets
    leaf = top_leaf(path)
    _, _, _, header = leaf_entry(path, leaf, b"b")
    patch(path, leaf, header + 8, "<Q", 2**63 - 2)  # one put from the C counter's limit
    with (
        DB(path) as db,
        pytest.raises(CorruptionError, match="more than a file holds") as e,
        db.update() as tx,
    ):
        tx.bucket(b"b")
    assert e.value.offset == leaf * PS


@pytest.mark.parametrize("target", ["a live page", "past the file"])
def test_a_corrupt_overflow_reference_is_refused_before_anything_is_freed(two_buckets, target):
    """Freed unchecked, the reference gave bucket b"b"'s root page to the next commit's data
    (b"b" then read another tree's page, with no error), or grew the freelist's bitmap to a
    page id of 2**40 (MemoryError)."""
    path, content = two_buckets
    victim = bucket_root(path, b"b") if target == "a live page" else 2**40
    leaf = bucket_root(path, b"a")
    _, _, _, ref = leaf_entry(path, leaf, b"big")
    patch(path, leaf, ref, "<Q", victim)
    with DB(path) as db:
        for remove in (
            lambda tx: tx.bucket(b"a").delete(b"big"),
            lambda tx: tx.delete_bucket(b"a"),
        ):
            with pytest.raises(CorruptionError, match="overflow reference"), db.update() as tx:
                remove(tx)
        for i in range(3):  # commits that would reuse whatever was freed
            with db.update() as tx:
                tx.create_bucket(b"fill%d" % i).put(b"x" * 100, os.urandom(400))
        with db.view() as tx:
            assert dict(tx.bucket(b"b").items()) == content[b"b"]["kv"]


def test_a_branch_that_is_its_own_child_is_corruption_everywhere(two_buckets):
    path, content = two_buckets
    root = bucket_root(path, b"b")
    assert read_page(path, root)[16] == TYPE_BRANCH
    patch(path, root, HEADER_SIZE + 2, "<Q", root)  # child 0 := the branch itself
    first = min(content[b"b"]["kv"])
    with DB(path) as db:
        with db.view() as tx:
            b = tx.bucket(b"b")
            with pytest.raises(CorruptionError):
                b.get(first)  # the C lookup
            with pytest.raises(CorruptionError):
                list(b.items())
            with pytest.raises(CorruptionError):
                b.cursor().first()
        with pytest.raises(CorruptionError, match="cycle"):
            db.stats()
        with pytest.raises(KeyvalError, match="rolled back"), db.update() as tx:
            b = tx.bucket(b"b")
            b.put(b"zzzz", b"x")  # the rightmost path: fine, and the bucket is now dirty
            with pytest.raises(CorruptionError):
                b.get(first)  # the Python lookup of a changed bucket
            with pytest.raises(CorruptionError):
                b.put(first, b"new")  # copies made on the way down hold the cycle
        # the commit was refused: nothing of that transaction reached the file
        with db.view() as tx:
            assert tx.bucket(b"b").get(b"zzzz") is None


def test_a_branch_without_children_is_corruption(two_buckets):
    path, content = two_buckets
    root = bucket_root(path, b"b")
    patch(path, root, 20, "<I", 0)  # the header's count
    with DB(path) as db, db.view() as tx:
        b = tx.bucket(b"b")
        with pytest.raises(CorruptionError, match="without children"):
            b.get(min(content[b"b"]["kv"]))
        with pytest.raises(CorruptionError, match="without children"):
            list(b.items())


def test_an_empty_leaf_key_is_corruption(two_buckets):
    path, _ = two_buckets
    leaf = bucket_root(path, b"a")
    at, klen, vlen, _ = leaf_entry(path, leaf, b"small")
    # The same bytes, read as an empty key and a longer value: the page still parses.
    patch(path, leaf, at, "<BHI", 0, 0, klen + vlen)
    with DB(path) as db, db.view() as tx, pytest.raises(CorruptionError, match="empty"):
        list(tx.bucket(b"a").items())
    assert fsck([path]) == 4


def test_fsck_reports_a_meta_whose_page_count_no_file_has(two_buckets):
    path, _ = two_buckets
    _rewrite_metas(path, lambda page: struct.pack_into("<Q", page, 64, 2**63))
    assert fsck([path]) == 4  # was 8: fsck itself failed (a bytearray of 2**63)


def test_a_leaf_where_a_branch_belongs_is_refused_before_a_merge_mixes_them(tmp_path):
    path = str(tmp_path / "deep.db")
    with DB(path, page_size=PS) as db, db.update() as tx:
        b = tx.create_bucket(b"b")
        for i in range(20000):
            b.put(b"k%06d" % i, b"v" * 8)
    with DB(path) as db, db.view() as tx:
        root = tx.bucket(b"b")._root_node()
        first, second = (tx._load(child) for child in root.vals[:2])
        assert not first.leaf and not second.leaf  # three levels at least
        leaf = second
        while not leaf.leaf:
            leaf = tx._load(leaf.vals[0])
        split_key = root.keys[1]
        root_id, leaf_id = root.pgid, leaf.pgid
    patch(path, root_id, HEADER_SIZE + 10 + 2, "<Q", leaf_id)  # child 1 := a leaf
    with DB(path) as db:
        with db.view() as tx:
            doomed = [k for k, _ in tx.bucket(b"b").items(stop=split_key)]
        # Emptying most of the first child makes it underfull: the commit merges it with
        # its right sibling, which is now a leaf.
        with pytest.raises(CorruptionError, match="beside a branch"), db.update() as tx:
            b = tx.bucket(b"b")
            for k in doomed[5:]:
                b.delete(k)


def test_an_overflow_reference_longer_than_the_file_is_refused_before_it_is_read(two_buckets):
    """Its run was read whole (up to 2 GiB for one corrupt length) before its header was
    checked; the run must now fit in the file first."""
    path, _ = two_buckets
    leaf = bucket_root(path, b"a")
    _, _, _, ref = leaf_entry(path, leaf, b"big")
    patch(path, leaf, ref + 8, "<I", 2**31 - 1)
    with (
        DB(path) as db,
        db.view() as tx,
        pytest.raises(CorruptionError, match="outside the file"),
    ):
        tx.bucket(b"a").get(b"big")


def test_a_meta_txid_no_file_reaches_is_corruption(two_buckets):
    """Read as valid, a txid of 2**64 - 1 made the next commit fail with struct.error."""
    path, _ = two_buckets
    with DB(path) as db, db.view() as tx:
        slot = tx._meta.txid % 2
    # The newer meta, with the txid of its own slot's parity near the top of the field:
    # refused, so the file opens at the other meta (one commit older) and commits again.
    _rewrite_metas(
        path,
        lambda page: (
            struct.pack_into("<Q", page, 72, 2**64 - 2 + slot)
            if struct.unpack_from("<Q", page, 8)[0] == slot
            else None
        ),
    )
    with DB(path) as db:
        with db.update() as tx:
            tx.create_bucket(b"after", exist_ok=True).put(b"k", b"x")
        with db.view() as tx:
            assert tx.bucket(b"after").get(b"k") == b"x"
            assert tx._meta.txid < 2**63


def test_a_corrupt_inline_bucket_names_the_page_it_lies_in(tmp_path):
    path = str(tmp_path / "inline.db")
    with DB(path, page_size=PS) as db, db.update() as tx:
        tx.create_bucket(b"c").put(b"k", b"v")
    leaf = top_leaf(path)
    _, _, _, header = leaf_entry(path, leaf, b"c")
    # The inline entry count, past the header's root and key count: more than the value holds.
    patch(path, leaf, header + 16, "<I", 1000)
    with DB(path) as db:
        with db.view() as tx, pytest.raises(CorruptionError) as e:
            tx.bucket(b"c").get(b"k")
        assert (e.value.path, e.value.offset) == (path, leaf * PS)
        with pytest.raises(CorruptionError) as e:
            db.stats()
        assert e.value.offset == leaf * PS
    assert fsck([path]) == 4
