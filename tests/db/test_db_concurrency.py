"""MVCC: readers in other threads keep stable snapshots, never block the writer, and pages are
reused once no reader can see them. Threads synchronise on queues and events only."""

from __future__ import annotations

import os
import queue
import threading
from contextlib import ExitStack

import pytest

from keyval.db import DB
from keyval.db.check import check_file
from keyval.errors import ClosedError

from .conftest import dump

JOIN = 60  # seconds; only a guard against a deadlock hanging the suite


def run_thread(target, *args) -> tuple[threading.Thread, list]:
    errors: list = []

    def wrapper():
        try:
            target(*args)
        except BaseException as e:  # handed to the test thread to fail there
            errors.append(e)

    t = threading.Thread(target=wrapper, daemon=True)
    t.start()
    return t, errors


def finish(t: threading.Thread, errors: list) -> None:
    t.join(JOIN)
    assert not t.is_alive(), "thread deadlocked"
    if errors:
        raise errors[0]


def seed(db, n=500, value=b"0"):
    with db.update() as tx:
        b = tx.create_bucket(b"b", exist_ok=True)
        for i in range(n):
            b.put(b"k%04d" % i, value * (1 + i % 200))


def test_reader_in_another_thread_sees_its_snapshot_while_writer_commits(db):
    seed(db)
    commits: queue.Queue = queue.Queue()
    acks: queue.Queue = queue.Queue()
    first = dump(db)

    def reader():
        with db.view() as tx:
            snapshot = {k: v for k, v in tx.bucket(b"b").items()}
            assert snapshot == first[b"b"]["kv"]
            acks.put("ready")
            while commits.get() != "done":
                assert dict(tx.bucket(b"b").items()) == snapshot
                assert tx.bucket(b"b").get(b"k0007") == snapshot[b"k0007"]
                acks.put("ok")

    t, errors = run_thread(reader)
    assert acks.get(timeout=JOIN) == "ready"
    for round_ in range(20):
        with db.update() as tx:
            b = tx.bucket(b"b")
            for i in range(round_, 500, 7):
                b.put(b"k%04d" % i, b"%d" % round_ * 300)  # overflow values too
            b.delete(b"k%04d" % round_)
        commits.put("commit")
        assert acks.get(timeout=JOIN) == "ok"
    commits.put("done")
    finish(t, errors)
    assert dump(db) != first


def test_writer_commits_while_readers_stay_open(db):
    seed(db)
    release = threading.Event()
    opened = threading.Barrier(4)

    def reader():
        with db.view() as tx:
            tx.bucket(b"b").get(b"k0001")
            opened.wait(JOIN)
            release.wait(JOIN)

    threads = [run_thread(reader) for _ in range(3)]
    opened.wait(JOIN)

    def writer():
        for i in range(30):
            with db.update() as tx:
                tx.bucket(b"b").put(b"w%d" % i, b"x")

    w = run_thread(writer)
    finish(*w)  # the readers are all still open: the writer did not wait for them
    release.set()
    for t in threads:
        finish(*t)
    with db.view() as tx:
        assert tx.bucket(b"b").get(b"w29") == b"x"


def test_every_snapshot_is_a_committed_state_under_concurrent_transfers(db):
    """The writer moves amounts between accounts; every reader's snapshot sums to the total."""
    accounts, total = 200, 200 * 1000
    with db.update() as tx:
        b = tx.create_bucket(b"acct")
        for i in range(accounts):
            b.put(b"a%03d" % i, b"%d" % 1000)
    stop = threading.Event()

    def writer():
        import random

        rng = random.Random(3)
        for _ in range(150):
            with db.update() as tx:
                b = tx.bucket(b"acct")
                for _ in range(5):
                    x, y = rng.sample(range(accounts), 2)
                    amount = rng.randrange(100)
                    b.put(b"a%03d" % x, b"%d" % (int(b[b"a%03d" % x]) - amount))
                    b.put(b"a%03d" % y, b"%d" % (int(b[b"a%03d" % y]) + amount))
        stop.set()

    seen = []

    def reader():
        while not stop.is_set():
            with db.view() as tx:
                b = tx.bucket(b"acct")
                assert sum(int(v) for _, v in b.items()) == total
                seen.append(tx.txid)

    readers = [run_thread(reader) for _ in range(3)]
    w = run_thread(writer)
    finish(*w)
    for r in readers:
        finish(*r)
    assert len(set(seen)) > 1  # the readers really ran beside the writer


def test_second_update_waits_for_the_first_to_end(db):
    seed(db, 10)
    order: list[str] = []
    started = threading.Event()

    def second():
        started.set()
        with db.update() as tx:
            order.append("second entered")
            assert tx.bucket(b"b")[b"k0001"] == b"first"

    with db.update() as tx:
        t, errors = run_thread(second)
        started.wait(JOIN)
        # The second writer must not get in while this one is open; give it every chance.
        t.join(0.2)
        tx.bucket(b"b").put(b"k0001", b"first")
        order.append("first committing")
    finish(t, errors)
    assert order == ["first committing", "second entered"]


def test_file_stops_growing_under_steady_updates_with_readers_coming_and_going(path):
    sizes = []
    with DB(path, page_size=512) as db:
        seed(db, 300)
        with ExitStack() as readers:
            open_views: list = []
            for i in range(600):
                with db.update() as tx:
                    b = tx.bucket(b"b")
                    for j in range(i % 13, 300, 13):
                        b.put(b"k%04d" % j, os.urandom(20 + (i * j) % 400))
                if i % 5 == 0:  # a reader opens, and lives across the next ten commits
                    cm = db.view()
                    tx = cm.__enter__()
                    assert len(tx.bucket(b"b")) == 300
                    open_views.append((i, cm))
                while open_views and open_views[0][0] <= i - 10:
                    open_views.pop(0)[1].__exit__(None, None, None)
                sizes.append(os.path.getsize(path))
            readers.callback(lambda: [cm.__exit__(None, None, None) for _, cm in open_views])
    assert sizes[599] == sizes[300], "the file kept growing: freed pages are not reused"
    assert check_file(path) == []


def test_pages_seen_by_an_open_reader_are_not_reused(db):
    seed(db, 300, b"a")
    before = dump(db)
    with db.view() as old:
        for i in range(50):
            with db.update() as tx:
                b = tx.bucket(b"b")
                for j in range(300):
                    b.put(b"k%04d" % j, b"%d" % i)
        assert dict(old.bucket(b"b").items()) == before[b"b"]["kv"]


def test_close_waits_for_readers_of_other_threads(path):
    db = DB(path, page_size=512)
    seed(db, 10)
    opened, release = threading.Event(), threading.Event()

    def reader():
        with db.view() as tx:
            opened.set()
            release.wait(JOIN)
            assert tx.bucket(b"b")[b"k0001"] == b"00"  # the file is still open under it

    r = run_thread(reader)
    opened.wait(JOIN)
    closer = run_thread(db.close)
    closer[0].join(0.2)  # give close() every chance to return early: it must not
    assert closer[0].is_alive()
    release.set()
    finish(*r)
    finish(*closer)
    with pytest.raises(ClosedError), db.view():
        pass
