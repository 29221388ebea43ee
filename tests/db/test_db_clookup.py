"""Bucket.get and Bucket.put in C (csrc/db/pylookup.c) against the Python paths and a model.

The C get answers exact bytes keys whose value is plain or absent and hands every other call
to ``_get`` with the same arguments; the C put takes plain puts along a dirty path, or one it
makes dirty from nodes in the page cache, and hands everything else to ``_put``. These tests
hold both to the Python paths' answers and a model, the same errors for bad input, a closed
transaction or a deleted bucket, and check that a writer getting in C is not starved by busy
readers (the method keeps the GIL).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyval.db import DB, pagemap
from keyval.db.check import check_file
from keyval.db.node import SPLIT_ENTRIES
from keyval.db.page import MAX_KEY_SIZE
from keyval.errors import (
    BucketExists,
    BucketNotFound,
    KeyTooLarge,
    KeyvalError,
    ReadOnlyError,
    TxClosedError,
)

pytestmark = pytest.mark.skipif(pagemap.CLookup is None, reason="keyval._db_cffi is not usable")

PS = 512


class Key(bytes):
    """A bytes subclass: a valid key the C method leaves to the Python path."""


def answers(b, key):
    """Every way of asking ``b`` for ``key``, as data to compare."""
    out = [b.get(key), b.get(key, b"D"), b.get(key, default=b"E")]
    try:
        out.append(b[key])
    except KeyError:
        out.append(KeyError)
    return out


def python_answers(b, key):
    out = [b._get(key), b._get(key, b"D"), b._get(key, default=b"E")]
    v = b._get(key)
    out.append(KeyError if v is None else v)
    return out


values = st.one_of(
    st.binary(max_size=40),  # plain, in the leaf
    st.binary(min_size=200, max_size=300),  # over the inline limit of 512-byte pages
)
contents = st.dictionaries(st.binary(min_size=1, max_size=20), values, min_size=1, max_size=300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=contents, data=st.data())
def test_get_in_c_answers_as_the_python_path_and_the_model(tmp_path_factory, content, data):
    path = str(tmp_path_factory.mktemp("clookup") / "t.db")
    nested = data.draw(st.sets(st.binary(min_size=1, max_size=20), max_size=5))
    nested -= set(content)
    probes = [*content, *nested, *data.draw(st.lists(st.binary(min_size=1, max_size=20)))]
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k, v in content.items():
                b.put(k, v)
            for name in nested:
                b.create_bucket(name).put(b"x", b"y")
        with db.view() as tx:
            b = tx.bucket(b"b")
            for k in probes:
                want = content.get(k)
                assert answers(b, k) == python_answers(b, k)
                assert b.get(k) == want
                assert b.get(Key(k)) == want
        with db.update() as tx:
            b = tx.bucket(b"b")
            first = probes[0]
            assert b.get(first) == content.get(first)  # committed pages, in C
            b.put(first, b"new")  # the tree is dirty: every get goes to _get from here
            content[first] = b"new"
            for k in probes:
                assert answers(b, k) == python_answers(b, k)
                assert b.get(k) == content.get(k)


@pytest.fixture
def loaded(path):
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(500):
                b.put(b"k%04d" % i, b"v%d" % i)
        yield db


@pytest.mark.parametrize("key", ["k0001", 1, None, bytearray(b"k0001"), memoryview(b"k0001")])
def test_a_key_that_is_not_bytes_is_a_type_error(loaded, key):
    with loaded.view() as tx:
        b = tx.bucket(b"b")
        with pytest.raises(TypeError, match="keys are bytes"):
            b.get(key)
        with pytest.raises(TypeError, match="keys are bytes"):
            b.get(key, b"default")
        assert b.get(b"k0001") == b"v1"  # the bucket still works


def test_wrong_arguments_are_a_type_error(loaded):
    with loaded.view() as tx:
        b = tx.bucket(b"b")
        with pytest.raises(TypeError):
            b.get()
        with pytest.raises(TypeError):
            b.get(b"k0001", b"d", b"extra")
        with pytest.raises(TypeError):
            b.get(b"k0001", nonsense=1)


def test_get_after_the_transaction_ended_is_refused(loaded):
    with loaded.view() as tx:
        b = tx.bucket(b"b")
        get = b.get
        assert get(b"k0001") == b"v1"
    with pytest.raises(TxClosedError):
        get(b"k0001")
    with pytest.raises(TxClosedError):
        b.get(b"k0001")


def test_get_in_a_deleted_bucket_is_refused(loaded):
    with loaded.update() as tx:
        b = tx.bucket(b"b")
        assert b.get(b"k0001") == b"v1"
        tx.delete_bucket(b"b")
        with pytest.raises(BucketNotFound):
            b.get(b"k0001")


def test_a_writer_getting_in_c_is_not_starved_by_busy_readers(tmp_path):
    """The C get keeps the GIL for its whole call (csrc/db/pylookup.c has no
    Py_BEGIN_ALLOW_THREADS), so for thread switching it is one more builtin call: a writer that
    gets and commits beside three readers that scan and get without pause still finishes its
    100 durable transactions in seconds. (keyval/_db_build.py tells of the starvation that
    releasing the GIL on every cffi lookup caused: 35 s for 150 small transactions.)"""
    with DB(str(tmp_path / "w.db"), page_size=PS, sync=True) as db:
        keys = [b"k%04d" % i for i in range(2000)]
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, k)
        stop = threading.Event()
        scans = [0, 0, 0]
        errors: list[BaseException] = []

        def reader(slot: int) -> None:
            try:
                while not stop.is_set():
                    with db.view() as tx:
                        b = tx.bucket(b"b")
                        if sum(1 for _ in b.items()) < len(keys):
                            raise AssertionError("a key went missing")
                        get = b.get
                        for k in keys:
                            if get(k) != k:
                                raise AssertionError(k)
                    scans[slot] += 1
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            started = time.monotonic()
            for i in range(100):
                with db.update() as tx:
                    b = tx.bucket(b"b")
                    for k in keys[i : i + 100]:  # in C: the bucket is clean until the put
                        assert b.get(k) == k
                    b.put(b"w", b"%d" % i)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not errors
        assert all(scans)  # the readers ran beside the writer
        assert elapsed < 20, f"100 transactions took {elapsed:.1f} s beside the readers"


# -- put in C ---------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "big", "delete", "nested", "commit"]),
        st.integers(0, 3000),
        st.integers(0, 60),
    ),
    max_size=400,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, bulk=st.integers(0, 2500))
def test_puts_in_c_leave_the_bucket_the_model_says(tmp_path_factory, ops, bulk):
    """A bulk of puts (past an in-memory split at SPLIT_ENTRIES), then puts of plain and
    overflow values, deletes, nested buckets and commits mixed: the bucket always reads as the
    model, through get, items and len, and after reopening."""
    path = str(tmp_path_factory.mktemp("cput") / "t.db")
    model: dict[bytes, bytes] = {}
    nested: set[bytes] = set()
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(bulk):
                k = b"k%05d" % ((i * 7919) % 5000)
                b.put(k, b"v%d" % i)
                model[k] = b"v%d" % i
            rest = list(ops)
        while rest:  # one transaction per run of ops up to a "commit"
            with db.update() as tx:
                b = tx.bucket(b"b")
                while rest:
                    op, n, size = rest.pop(0)
                    if op == "commit":
                        break
                    apply_op(b, op, b"k%05d" % n, size, model, nested)
                assert len(b) == len(model)
                assert dict(b.items()) == model
                assert {k: b.get(k) for k in model} == model
    with DB(path) as db, db.view() as tx:
        b = tx.bucket(b"b")
        assert dict(b.items()) == model
        assert set(b.buckets()) == nested
        assert len(b) == len(model)
    assert check_file(path) == []  # every page a put replaced freed once, none still in use


def apply_op(b, op: str, k: bytes, size: int, model: dict, nested: set) -> None:
    if op == "delete":
        if k in nested:
            with pytest.raises(BucketExists):
                b.delete(k)
        else:
            assert b.delete(k) == (k in model)
            model.pop(k, None)
    elif op == "nested":
        if k not in model:
            b.create_bucket(k, exist_ok=True)
            nested.add(k)
    elif k in nested:
        with pytest.raises(BucketExists):
            b.put(k, b"x")
    else:
        v = bytes([k[-1]]) * (size if op == "put" else 300 + size)
        b.put(k, v)
        model[k] = v


@pytest.fixture
def python_puts(monkeypatch) -> list[int]:
    """[n]: how many puts have reached Bucket._put (the Python path) so far."""
    from keyval.db.bucket import Bucket

    calls = [0]
    python_put = Bucket._put

    def counting(self, key, value):
        calls[0] += 1
        return python_put(self, key, value)

    monkeypatch.setattr(Bucket, "_put", counting)
    return calls


def test_a_bulk_load_is_put_in_c(path, python_puts):
    """After the first puts have made the path dirty, puts no longer reach Bucket._put, but
    for those that split a leaf (one in SPLIT_ENTRIES / 2 at most)."""
    calls = python_puts
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(5000):
                b.put(b"k%05d" % ((i * 7919) % 5000), b"v")
        assert calls[0] < 10 + 5000 // (SPLIT_ENTRIES // 2)
        with db.view() as tx:
            assert len(tx.bucket(b"b")) == 5000


def test_updates_after_a_commit_are_put_in_c_and_free_the_pages_they_replace(path, python_puts):
    """Puts into a committed tree: the first arms the C put, which then makes every clean
    leaf and branch on its way dirty itself (from the page cache), as Bucket._put would. The
    bucket reads as the model, and fsck finds each replaced page freed exactly once: none
    leaked, none reachable from the tree and free at the same time."""
    import random

    calls = python_puts
    rng = random.Random(5)
    keys = [b"k%05d" % i for i in range(20000)]
    model = dict.fromkeys(keys, b"v")
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, b"v")
        assert db.stats()["depth"] >= 3  # branches to copy, not only leaves
        for r in range(20):
            calls[0] = 0
            with db.update() as tx:
                b = tx.bucket(b"b")
                for k in rng.sample(keys, 300):
                    value = b"%d" % r  # no longer than before: no split
                    b.put(k, value)
                    model[k] = value
                assert calls[0] == 1  # the put that armed the C put
            with db.view() as tx:
                assert dict(tx.bucket(b"b").items()) == model
    assert check_file(path) == []
    with DB(path) as db, db.view() as tx:
        assert dict(tx.bucket(b"b").items()) == model


def test_a_node_a_reader_holds_is_copied_and_the_reader_keeps_its_snapshot(path, python_puts):
    """The C put makes a cached clean node dirty in place when nothing but the page cache
    refers to it (moving its entries instead of copying them). A node a reader's cursor
    holds is copied instead: that reader goes on seeing its snapshot, from the node it holds
    and from the pages it reads again after the put took the others out of the cache."""
    keys = [b"k%05d" % i for i in range(5000)]
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, b"v")
        with db.view() as old:
            cursor = old.bucket(b"b").cursor()
            assert cursor.seek(keys[2500]) == (keys[2500], b"v")  # holds that leaf's path
            with db.update() as tx:
                b = tx.bucket(b"b")
                for k in keys:
                    b.put(k, b"w")
                assert python_puts[0] < 50  # nearly all in C (a node out of the cache is not)
            walked = [cursor.next() for _ in range(100)]
            assert walked == [(k, b"v") for k in keys[2501:2601]]
            assert dict(old.bucket(b"b").items()) == dict.fromkeys(keys, b"v")
        with db.view() as tx:
            assert dict(tx.bucket(b"b").items()) == dict.fromkeys(keys, b"w")
    assert check_file(path) == []


def put_failing_allocation(testcapi, nth: int, b, key: bytes, value: bytes) -> str:
    """b.put(key, value) with the interpreter's nth allocation from here failing: "landed"
    or "refused" (MemoryError)."""
    testcapi.set_nomemory(nth, nth + 1)
    try:
        b.put(key, value)
        return "landed"
    except MemoryError:
        return "refused"
    finally:
        testcapi.remove_mem_hooks()


@pytest.mark.parametrize("nth", range(0, 16))
def test_a_put_that_runs_out_of_memory_copying_its_path_frees_nothing_still_in_use(path, nth):
    """A C put that must copy a clean branch and leaf, with its nth allocation failing: it
    lands whole, or raises MemoryError with the bucket unchanged, and either way the commit
    writes a tree in which no page is both in use and free (freeing the page before the copy
    took its place would hand it out again in this very commit)."""
    testcapi = pytest.importorskip("_testcapi", reason="needs CPython's _testcapi")
    keys = [b"k%05d" % i for i in range(5000)]
    far = keys[-1]  # not under the path the first put makes dirty
    outcome = None
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, b"v")
        with db.update() as tx:
            b = tx.bucket(b"b")
            b.put(keys[0], b"w")  # arms the C put; the rest of the tree stays clean
            outcome = put_failing_allocation(testcapi, nth, b, far, b"new")
            assert b.get(far) == (b"new" if outcome == "landed" else b"v")
            assert len(b) == len(keys)
        with db.view() as tx:
            b = tx.bucket(b"b")
            expect = dict.fromkeys(keys, b"v") | {keys[0]: b"w"}
            if outcome == "landed":
                expect[far] = b"new"
            assert dict(b.items()) == expect
    assert check_file(path) == []


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("k", b"v", TypeError),
        (b"k", "v", TypeError),
        (1, b"v", TypeError),
        (b"k", None, TypeError),
        (bytearray(b"k"), b"v", TypeError),
        (b"", b"v", KeyTooLarge),
        (b"x" * (MAX_KEY_SIZE + 1), b"v", KeyTooLarge),
    ],
)
def test_a_bad_put_is_refused_and_changes_nothing(path, key, value, error):
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(3000):
                b.put(b"k%04d" % i, b"v")  # the C put is armed from here on
            with pytest.raises(error):
                b.put(key, value)
            assert len(b) == 3000
            b.put(b"k0001", b"w")
        with db.view() as tx:
            b = tx.bucket(b"b")
            assert len(b) == 3000
            assert b.get(b"k0001") == b"w"
            assert dict(b.items()) == {b"k%04d" % i: b"w" if i == 1 else b"v" for i in range(3000)}


def test_puts_after_the_end_of_their_transaction_are_refused(path):
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            put = b.put
            for i in range(100):
                put(b"k%04d" % i, b"v")
        with pytest.raises(TxClosedError):
            put(b"k0001", b"late")
        with db.view() as tx:
            b = tx.bucket(b"b")
            with pytest.raises(ReadOnlyError):
                b.put(b"k0001", b"x")
            assert b.get(b"k0001") == b"v"


def test_puts_into_a_deleted_bucket_are_refused(path):
    with DB(path, page_size=PS) as db, db.update() as tx:
        b = tx.create_bucket(b"b")
        for i in range(100):
            b.put(b"k%04d" % i, b"v")
        tx.delete_bucket(b"b")
        with pytest.raises(BucketNotFound):
            b.put(b"k0001", b"x")


def test_puts_in_c_of_every_key_again_find_each_in_its_leaf(path):
    """Keys equal to a branch's separators belong to the right child: puts of every key of a
    committed tree, twice (the second time every path is dirty and all go through C), replace
    values and add nothing."""
    keys = [b"k%05d" % i for i in range(3000)]
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, b"1")
        with db.update() as tx:
            b = tx.bucket(b"b")
            for value in (b"2", b"3"):
                for k in keys:
                    b.put(k, value)
                assert len(b) == len(keys)
                assert list(b.items()) == [(k, value) for k in keys]
        with db.view() as tx:
            assert list(tx.bucket(b"b").items()) == [(k, b"3") for k in keys]


@pytest.mark.parametrize("nth", range(0, 48, 3))
def test_a_put_that_runs_out_of_memory_never_commits_half_of_itself(path, nth):
    """A put into a full in-memory leaf (C put, then the split in Python) with its nth
    allocation failing. Either the put lands whole, or it raises MemoryError having changed
    nothing, or the transaction is broken and its commit refuses: never a committed file
    whose bucket counts one key less than its tree holds (the C put once counted the key
    after inserting it), or a half-split leaf."""
    testcapi = pytest.importorskip("_testcapi", reason="needs CPython's _testcapi")
    keys = [b"k%04d" % i for i in range(0, 1024, 2)]  # 512: one leaf, full (SPLIT_ENTRIES)
    new = b"k0001"
    outcome = None
    with DB(path) as db:
        try:
            with db.update() as tx:
                b = tx.create_bucket(b"b")
                for k in keys:
                    b.put(k, b"v")
                assert b._mods > 256  # each change makes a new int: an allocation
                outcome = put_failing_allocation(testcapi, nth, b, new, b"new")
                if outcome == "refused" and tx._broken is None:
                    assert (len(b), b.get(new)) == (len(keys), None)  # nothing changed
        except KeyvalError as exc:
            assert outcome == "refused" and "rolled back" in str(exc)
            outcome = "rolled back"
        with db.view() as tx:
            if outcome == "rolled back":
                assert list(tx.buckets()) == []
            else:
                b = tx.bucket(b"b")
                expect = sorted([*keys, new]) if outcome == "landed" else keys
                assert ([k for k, _ in b.items()], len(b)) == (expect, len(expect))
    assert check_file(path) == []


# Run in a child process: the failure this guards against was a segmentation fault.
_COLLECTION_DURING_A_PUT = r"""
import gc, sys
from keyval.db import DB
from keyval.errors import TxClosedError

