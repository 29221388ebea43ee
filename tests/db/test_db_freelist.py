"""The persisted freelist: a commit rewrites only what changed, and free pages survive reopen."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from keyval.db import DB
from keyval.db.check import check_file
from keyval.db.freelist import WINDOW_PAGES, Freelist

PS = 512


def changed_pages(path: str, before: bytes) -> int:
    with open(path, "rb") as f:
        after = f.read()
    n = max(len(before), len(after)) // PS
    return sum(1 for p in range(n) if before[p * PS : (p + 1) * PS] != after[p * PS : (p + 1) * PS])


def one_key_commit_cost(path: str) -> int:
    with open(path, "rb") as f:
        before = f.read()
    with DB(path) as db, db.update() as tx:
        tx.bucket(b"b").put(b"one", b"key")
    return changed_pages(path, before)


def test_one_key_commit_after_mass_delete_costs_what_it_costs_on_a_fresh_file(tmp_path):
    fresh = str(tmp_path / "fresh.db")
    with DB(fresh, page_size=PS) as db, db.update() as tx:
        tx.create_bucket(b"b").put(b"k", b"v")
    churned = str(tmp_path / "churned.db")
    with DB(churned, page_size=PS) as db:
        for part in range(4):
            with db.update() as tx:
                b = tx.create_bucket(b"b", exist_ok=True)
                for i in range(10_000):
                    b.put(b"%d-%06d" % (part, i), b"v" * 64)
        for part in range(4):
            with db.update() as tx:
                b = tx.bucket(b"b")
                for i in range(10_000):
                    b.delete(b"%d-%06d" % (part, i))
        stats = db.stats()
    assert stats["free_pages"] + stats["pending_pages"] > 5000  # many freelist chunks' worth
    # Meta, the leaf path of one key, and the freelist chunks and root that changed.
    assert one_key_commit_cost(fresh) <= 8
    assert one_key_commit_cost(churned) <= 8
    assert check_file(churned) == []


def test_free_pages_survive_reopen_and_are_reused(tmp_path):
    path = str(tmp_path / "f.db")
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(3000):
                b.put(b"%06d" % i, b"v" * 50)
        with db.update() as tx:
            for i in range(3000):
                tx.bucket(b"b").delete(b"%06d" % i)
        freed = db.stats()
    size = os.path.getsize(path)
    with DB(path) as db:
        assert db.stats()["free_pages"] == freed["free_pages"] + freed["pending_pages"]
        with db.update() as tx:
            b = tx.bucket(b"b")
            for i in range(2000):
                b.put(b"%06d" % i, b"w" * 50)
    assert os.path.getsize(path) == size
    assert check_file(path) == []


def test_freelist_spanning_several_chunks_round_trips(tmp_path):
    path = str(tmp_path / "f.db")
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(2000):
                b.put(b"%06d" % i, os.urandom(3000))  # 7 pages each: ~14,000 pages
        with db.update() as tx:
            b = tx.bucket(b"b")
            for i in range(0, 2000, 2):
                b.delete(b"%06d" % i)
        expected = db.stats()
        assert expected["freelist_pages"] >= 4
    with DB(path) as db:
        assert db.stats()["free_pages"] == expected["free_pages"] + expected["pending_pages"]
    assert check_file(path) == []


def _window_counts(fl: Freelist) -> bytes:
    step = WINDOW_PAGES // 8
    return bytes(
        int.from_bytes(fl.bits[i : i + step], "little").bit_count()
        for i in range(0, len(fl.bits), step)
    )


def _freelist_with(free_pages, hwm: int = 10_000) -> Freelist:
    """Pages below ``hwm`` not in ``free_pages`` are in use."""
    fl = Freelist(4096)
    fl._set(hwm - 1)  # the bitmap covers the whole file ...
    fl._clear(hwm - 1)  # ... and its last page is in use
    for p in free_pages:
        fl.pend(1, p, 1)
    fl.release_all()
    return fl


def test_single_pages_come_side_by_side_from_a_window_with_many_free():
    """Scattered free pages low in the file, one free stretch higher up: a commit's pages
    come from the stretch, consecutive, so that they go out in one write; shrink()'s
    commits still take the lowest pages, to empty the tail."""
    scattered = list(range(10, 2000, 7))
    stretch = list(range(5000, 5000 + 4 * WINDOW_PAGES))
    fl = _freelist_with(scattered + stretch)
    got = [fl.allocate(1, 10_000)[0] for _ in range(300)]
    assert got == stretch[:300]
    assert _window_counts(fl) == bytes(fl.window_counts)
    fl.write(2, 10_000)  # the end of a commit, whose own freelist pages are the lowest free
    # What the windows gave that the commit did not use is free again, in the bitmap the
    # chunks were written from too (else it would leak on disk).
    assert set(stretch[300:]) <= set(fl.free)
    assert all(fl.bits[p >> 3] >> (p & 7) & 1 for p in stretch[300:])
    fl.lowest_first = True
    lowest = sorted(fl.free)[:3]
    assert [fl.allocate(1, 10_000)[0] for _ in range(3)] == lowest
    assert set(lowest) <= set(scattered)


@given(st.lists(st.tuples(st.sampled_from(["free", "alloc", "run", "trim"]), st.integers(0, 3000))))
def test_window_counts_follow_the_bitmap(ops):
    fl = Freelist(4096)
    hwm = 3001
    for op, p in ops:
        if op == "free" and not (fl.bits[p >> 3 : (p >> 3) + 1] or b"\0")[0] & (1 << (p & 7)):
            fl.pend(1, p, 1)
            fl.release_all()
        elif op == "alloc":
            _, hwm = fl.allocate(1, hwm)
        elif op == "run":
            _, hwm = fl.allocate(1 + p % 5, hwm)
        elif op == "trim":
            hwm = fl.trim_tail(hwm)
        assert bytes(fl.window_counts).rstrip(b"\0") == _window_counts(fl).rstrip(b"\0")


def test_the_free_tail_of_the_file_is_left_for_shrink():
    """Free pages scattered low in the file and a free tail after the last page in use: a
    commit takes the scattered ones, so that shrink() can still give the tail back."""
    scattered = list(range(10, 2000, 7))
    fl = _freelist_with(scattered + list(range(4000, 10_000)))
    got = [fl.allocate(1, 10_000)[0] for _ in range(100)]
    assert all(p < 2000 for p in got)
    assert fl.trim_tail(10_000) == 4000
