"""keyval.db against a model (dicts of dicts), driven by hypothesis' stateful testing.

Each rule is one transaction of random operations (puts, deletes, nested buckets, bucket
deletion) that commits or rolls back (an exception inside ``update()``); the machine also
reopens the file, and walks cursors both ways from random seeks. After every step the whole
database must equal the model, and after every reopen the checker must find the file clean.

KEYVAL_DB_EXAMPLES (default 25) and KEYVAL_DB_STEPS (default 40) scale the run.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from bisect import bisect_left

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyval.db import DB
from keyval.db.check import check_file

from .conftest import dump

EXAMPLES = int(os.environ.get("KEYVAL_DB_EXAMPLES", "25"))
STEPS = int(os.environ.get("KEYVAL_DB_STEPS", "40"))
PAGE_SIZE = 512  # small pages: splits, merges, overflow runs and multi-page nodes come early

# Bucket names start with 0x00 and keys never do, so a key is never also a bucket's name.
NAMES = [b"\x00a", b"\x00b", b"\x00c"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple)
keys = st.one_of(
    st.sampled_from([b"k%02d" % i for i in range(40)]),
    st.binary(min_size=1, max_size=24).map(lambda b: b"k" + b),
    st.integers(100, 2500).map(lambda n: b"K" + b"x" * n),  # keys bigger than a page
)
bounds = st.one_of(keys, st.integers(0, 700).map(lambda i: b"r%04d" % i))
values = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 6000).map(lambda n: bytes([n % 251]) * n),  # overflow values
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), paths, keys, values),
        st.tuples(st.just("put"), paths, keys, values),
        st.tuples(st.just("delete"), paths, keys),
        st.tuples(st.just("create"), paths),
        st.tuples(st.just("drop"), paths),
        # Runs of keys and deletes of key ranges: deep trees, and whole branches emptied
        # beside underfull ones (a merge of such a pair once broke the commit).
        st.tuples(
            st.just("load"), paths, st.integers(0, 400), st.integers(1, 300), st.integers(0, 60)
        ),
        st.tuples(st.just("delete_range"), paths, bounds, bounds),
    ),
    min_size=1,
    max_size=25,
)


class Rollback(Exception):
    pass


def model_bucket(model: dict, path: tuple, create: bool) -> dict | None:
    node = {"sub": model}
    for name in path:
        sub = node["sub"]
        if name not in sub:
            if not create:
                return None
            sub[name] = {"kv": {}, "sub": {}}
        node = sub[name]
    return node


def db_bucket(tx, path: tuple, create: bool):
    b = tx.create_bucket(path[0], exist_ok=True) if create else tx.bucket(path[0])
    for name in path[1:]:
        b = b.create_bucket(name, exist_ok=True) if create else b.bucket(name)
    return b


def apply(tx, model: dict, op: tuple) -> None:
    kind, path = op[0], op[1]
    if kind == "put":
        db_bucket(tx, path, True).put(op[2], op[3])
        model_bucket(model, path, True)["kv"][op[2]] = op[3]
    elif kind == "delete":
        existed = db_bucket(tx, path, True).delete(op[2])
        assert existed == (model_bucket(model, path, True)["kv"].pop(op[2], None) is not None)
    elif kind == "load":
        _, _, start, count, pad = op
        bucket, kv = db_bucket(tx, path, True), model_bucket(model, path, True)["kv"]
        for i in range(start, start + count):
            key = b"r%04d" % i + b"x" * pad
            bucket.put(key, b"%d" % i)
            kv[key] = b"%d" % i
    elif kind == "delete_range":
        bucket, kv = db_bucket(tx, path, True), model_bucket(model, path, True)["kv"]
        for key in [k for k in kv if op[2] <= k < op[3]]:
            assert bucket.delete(key)
            del kv[key]
    elif kind == "create":
        db_bucket(tx, path, True)
        model_bucket(model, path, True)
    elif kind == "drop":
        parent = model_bucket(model, path[:-1], False) if len(path) > 1 else {"sub": model}
        if parent is not None and path[-1] in parent["sub"]:
            owner = tx if len(path) == 1 else db_bucket(tx, path[:-1], False)
            owner.delete_bucket(path[-1])
            del parent["sub"][path[-1]]


class DBMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="keyval-db-model-")
        self.path = os.path.join(self.dir, "model.db")
        self.db = DB(self.path, page_size=PAGE_SIZE)
        self.model: dict = {}

    def teardown(self):
        self.db.close()
        try:
            assert check_file(self.path) == []
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(batch=ops, commit=st.booleans())
    def transaction(self, batch, commit):
        new = copy.deepcopy(self.model)
        try:
            with self.db.update() as tx:
                for op in batch:
                    apply(tx, new, op)
                if not commit:
                    raise Rollback
        except Rollback:
            return
        self.model = new

    @rule(batch=ops)
    def transaction_with_reads_of_own_writes(self, batch):
        new = copy.deepcopy(self.model)
        with self.db.update() as tx:
            for op in batch:
                apply(tx, new, op)
            seen = {n: _dump_tx(tx.bucket(n)) for n in tx.buckets()}
        assert seen == new
        self.model = new

    @rule()
    def shrink(self):
        """Moves live pages off the tail and cuts it: the content must not change, and the
        file must not grow."""
        before = os.path.getsize(self.path)
        freed = self.db.shrink()
        assert freed == before - os.path.getsize(self.path) >= 0
        assert check_file(self.path) == []

    @rule()
    def reopen(self):
        self.db.close()
        assert check_file(self.path) == []
        self.db = DB(self.path)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cursor_walk(self, data):
        path = data.draw(st.sampled_from(sorted(_all_paths(self.model))))
        expected = sorted(model_bucket(self.model, path, False)["kv"].items())
        ks = [k for k, _ in expected]
        with self.db.view() as tx:
            c = db_bucket(tx, path, False).cursor()
            pos = bisect_left(ks, data.draw(keys))
            got = c.seek(
                ks[pos] if pos < len(ks) and data.draw(st.booleans()) else ks_probe(ks, pos)
            )
            assert got == (expected[pos] if pos < len(ks) else None)
            at = pos if pos < len(ks) else len(ks)  # len(ks) means past the end
            for move in data.draw(st.lists(st.sampled_from(["next", "prev"]), max_size=20)):
                if move == "next":
                    at = min(at + 1, len(ks)) if at >= 0 else 0
                    want = expected[at] if at < len(ks) else None
                    assert c.next() == want
                else:
                    at = max(at - 1, -1) if at <= len(ks) else len(ks) - 1
                    want = expected[at] if at >= 0 else None
                    assert c.prev() == want

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), reverse=st.booleans())
    def range_scan(self, data, reverse):
        path = data.draw(st.sampled_from(sorted(_all_paths(self.model))))
        kv = model_bucket(self.model, path, False)["kv"]
        start = data.draw(st.none() | keys)
        stop = data.draw(st.none() | keys)
        want = [
            (k, v)
            for k, v in sorted(kv.items(), reverse=reverse)
            if (start is None or k >= start) and (stop is None or k < stop)
        ]
        with self.db.view() as tx:
            got = list(db_bucket(tx, path, False).items(start, stop, reverse=reverse))
        assert got == want

    @invariant()
    def database_equals_model(self):
        assert dump(self.db) == self.model
        with self.db.view() as tx:
            for path in _all_paths(self.model):
                assert len(db_bucket(tx, path, False)) == len(
                    model_bucket(self.model, path, False)["kv"]
                )


def ks_probe(ks: list[bytes], pos: int) -> bytes:
    """A seek key that lands on ``ks[pos]`` without being it (or past the end)."""
    if pos < len(ks):
        prev = ks[pos - 1] if pos else b""
        return prev + b"\x00" if prev + b"\x00" < ks[pos] else ks[pos]
    return ks[-1] + b"\x00" if ks else b"k"


def _all_paths(model: dict, prefix: tuple = ()) -> set:
    out = set()
    for name, node in model.items():
        out.add((*prefix, name))
        out |= _all_paths(node["sub"], (*prefix, name))
    return out


def _dump_tx(bucket) -> dict:
    return {
        "kv": dict(bucket.items()),
        "sub": {n: _dump_tx(bucket.bucket(n)) for n in bucket.buckets()},
    }


DBMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_db_matches_model = DBMachine.TestCase


def test_shrink_never_grows_the_file_when_a_nested_bucket_it_passes_over_stays_put():
    """Found by the machine above, replayed as it printed it. shrink() charges each nested
    bucket's header path before relocating the bucket, and refunds the charge when nothing in it
    moves; the refund forgot the free runs that path's multi-page nodes had set aside, so the
    round's copies ran out of free pages and grew the file by two pages."""
    state = DBMachine()
    state.database_equals_model()
    state.transaction_with_reads_of_own_writes(
        batch=[
            ("load", (b"\x00a",), 247, 256, 36),
            ("put", (b"\x00a", b"\x00a", b"\x00a"), b"k00", b""),
            ("put", (b"\x00a",), b"k24", b""),
            ("put", (b"\x00a", b"\x00a"), b"k15", b""),
            ("delete", (b"\x00a", b"\x00a", b"\x00a"), b"k00"),
            ("load", (b"\x00b",), 332, 125, 45),
            ("put", (b"\x00a",), b"k00", b""),
            ("put", (b"\x00a", b"\x00a"), b"k00", b""),
            ("put", (b"\x00a", b"\x00a"), b"k00", b""),
            ("put", (b"\x00a",), b"k00", b""),
            ("put", (b"\x00a",), b"k00", b"U\xde\x86}"),
            ("put", (b"\x00a", b"\x00a"), b"k00", b""),
            ("delete", (b"\x00a",), b"k00"),
        ]
    )
    state.database_equals_model()
    state.transaction_with_reads_of_own_writes(
        batch=[
            ("put", (b"\x00a", b"\x00a"), b"k00", b"\xca*"),
            ("load", (b"\x00a", b"\x00a"), 254, 176, 12),
            ("put", (b"\x00b",), b"K" + b"x" * 2048, b"\xb5\xfb\xe5\x0e"),
            ("load", (b"\x00a",), 385, 114, 48),
            ("put", (b"\x00a",), b"k00", b""),
            ("load", (b"\x00a",), 365, 27, 50),
            ("delete", (b"\x00a",), b"k15"),
            ("put", (b"\x00b", b"\x00c", b"\x00a"), b"k00", b"r2l\x04\xf3\xc77uL\xde\x0e"),
            ("load", (b"\x00a", b"\x00a"), 259, 121, 34),
            ("put", (b"\x00a", b"\x00a", b"\x00a"), b"k00", b""),
            ("load", (b"\x00a", b"\x00a"), 394, 212, 0),
            ("put", (b"\x00a", b"\x00a", b"\x00a"), b"k00", b"$\xa0"),
            ("put", (b"\x00a",), b"k00", b""),
            ("create", (b"\x00a",)),
            ("delete", (b"\x00a",), b"k00"),
            ("put", (b"\x00a",), b"k00", b""),
            ("delete", (b"\x00a", b"\x00a"), b"k00"),
            ("put", (b"\x00a",), b"k35", b"\xd1MG\x82\x05\xd7\xfbDmF"),
        ]
    )
    state.database_equals_model()
    state.shrink()
    state.database_equals_model()
    state.transaction_with_reads_of_own_writes(batch=[("put", (b"\x00a",), b"k00", b"")])
    state.database_equals_model()
    state.transaction_with_reads_of_own_writes(
        batch=[("put", (b"\x00b", b"\x00a", b"\x00a"), b"k00", b"")]
    )
    state.database_equals_model()
    state.transaction(
        batch=[
            ("load", (b"\x00a",), 285, 64, 0),
            ("put", (b"\x00a",), b"k00", b""),
            ("create", (b"\x00b", b"\x00b")),
            ("load", (b"\x00a", b"\x00a", b"\x00b"), 351, 268, 27),
            ("drop", (b"\x00a", b"\x00a", b"\x00a")),
            ("delete", (b"\x00a",), b"k00"),
        ],
        commit=True,
    )
    state.database_equals_model()
    state.shrink()
    state.teardown()