path, mode = sys.argv[1], sys.argv[2]
keys = [b"k%05d" % i for i in range(5000)]
with DB(path, page_size=512) as db:
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        for k in keys:
            b.put(k, b"v")
    cm = db.update()
    tx = cm.__enter__()
    b = tx.bucket(b"b")
    b.put(keys[0], b"w")  # arms the C put; the path to keys[-1] stays clean, in the cache

    class Finalizer:
        def __init__(self, action):
            self.action = action
            self.cycle = self  # garbage that only a collection frees

        def __del__(self):
            self.action()

    if mode == "rollback":  # the update's generator, left in a cycle: closing it rolls back
        holder = [cm]
        holder.append(holder)
        del cm, holder
    elif mode == "commit":
        Finalizer(tx.commit)
    elif mode == "put":
        Finalizer(lambda: b.put(keys[1], b"put by a finalizer"))
    gc.set_threshold(1)  # the next allocation of a container collects: the C put's copy
    try:
        b.put(keys[-1], b"new")
        outcome = "landed"
    except TxClosedError:
        outcome = "closed"
    gc.set_threshold(700)
    gc.collect()
    if mode != "rollback":
        cm.__exit__(None, None, None)
    with db.view() as tx:
        b = tx.bucket(b"b")
        print(outcome, *[b.get(k).decode() for k in (keys[0], keys[1], keys[-1])], len(b))
