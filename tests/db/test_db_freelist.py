"""The persisted freelist: a commit rewrites only what changed, and free pages survive reopen."""

from __future__ import annotations

import os

from keyval.db import DB
from keyval.db.check import check_file

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
