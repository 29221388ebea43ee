"""keyval.db benchmarks: the B+tree page store beside LMDB, SQLite, RocksDB and in-memory maps.

Every system in a group holds the same keys (16-byte keys, 100-byte values by default) and
makes the same durability promise where durability is measured. Groups:

- ``db-get``: random point gets of existing keys, one read transaction per round.
- ``db-scan``: a full ordered scan.
- ``db-load-random`` / ``db-load-ascending``: load every key in one durable transaction into a
  fresh store, in random or ascending key order.
- ``db-put-1000``: 1,000 random overwrites per durable transaction.
- ``db-commit-after-delete`` / ``db-commit-fresh``: one one-key durable commit after deleting
  every key of a loaded store (the freelist's worst case), beside the same on a fresh store;
  ``extra_info["bytes_written_per_commit"]`` is what the process wrote per commit.

``dict`` and ``SortedDict`` are in-memory ceilings (``reference``), never peers. Peers that do
not import are skipped with the reason. Key count: ``KEYVAL_BENCH_DB_KEYS`` or by scale
(tiny 2,000 / quick 100,000 / full 1,000,000). Goals (the issue's) are reported, never asserted.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import SCRATCH_ENV, Goal, by_scale
from keyval.db import DB

KEYS = int(
    os.environ.get("KEYVAL_BENCH_DB_KEYS") or by_scale(tiny=2_000, quick=50_000, full=1_000_000)
)
VALUE_SIZE = 100
GETS_PER_ROUND = min(KEYS, 20_000)
GET_ROUNDS = by_scale(tiny=2, quick=10, full=10)
SCAN_ROUNDS = by_scale(tiny=2, quick=5, full=3)
LOAD_ROUNDS = by_scale(tiny=1, quick=2, full=3)
PUT_BATCH = 1_000
PUT_ROUNDS = by_scale(tiny=3, quick=20, full=30)
COMMIT_ROUNDS = by_scale(tiny=5, quick=30, full=50)
DELETE_BATCH = 100_000

KEYVAL, LMDB, SQLITE, ROCKSDB, DICT, SORTED = (
    "keyval",
    "lmdb",
    "sqlite",
    "rocksdb",
    "dict",
    "SortedDict",
)
STORES = (KEYVAL, LMDB, SQLITE, ROCKSDB)
ALL = (*STORES, DICT, SORTED)

BENCH_GOALS = [
    Goal("db: random gets >= lmdb's rate", "db-get", LMDB, 1.0),
    Goal("db: full scan >= half lmdb's keys/s", "db-scan", LMDB, 0.5),
    Goal("db: bulk load (random order) >= lmdb", "db-load-random", LMDB, 1.0),
    Goal("db: bulk load (ascending) >= lmdb", "db-load-ascending", LMDB, 1.0),
    Goal("db: random puts, 1,000 per durable tx >= lmdb", "db-put-1000", LMDB, 1.0),
]

METHOD = {
    KEYVAL: "keyval.db.DB(sync=True), one bucket; view()/update() per round",
    LMDB: "py-lmdb, sync=True, one read/write txn per round",
    SQLITE: "sqlite3, WITHOUT ROWID table, journal_mode=WAL, synchronous=FULL",
    ROCKSDB: "rocksdict Rdict; WriteBatch with WriteOptions(sync=True)",
    DICT: "Python dict (in-memory ceiling, not durable)",
    SORTED: "sortedcontainers.SortedDict (in-memory ceiling, not durable)",
}


# -- data -------------------------------------------------------------------------------------


def make_keys(n: int) -> list[bytes]:
    return [b"key%013d" % i for i in range(n)]


ALL_KEYS = make_keys(KEYS)
VALUE = random.Random(0).randbytes(VALUE_SIZE)


def shuffled(keys: list[bytes], seed: int) -> list[bytes]:
    out = list(keys)
    random.Random(seed).shuffle(out)
    return out


# -- stores -----------------------------------------------------------------------------------


class Store:
    """One system behind the operations the cases time."""

    def load(self, keys: list[bytes]) -> None: ...

    def get_many(self, keys: list[bytes]) -> int: ...

    def scan(self) -> int: ...

    def put_batch(self, keys: list[bytes]) -> None: ...

    def delete_batch(self, keys: list[bytes]) -> None: ...

    def close(self) -> None: ...


class KeyvalStore(Store):
    def __init__(self, path: Path):
        # A cache that holds the whole tree, as the OS page cache does for LMDB's map.
        self.db = DB(str(path / "keyval.db"), sync=True, cache_pages=max(16384, KEYS // 10))
        with self.db.update() as tx:
            tx.create_bucket(b"b", exist_ok=True)

    def load(self, keys):
        with self.db.update() as tx:
            put = tx.bucket(b"b").put
            for k in keys:
                put(k, VALUE)

    def get_many(self, keys):
        n = 0
        with self.db.view() as tx:
            get = tx.bucket(b"b").get
            for k in keys:
                if get(k) is not None:
                    n += 1
        return n

    def scan(self):
        n = 0
        with self.db.view() as tx:
            for _ in tx.bucket(b"b").items():
                n += 1
        return n

    def put_batch(self, keys):
        with self.db.update() as tx:
            put = tx.bucket(b"b").put
            for k in keys:
                put(k, VALUE)

    def delete_batch(self, keys):
        with self.db.update() as tx:
            delete = tx.bucket(b"b").delete
            for k in keys:
                delete(k)

    def close(self):
        self.db.close()


class LmdbStore(Store):
    def __init__(self, path: Path):
        lmdb = pytest.importorskip("lmdb", reason="py-lmdb is not installed")
        self.env = lmdb.open(str(path / "lmdb"), map_size=64 << 30, sync=True, metasync=True)

    def load(self, keys):
        with self.env.begin(write=True) as txn:
            put = txn.put
            for k in keys:
                put(k, VALUE)

    def get_many(self, keys):
        n = 0
        with self.env.begin() as txn:
            get = txn.get
            for k in keys:
                if get(k) is not None:
                    n += 1
        return n

    def scan(self):
        n = 0
        with self.env.begin() as txn:
            for _ in txn.cursor():
                n += 1
        return n

    put_batch = load

    def delete_batch(self, keys):
        with self.env.begin(write=True) as txn:
            delete = txn.delete
            for k in keys:
                delete(k)

    def close(self):
        self.env.close()


class SqliteStore(Store):
    def __init__(self, path: Path):
        self.conn = sqlite3.connect(str(path / "sqlite.db"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID"
        )

    def load(self, keys):
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", ((k, VALUE) for k in keys))
        self.conn.execute("COMMIT")

    def get_many(self, keys):
        n = 0
        self.conn.execute("BEGIN")
        execute = self.conn.execute
        for k in keys:
            if execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone() is not None:
                n += 1
        self.conn.execute("COMMIT")
        return n

    def scan(self):
        n = 0
        for _ in self.conn.execute("SELECT k, v FROM kv ORDER BY k"):
            n += 1
        return n

    put_batch = load

    def delete_batch(self, keys):
        self.conn.execute("BEGIN")
        self.conn.executemany("DELETE FROM kv WHERE k = ?", ((k,) for k in keys))
        self.conn.execute("COMMIT")

    def close(self):
        self.conn.close()


class RocksStore(Store):
    def __init__(self, path: Path):
        rocksdict = pytest.importorskip("rocksdict", reason="rocksdict is not installed")
        self.rocksdict = rocksdict
        self.db = rocksdict.Rdict(str(path / "rocksdb"))
        self.sync = rocksdict.WriteOptions()
        self.sync.sync = True

    def _write(self, keys, delete=False):
        batch = self.rocksdict.WriteBatch()
        for k in keys:
            if delete:
                batch.delete(k)
            else:
                batch.put(k, VALUE)
        self.db.write(batch, self.sync)

    def load(self, keys):
        self._write(keys)

    def get_many(self, keys):
        n = 0
        get = self.db.get
        for k in keys:
            if get(k) is not None:
                n += 1
        return n

    def scan(self):
        n = 0
        for _ in self.db.items():
            n += 1
        return n

    put_batch = load

    def delete_batch(self, keys):
        self._write(keys, delete=True)

    def close(self):
        self.db.close()


class DictStore(Store):
    def __init__(self, path: Path, sorted_: bool = False):
        if sorted_:
            from sortedcontainers import SortedDict

            self.d = SortedDict()
        else:
            self.d = {}

    def load(self, keys):
        for k in keys:
            self.d[k] = VALUE

    def get_many(self, keys):
        n = 0
        get = self.d.get
        for k in keys:
            if get(k) is not None:
                n += 1
        return n

    def scan(self):
        n = 0
        for _ in self.d.items():
            n += 1
        return n

    put_batch = load

    def delete_batch(self, keys):
        for k in keys:
            self.d.pop(k, None)

    def close(self):
        self.d = {}


def open_store(system: str, path: Path) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    if system == KEYVAL:
        return KeyvalStore(path)
    if system == LMDB:
        return LmdbStore(path)
    if system == SQLITE:
        return SqliteStore(path)
    if system == ROCKSDB:
        return RocksStore(path)
    return DictStore(path, sorted_=system == SORTED)


# -- fixtures ---------------------------------------------------------------------------------


def _scratch_root() -> Path:
    root = Path(os.environ.get(SCRATCH_ENV) or Path(__file__).resolve().parent / "results")
    root = root / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory on the file system under test (not the system temp dir, which may
    be tmpfs), removed after the case."""
    path = Path(tempfile.mkdtemp(prefix="db-case-", dir=_scratch_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_loaded: dict[str, tuple[Store, Path]] = {}


def loaded(system: str) -> Store:
    """A store holding every key, built once per session and system (loads take a while)."""
    if system not in _loaded:
        path = Path(tempfile.mkdtemp(prefix=f"db-{system}-", dir=_scratch_root()))
        store = open_store(system, path)
        order = shuffled(ALL_KEYS, 1)
        for i in range(0, len(order), DELETE_BATCH):
            store.load(order[i : i + DELETE_BATCH])
        _loaded[system] = (store, path)
    return _loaded[system][0]


@pytest.fixture(scope="module", autouse=True)
def _close_loaded() -> Iterator[None]:
    yield
    for store, path in _loaded.values():
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    _loaded.clear()


def info(benchmark, system: str, **extra) -> None:
    benchmark.extra_info.update(
        system=system,
        key_count=KEYS,
        value_size=VALUE_SIZE,
        method=METHOD[system],
        **extra,
    )
    if system in (DICT, SORTED):
        benchmark.extra_info["reference"] = True


def written_bytes() -> int:
    """Bytes this process has passed to write calls so far (Linux /proc/self/io ``wchar``)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", ALL)
def test_get(benchmark, system):
    store = loaded(system)
    probe = random.Random(2).sample(ALL_KEYS, GETS_PER_ROUND)
    assert store.get_many(probe[:100]) == 100
    info(benchmark, system, ops=GETS_PER_ROUND, op_name="gets", sync=None)
    found = benchmark.pedantic(store.get_many, args=(probe,), rounds=GET_ROUNDS, warmup_rounds=1)
    assert found == GETS_PER_ROUND


@pytest.mark.parametrize("system", ALL)
def test_scan(benchmark, system):
    store = loaded(system)
    info(benchmark, system, ops=KEYS, op_name="keys", sync=None)
    n = benchmark.pedantic(store.scan, rounds=SCAN_ROUNDS, warmup_rounds=1)
    assert n == KEYS


@pytest.mark.parametrize("order", ["random", "ascending"])
@pytest.mark.parametrize("system", ALL)
def test_bulk_load(benchmark, system, order, scratch):
    keys = shuffled(ALL_KEYS, 3) if order == "random" else ALL_KEYS
    stores: list[Store] = []

    def setup():
        store = open_store(system, scratch / f"round{len(stores)}")
        stores.append(store)
        return (store,), {}

    def run(store):
        store.load(keys)

    info(benchmark, system, ops=KEYS, op_name="keys", sync=system in STORES, batch=KEYS)
    benchmark.group = f"db-load-{order}"
    try:
        benchmark.pedantic(run, setup=setup, rounds=LOAD_ROUNDS)
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize("system", STORES)
def test_random_puts_1000_per_tx(benchmark, system):
    store = loaded(system)
    rng = random.Random(4)
    batches = iter([rng.sample(ALL_KEYS, PUT_BATCH) for _ in range(PUT_ROUNDS + 1)])

    def setup():
        return (next(batches),), {}

    info(benchmark, system, ops=PUT_BATCH, op_name="puts", sync=True, batch=PUT_BATCH)
    benchmark.pedantic(store.put_batch, setup=setup, rounds=PUT_ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("state", ["fresh", "after-delete"])
@pytest.mark.parametrize("system", STORES)
def test_one_key_commit(benchmark, system, state, scratch):
    store = open_store(system, scratch)
    try:
        if state == "after-delete":
            order = shuffled(ALL_KEYS, 5)
            for i in range(0, KEYS, DELETE_BATCH):
                store.load(order[i : i + DELETE_BATCH])
            for i in range(0, KEYS, DELETE_BATCH):
                store.delete_batch(order[i : i + DELETE_BATCH])
        store.put_batch([b"warm"])
        counter = iter(range(10**9))
        wrote: list[int] = []

        def commit():
            before = written_bytes()
            store.put_batch([b"one-%d" % next(counter)])
            wrote.append(written_bytes() - before)

        info(benchmark, system, ops=1, op_name="commits", sync=True, batch=1, latency=True)
        benchmark.group = f"db-commit-{state}"
        benchmark.pedantic(commit, rounds=COMMIT_ROUNDS, warmup_rounds=1)
        per_commit = sorted(wrote)[len(wrote) // 2]
        benchmark.extra_info["bytes_written_per_commit"] = per_commit
        benchmark.extra_info["detail"] = f"{per_commit:,} bytes written per commit (median)" + (
            f", after deleting {KEYS:,} keys" if state == "after-delete" else ", fresh store"
        )
    finally:
        store.close()


@pytest.fixture(autouse=True)
def _group(request, benchmark):
    """Default group names: ``db-<case>``; cases with variants set their own."""
    name = request.node.originalname.removeprefix("test_")
    benchmark.group = {
        "get": "db-get",
        "scan": "db-scan",
        "random_puts_1000_per_tx": "db-put-1000",
    }.get(name, f"db-{name}")