"""


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("rollback", "landed v v v 5000"),  # and then rolled back
        ("commit", "landed w v new 5000"),
        ("put", "landed w put by a finalizer new 5000"),
    ],
)
def test_a_collection_started_by_the_copy_of_a_clean_path_runs_no_python_code_in_the_put(
    path, mode, expect
):
    """The C put allocates the copies of the clean nodes on its way down, and an allocation
    may start a collection, whose finalizers are Python code: code that ends the transaction
    (an abandoned update() in a cycle rolls back: the C put then appended the freed run to
    the NULL it found where Tx._freed was, and crashed), commits it (sealing the branch the
    put holds a borrowed reference to into tuples) or puts into the same bucket. The
    collection waits until the put is done, which then lands whole; the finalizer acts
    after it, and the file is sound."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _COLLECTION_DURING_A_PUT, path, mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == expect
    assert check_file(path) == []


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt, which Python checks for as a function starts."""


def test_an_interrupt_at_any_call_of_a_splitting_put_never_half_lands(path):
    """The put that overfills a leaf, interrupted as the nth Python function it runs starts
    (where a signal's KeyboardInterrupt, or a frame's MemoryError, is raised). Either the put
    lands whole, or nothing changed, or the transaction is broken and rolls back: never a
    key that landed while the put raised in an unbroken transaction (the C put once inserted
    the key and then called a Python method to split the leaf, outside the guard that breaks
    the transaction)."""
    import sys

    keys = [b"k%04d" % i for i in range(0, 1024, 2)]  # 512: one leaf, full (SPLIT_ENTRIES)
    new = b"k0001"
    outcomes = set()
    for nth in range(1, 200):
        calls = 0

        def tracer(frame, event, arg, nth=nth):
            nonlocal calls
            if event == "call":
                calls += 1
                if calls == nth:
                    raise _Interrupt
            return None

        with DB(path) as db:
            with db.update() as tx:
                b = tx.create_bucket(b"b")
                for k in keys:
                    b.put(k, b"v")
                sys.settrace(tracer)
                try:
                    b.put(new, b"new")
                    outcome = "landed"
                except _Interrupt:
                    outcome = "refused"
                finally:
                    sys.settrace(None)
                if outcome == "refused" and tx._broken is not None:
                    outcome = "broken"
                outcomes.add(outcome)
                if outcome == "refused":
                    assert (len(b), b.get(new)) == (len(keys), None), nth  # nothing changed
                if outcome == "landed":
                    assert (len(b), b.get(new)) == (len(keys) + 1, b"new")
                tx.rollback()
            if outcome == "landed":
                break
        os.unlink(path)
    assert outcome == "landed" and "broken" in outcomes, outcomes  # every call was tried
