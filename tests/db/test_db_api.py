"""The keyval.db API contract of SPEC.md, one behaviour per test, on real files."""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from keyval.db import DB
from keyval.db.check import check_file
from keyval.db.db import _Copier
from keyval.db.node import Node
from keyval.errors import (
    BucketExists,
    BucketNotFound,
    ClosedError,
    CorruptionError,
    KeyTooLarge,
    KeyvalError,
    ReadOnlyError,
    TxClosedError,
    ValueTooLarge,
)

from .conftest import dump


def fill(db, n, name=b"b", value=lambda i: b"v%d" % i):
    with db.update() as tx:
        b = tx.create_bucket(name, exist_ok=True)
        for i in range(n):
            b.put(b"k%06d" % i, value(i))


def test_committed_update_is_visible_after_reopen(path):
    with DB(path) as db, db.update() as tx:
        tx.create_bucket(b"users").put(b"k", b"v")
    with DB(path) as db, db.view() as tx:
        assert tx.bucket(b"users").get(b"k") == b"v"


def test_exception_in_update_rolls_back_and_reraises(db):
    fill(db, 10)
    with pytest.raises(RuntimeError, match="boom"), db.update() as tx:
        b = tx.bucket(b"b")
        b.put(b"k000001", b"changed")
        b.delete(b"k000002")
        tx.create_bucket(b"new")
        raise RuntimeError("boom")
    with db.view() as tx:
        b = tx.bucket(b"b")
        assert b[b"k000001"] == b"v1"
        assert b[b"k000002"] == b"v2"
        assert list(tx.buckets()) == [b"b"]


def test_rolled_back_update_leaves_no_trace_in_file(db, path):
    fill(db, 50)
    with pytest.raises(ValueError), db.update() as tx:
        tx.bucket(b"b").put(b"zzz", b"x" * 5000)
        raise ValueError
    db.close()
    assert check_file(path) == []


def test_mapping_protocol(db):
    with db.update() as tx:
        b = tx.create_bucket(b"m")
        b[b"a"] = b"1"
        b[b"b"] = b"2"
        del b[b"a"]
        assert b"a" not in b
        assert b"b" in b
        assert len(b) == 1
        assert b[b"b"] == b"2"
        with pytest.raises(KeyError):
            b[b"a"]
        with pytest.raises(KeyError):
            del b[b"a"]
        assert b.get(b"a") is None
        assert b.get(b"a", b"dflt") == b"dflt"
        assert b.delete(b"b") is True
        assert b.delete(b"b") is False
        assert list(b) == []


def test_len_counts_plain_keys_across_commits_and_reopen(db, path):
    fill(db, 700)
    with db.update() as tx:
        b = tx.bucket(b"b")
        for i in range(0, 700, 3):
            b.delete(b"k%06d" % i)
        b.create_bucket(b"nested").put(b"x", b"y")
    db.close()
    with DB(path) as db2, db2.view() as tx:
        assert len(tx.bucket(b"b")) == 700 - len(range(0, 700, 3))


def test_items_range_is_half_open_both_directions(db):
    fill(db, 20)
    with db.view() as tx:
        b = tx.bucket(b"b")
        fwd = [k for k, _ in b.items(start=b"k000005", stop=b"k000009")]
        assert fwd == [b"k%06d" % i for i in range(5, 9)]
        rev = [k for k, _ in b.items(start=b"k000005", stop=b"k000009", reverse=True)]
        assert rev == fwd[::-1]
        assert [k for k, _ in b.items(reverse=True)] == [b"k%06d" % i for i in range(19, -1, -1)]
        assert list(b.items(start=b"z")) == []
        assert list(b.items(stop=b"a")) == []


def test_items_spans_many_pages_in_order(db):
    fill(db, 3000)
    with db.view() as tx:
        keys = [k for k, _ in tx.bucket(b"b").items()]
    assert keys == [b"k%06d" % i for i in range(3000)]


def test_cursor_moves_and_ends(db):
    fill(db, 5)
    with db.view() as tx:
        c = tx.bucket(b"b").cursor()
        assert c.next() == (b"k000000", b"v0")  # a fresh cursor is before the start
        assert c.last() == (b"k000004", b"v4")
        assert c.next() is None
        assert c.prev() == (b"k000004", b"v4")  # past the end, prev gives the last
        assert c.seek(b"k0000025") == (b"k000003", b"v3")
        assert c.prev() == (b"k000002", b"v2")
        assert c.first() == (b"k000000", b"v0")
        assert c.prev() is None
        assert c.next() == (b"k000000", b"v0")  # before the start, next gives the first
        assert c.seek(b"z") is None


def test_cursor_skips_nested_buckets(db):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        b.put(b"a", b"1")
        b.create_bucket(b"b")
        b.put(b"c", b"3")
    with db.view() as tx:
        b = tx.bucket(b"b")
        c = b.cursor()
        assert [c.first(), c.next(), c.next()] == [(b"a", b"1"), (b"c", b"3"), None]
        assert list(b.buckets()) == [b"b"]


def test_cursor_after_write_continues_from_last_key(db):
    fill(db, 10)
    with db.update() as tx:
        b = tx.bucket(b"b")
        c = b.cursor()
        assert c.seek(b"k000003")[0] == b"k000003"
        b.delete(b"k000004")
        b.put(b"k0000035", b"new")
        assert c.next() == (b"k0000035", b"new")
        assert c.next()[0] == b"k000005"


def test_nested_buckets_and_delete_bucket_frees_everything(db, path):
    with db.update() as tx:
        top = tx.create_bucket(b"top")
        sub = top.create_bucket(b"sub")
        subsub = sub.create_bucket(b"subsub")
        for i in range(500):
            sub.put(b"%05d" % i, b"x" * 300)
            subsub.put(b"%05d" % i, b"y" * 2000)
    with db.view() as tx:
        assert tx.bucket(b"top").bucket(b"sub").bucket(b"subsub")[b"00042"] == b"y" * 2000
    with db.update() as tx:
        tx.bucket(b"top").delete_bucket(b"sub")
    with db.view() as tx, pytest.raises(BucketNotFound):
        tx.bucket(b"top").bucket(b"sub")
    db.close()
    assert check_file(path) == []


def test_bucket_errors(db):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        with pytest.raises(BucketExists):
            tx.create_bucket(b"b")
        assert tx.create_bucket(b"b", exist_ok=True) is b
        with pytest.raises(BucketNotFound):
            tx.bucket(b"missing")
        with pytest.raises(BucketNotFound):
            tx.delete_bucket(b"missing")
        b.put(b"key", b"v")
        with pytest.raises(BucketExists):
            b.create_bucket(b"key")
        b.create_bucket(b"sub")
        with pytest.raises(BucketExists):
            b.put(b"sub", b"v")
        with pytest.raises(BucketNotFound):
            b.bucket(b"key")


def test_deleted_bucket_cannot_be_used(db):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        tx.delete_bucket(b"b")
        with pytest.raises(BucketNotFound):
            b.put(b"k", b"v")


def test_small_bucket_is_stored_inline_and_grows_into_pages(db):
    with db.update() as tx:
        tx.create_bucket(b"b").create_bucket(b"small").put(b"k", b"v")
    assert db.stats()["inline_buckets"] == 1
    with db.update() as tx:
        small = tx.bucket(b"b").bucket(b"small")
        for i in range(200):
            small.put(b"%04d" % i, b"v" * 20)
    assert db.stats()["inline_buckets"] == 0
    with db.update() as tx:
        small = tx.bucket(b"b").bucket(b"small")
        for i in range(200):
            small.delete(b"%04d" % i)
    assert db.stats()["inline_buckets"] == 1
    with db.view() as tx:
        assert dict(tx.bucket(b"b").bucket(b"small").items()) == {b"k": b"v"}


def test_values_up_to_overflow_sizes_round_trip(db, path):
    sizes = [0, 1, 127, 128, 129, 511, 512, 513, 4096, 100_000, 3_000_000]
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        for n in sizes:
            b.put(b"%08d" % n, os.urandom(n))
    with db.view() as tx:
        stored = dict(tx.bucket(b"b").items())
    db.close()
    with DB(path) as db2, db2.view() as tx:
        assert dict(tx.bucket(b"b").items()) == stored
        assert sorted(len(v) for v in stored.values()) == sizes
    assert check_file(path) == []


def test_overwritten_overflow_value_pages_are_reused(db):
    with db.update() as tx:
        tx.create_bucket(b"b").put(b"k", b"x" * 50_000)
    for _ in range(3):
        with db.update() as tx:
            tx.bucket(b"b").put(b"k", b"y" * 50_000)
    size = os.path.getsize(db.path)
    for _ in range(10):
        with db.update() as tx:
            tx.bucket(b"b").put(b"k", b"z" * 50_000)
    assert os.path.getsize(db.path) == size


def test_keys_up_to_32_kib(db, path):
    big = [b"a" * 32768, b"b" * 20000, b"c" * 600]
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        for k in big:
            b.put(k, k[:10])
        for i in range(100):
            b.put(b"m%04d" % i, b"v")
    db.close()
    with DB(path) as db2, db2.view() as tx:
        b = tx.bucket(b"b")
        for k in big:
            assert b[k] == k[:10]
        assert len(b) == 103
    assert check_file(path) == []


def test_empty_and_oversized_keys_raise_key_too_large(db):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        with pytest.raises(KeyTooLarge):
            b.put(b"", b"v")
        with pytest.raises(KeyTooLarge):
            b.put(b"k" * 32769, b"v")
        with pytest.raises(KeyTooLarge):
            tx.create_bucket(b"")
        b.put(b"k", b"v")
    with db.view() as tx:  # reads too (the C lookup of a clean tree and the Python one)
        b = tx.bucket(b"b")
        for bad in (b"", b"k" * 32769):
            for read in (b.get, b.__contains__, b.__getitem__):
                with pytest.raises(KeyTooLarge):
                    read(bad)
        assert b.get(b"k") == b"v"


def test_value_over_2_gib_raises_value_too_large(db):
    huge = bytes(2**31)  # zero pages: costs address space, not memory
    with db.update() as tx, pytest.raises(ValueTooLarge):
        tx.create_bucket(b"b").put(b"k", huge)


@pytest.mark.parametrize("bad", ["str", 1, None, bytearray(b"x"), memoryview(b"x")])
def test_non_bytes_keys_and_values_raise_type_error(db, bad):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        with pytest.raises(TypeError):
            b.put(bad, b"v")
        with pytest.raises(TypeError):
            b.put(b"k", bad)
        with pytest.raises(TypeError):
            b.get(bad)
        with pytest.raises(TypeError):
            tx.create_bucket(bad)


def test_type_error_comes_before_any_write(db, path):
    fill(db, 5)
    before = Path(path).read_bytes()
    with db.update() as tx, pytest.raises(TypeError):
        tx.bucket(b"b").put("k", b"v")
    assert Path(path).read_bytes() == before


def test_writes_in_view_raise_read_only_error(db):
    fill(db, 5)
    with db.view() as tx:
        b = tx.bucket(b"b")
        with pytest.raises(ReadOnlyError):
            b.put(b"k", b"v")
        with pytest.raises(ReadOnlyError):
            b.delete(b"k000001")
        with pytest.raises(ReadOnlyError):
            tx.create_bucket(b"x")
        with pytest.raises(ReadOnlyError):
            tx.delete_bucket(b"b")
        with pytest.raises(ReadOnlyError):
            b.create_bucket(b"x")


def test_use_of_ended_transaction_raises_tx_closed_error(db):
    fill(db, 5)
    with db.view() as tx:
        b = tx.bucket(b"b")
        c = b.cursor()
        it = b.items()
    with db.update() as wtx:
        wb = wtx.bucket(b"b")
    for call in (
        lambda: b.get(b"k000001"),
        lambda: len(b),
        lambda: c.first(),
        lambda: next(it),
        lambda: tx.bucket(b"b"),
        lambda: wb.put(b"k", b"v"),
        lambda: wtx.create_bucket(b"x"),
    ):
        with pytest.raises(TxClosedError):
            call()


def test_use_of_closed_db_raises_closed_error(path):
    db = DB(path)
    db.close()
    with pytest.raises(ClosedError), db.view():
        pass
    with pytest.raises(ClosedError), db.update():
        pass
    db.close()  # closing twice is harmless


def test_second_open_of_same_file_is_refused(path):
    with DB(path), pytest.raises(KeyvalError, match="open in another"):
        DB(path)
    DB(path).close()  # the lock went with the close


def test_update_inside_update_of_same_thread_raises(db):
    with db.update(), pytest.raises(KeyvalError, match="deadlock"), db.update():
        pass


def test_fill_factor_one_packs_ascending_keys_tighter(tmp_path):
    # Small transactions: no node outgrows SPLIT_ENTRIES, so only the fill factor decides.
    leaves = {}
    for fill_factor in (0.5, 1.0):
        with DB(str(tmp_path / f"{fill_factor}.db"), page_size=512) as db:
            for t in range(30):
                with db.update() as tx:
                    b = tx.create_bucket(b"b") if t == 0 else tx.bucket(b"b")
                    b.fill_factor = fill_factor
                    for i in range(100 * t, 100 * (t + 1)):
                        b.put(b"%08d" % i, b"v" * 20)
            leaves[fill_factor] = db.stats()["leaf_pages"]
    assert leaves[1.0] < leaves[0.5] * 0.7


@pytest.mark.parametrize("bad", [0, 0.05, 1.5, -1, float("nan"), "0.5", None])
def test_fill_factor_outside_its_range_raises(db, bad):
    with db.update() as tx:
        b = tx.create_bucket(b"b")
        with pytest.raises(ValueError):
            b.fill_factor = bad
        assert b.fill_factor == 0.5  # unchanged
        b.fill_factor = 1
        assert b.fill_factor == 1.0


def _leaf_pages_after(path: str, change) -> tuple[int, int]:
    """Leaf pages of a 4,000-key bucket (values of 200 B, in the leaves) before and after
    ``change(bucket, keys)`` in one later transaction; the file is checked after."""
    keys = [b"%08d" % i for i in range(4_000)]
    with DB(path) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for k in keys:
                b.put(k, b"v" * 200)
        before = db.stats()["leaf_pages"]
        with db.update() as tx:
            change(tx.bucket(b"b"), keys)
        after = db.stats()["leaf_pages"]
    assert check_file(path) == []
    return before, after


def test_deleting_most_keys_merges_their_leaves(tmp_path):
    def delete_nine_in_ten(b, keys):
        for i, k in enumerate(keys):
            if i % 10:
                b.delete(k)

    before, after = _leaf_pages_after(str(tmp_path / "d.db"), delete_nine_in_ten)
    # Merging stops once a leaf is a quarter full: ~5 of the 400 keys left per leaf.
    assert after <= before // 3


@pytest.mark.parametrize("first_touch", ["shorter", "same size"])
def test_shorter_values_merge_their_leaves(tmp_path, first_touch):
    """Overwrites with shorter values leave leaves underfull, and commit merges them, whichever
    put path shrank them: the first put into a clean leaf runs in Python, the later ones into
    the now dirty leaf in C (with "same size", only the C puts shrink anything)."""

    def shorten(b, keys):
        if first_touch == "same size":
            for k in keys:
                b.put(k, b"v" * 200)
        for k in keys:
            b.put(k, b"s")

    before, after = _leaf_pages_after(str(tmp_path / "s.db"), shorten)
    assert after <= before // 4


def test_one_big_ascending_load_packs_pages_full_at_the_default_fill(tmp_path):
    """Keys appended in order in one transaction (a sorted bulk load) fill their pages, as
    B-trees that split at the insertion point do; the same keys in random order do not."""
    keys = [b"%08d" % i for i in range(20_000)]
    leaves = {}
    for order in ("ascending", "random"):
        if order == "random":
            random.Random(7).shuffle(keys)
        path = str(tmp_path / f"{order}.db")
        with DB(path, page_size=512) as db:
            with db.update() as tx:
                b = tx.create_bucket(b"b")
                for k in keys:
                    b.put(k, b"v" * 20)
            leaves[order] = db.stats()["leaf_pages"]
            with db.view() as tx:
                assert [k for k, _ in tx.bucket(b"b").items()] == sorted(keys)
        assert check_file(path) == []
    # 20,000 entries of 8 + 20 bytes and an element header each: ~13 to a full 512 B page.
    assert leaves["ascending"] < 20_000 / 13 * 1.1
    assert leaves["random"] > leaves["ascending"] * 1.5


def test_deleting_everything_collapses_the_tree(db, path):
    fill(db, 3000)
    with db.update() as tx:
        b = tx.bucket(b"b")
        for i in range(3000):
            b.delete(b"k%06d" % i)
    stats = db.stats()
    assert stats["keys"] == 0
    assert stats["branch_pages"] == 0
    db.close()
    assert check_file(path) == []


def test_stats_counts_keys_buckets_depth(db):
    fill(db, 2000)
    with db.update() as tx:
        tx.create_bucket(b"other").put(b"x", b"y")
    s = db.stats()
    assert s["keys"] == 2001
    assert s["buckets"] == 2
    assert s["depth"] >= 3
    assert s["page_count"] * 512 <= s["file_size"]
    assert s["leaf_pages"] > 0 and s["branch_pages"] > 0


def test_compact_copies_everything_into_a_smaller_clean_file(db, path, tmp_path):
    fill(db, 3000, value=lambda i: b"v" * (i % 300))
    with db.update() as tx:
        b = tx.bucket(b"b")
        for i in range(0, 3000, 2):
            b.delete(b"k%06d" % i)
        tx.create_bucket(b"nest").create_bucket(b"inner").put(b"x", b"y" * 1000)
    dst = str(tmp_path / "compact.db")
    db.compact(dst)
    assert check_file(dst) == []
    with DB(dst) as out:
        assert dump(out) == dump(db)
    assert os.path.getsize(dst) < os.path.getsize(path)


def test_compact_into_an_empty_file_and_a_failed_compact_leaves_nothing(
    db, path, tmp_path, monkeypatch
):
    fill(db, 500)
    empty = tmp_path / "empty.db"
    empty.touch()
    db.compact(empty)  # the docstring allows an existing empty file
    with DB(str(empty)) as out:
        assert dump(out) == dump(db)
    with pytest.raises(FileExistsError):
        db.compact(empty)  # not empty any more

    class Stop(Exception):
        pass

    def failing(self, src, path):
        raise Stop

    # A copy that fails halfway (say, the disk filled up): no half-made file at dst.
    monkeypatch.setattr(_Copier, "copy_bucket", failing)
    with pytest.raises(Stop):
        db.compact(tmp_path / "failed.db")
    assert sorted(os.listdir(tmp_path)) == sorted(["empty.db", os.path.basename(path)])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_dead_processes_left_while_building_a_file_is_removed_and_nothing_else(db, tmp_path):
    # A process killed while it created a database or compacted into one leaves a temporary
    # named after it; nothing removed those of other processes, so each crash leaked a file
    # (a whole copy of the database, for compact). Stale: its process is gone and nobody holds
    # its lock. A builder that is alive, or holds the lock (as one in another PID namespace,
    # whose process looks gone from here, does), keeps its file.
    fill(db, 50)
    dead, dead_locked = _dead_pid(), _dead_pid()
    names = {
        "dead": f".copy.db.{dead}.compacting",
        "alive": f".copy.db.{os.getppid()}.compacting",
        "locked": f".copy.db.{dead_locked}.compacting",
        "other file": f".other.db.{dead}.compacting",
        "creating, dead": f".new.db.{dead}.creating",
        "creating, alive": f".new.db.{os.getppid()}.creating",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"left behind")
    lock = os.open(tmp_path / names["locked"], os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db.compact(tmp_path / "copy.db")
        DB(str(tmp_path / "new.db")).close()
    finally:
        os.close(lock)
    left = {what for what, name in names.items() if (tmp_path / name).exists()}
    assert left == {"alive", "locked", "other file", "creating, alive"}
    with DB(str(tmp_path / "copy.db")) as out:
        assert dump(out) == dump(db)


def test_compact_does_not_merge_what_a_crashed_compact_left_behind(db, tmp_path):
    # A compact that crashed (or was killed) leaves its temporary copy under a name made of the
    # destination and the process id; a restarted container gets the same id. Opening that
    # file again merged its stale buckets and keys into the new copy.
    fill(db, 50)
    dst = tmp_path / "copy.db"
    left = tmp_path / f".copy.db.{os.getpid()}.compacting"
    with DB(str(left)) as stale, stale.update() as tx:
        tx.create_bucket(b"deleted since").put(b"secret", b"old")
        tx.create_bucket(b"b").put(b"zz-stale", b"old")
    db.compact(dst)
    with DB(str(dst)) as out:
        assert dump(out) == dump(db)
    assert not left.exists()


def test_close_unmaps_the_maps_ended_transactions_still_hold(tmp_path, monkeypatch):
    # A map is replaced once the file outgrows it; ended transactions keep the old one until
    # the garbage collector frees them, and a mapping keeps the file's flock: close() left the
    # file locked, for this process and every other, while any of them was referenced.
    import subprocess
    import sys

    import keyval.db.pagemap as pagemap

    if not pagemap.AVAILABLE:
        pytest.skip("the page map needs the C extension")
    monkeypatch.setattr(pagemap, "MAP_BYTES", 16 * 512)  # a map of 16 pages, outgrown at once
    path = str(tmp_path / "remap.db")
    db = DB(path, page_size=512)
    first = db._map
    with db.view() as kept:  # an ended transaction, still referenced: it holds the first map
        pass
    fill(db, 200, value=lambda i: b"v" * 100)
    assert db._map is not first
    del first
    db.close()
    opened = subprocess.run(
        [sys.executable, "-c", f"from keyval.db import DB; DB({path!r}).close()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert opened.returncode == 0, opened.stderr[-1000:]
    DB(path).close()
    assert kept._closed


def test_shrink_returns_free_tail_pages_to_the_file_system(db, path):
    fill(db, 4000, value=lambda i: b"x" * 100)
    with db.update() as tx:
        tx.delete_bucket(b"b")
    before = os.path.getsize(path)
    freed = db.shrink()
    assert freed > 0
    assert os.path.getsize(path) == before - freed
    assert os.path.getsize(path) < before / 4
    fill(db, 10)
    db.close()
    assert check_file(path) == []


def test_shrink_moves_live_pages_off_the_tail(path):
    """The data that is left sits at the end of the file (written last, after what was
    deleted): shrink() must copy it down, nested buckets and overflow values included, before
    it can cut the tail. Before it did, it gave back almost nothing here."""
    with DB(path, page_size=512) as db:
        fill(db, 4000, name=b"gone", value=lambda i: b"x" * 100)
        with db.update() as tx:
            keep = tx.create_bucket(b"keep")
            for i in range(300):
                keep.put(b"k%06d" % i, b"v" * 40)
            keep.put(b"big", b"o" * 5000)  # an overflow run
            inner = keep.create_bucket(b"inner")
            for i in range(200):
                inner.put(b"i%06d" % i, b"w" * 40)
        expected = dump(db)
        del expected[b"gone"]
        with db.update() as tx:
            tx.delete_bucket(b"gone")
        before = os.path.getsize(path)
        freed = db.shrink()
        after = os.path.getsize(path)
        assert freed == before - after
        assert after < before / 4
        assert dump(db) == expected
        assert db.stats()["free_pages"] < 0.1 * after / 512
    assert check_file(path) == []
    with DB(path) as db:
        assert dump(db) == expected


def test_shrink_with_a_reader_open_never_grows_the_file(path):
    with DB(path, page_size=512) as db:
        fill(db, 3000, value=lambda i: b"x" * 100)
        fill(db, 50, name=b"keep")
        with db.view() as old:
            with db.update() as tx:
                tx.delete_bucket(b"b")
            before = os.path.getsize(path)
            assert db.shrink() >= 0
            assert os.path.getsize(path) <= before
            assert len(old.bucket(b"b")) == 3000  # the reader's pages are all still there
        assert db.shrink() > 0  # the reader is gone: now the tail goes
        assert os.path.getsize(path) < before / 4
    assert check_file(path) == []


def test_shrink_with_a_reader_open_keeps_the_run_it_planned_a_long_value_into(path):
    # shrink() moved a 4-page value only if a free run of 4 lay below it, then let the leaves
    # it also moved take the lowest single pages, in that run: the value found no run left
    # and went to the end of the file, which the reader kept from being cut (49 -> 53 pages).
    one, four = b"x" * 4000, b"y" * (4 * 4096 - 40)
    with DB(path, page_size=4096) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(30):
                b.put(b"k%02d" % i, four if i == 1 else one)
        with db.update() as tx:
            tx.bucket(b"b").put(b"j99", four)  # a 4-page value near the end of the file
            for name in (b"a1", b"a2"):  # buckets whose leaves spill before b's
                a = tx.create_bucket(name)
                a.put(b"x", b"v" * 600)
                a.put(b"y", b"v" * 600)
        with db.update() as tx:
            for i in range(1, 30, 2):  # one free 4-page run, and single pages
                tx.bucket(b"b").delete(b"k%02d" % i)
        expected = dump(db)
        with db.view():
            before = os.path.getsize(path)
            assert db.shrink() >= 0
            assert os.path.getsize(path) <= before
        assert dump(db) == expected
    assert check_file(path) == []


def test_shrink_with_a_reader_open_cuts_no_tail_that_its_freelist_would_outgrow(path):
    # Cutting the last free page rewrote the freelist, and with the reader holding every
    # other free page the new chunk and root went past the new end (15 -> 16 pages).
    with DB(path, page_size=4096) as db:
        for key, size in [(b"k2", 5000), (b"k0", 5000), (b"k3", 10), (b"k0", 2000)]:
            with db.update() as tx:
                tx.create_bucket(b"b", exist_ok=True).put(key, b"v" * size)
        with db.update() as tx:
            tx.bucket(b"b").delete(b"k2")
        with db.view():
            with db.update() as tx:
                tx.bucket(b"b").put(b"k3", b"v" * 9000)
            expected = dump(db)
            before = os.path.getsize(path)
            assert db.shrink() >= 0
            assert os.path.getsize(path) <= before
        assert dump(db) == expected
        assert db.shrink() > 0  # the reader is gone: now the tail goes
    assert check_file(path) == []


def test_existing_file_keeps_its_page_size(path):
    with DB(path, page_size=1024) as db:
        fill(db, 10)
    with DB(path, page_size=4096) as db:
        assert db.page_size == 1024
        assert len(dump(db)[b"b"]["kv"]) == 10


def test_invalid_page_size_argument_raises_value_error(path):
    with pytest.raises(ValueError):
        DB(path, page_size=1000)
    assert not os.path.exists(path)


def test_an_empty_existing_file_is_refused_not_initialised(path):
    # A database is created whole under another name, so an empty one was truncated:
    # initialising it would silently swap lost data for an empty database.
    open(path, "wb").close()
    with pytest.raises(CorruptionError, match="empty"):
        DB(path)
    assert os.path.getsize(path) == 0


def test_a_second_open_raises_locked_error(path):
    from keyval.errors import LockedError

    with DB(path), pytest.raises(LockedError):
        DB(path)


def test_sync_false_commits_are_visible_after_reopen(path):
    with DB(path, sync=False) as db:
        fill(db, 100)
    with DB(path) as db:
        assert len(dump(db)[b"b"]["kv"]) == 100


def test_a_tree_that_fits_the_cache_is_read_once_however_it_is_walked(tmp_path, monkeypatch):
    path = str(tmp_path / "c.db")
    with DB(path, page_size=512) as db:
        fill(db, 3_000, value=lambda i: b"v" * 40)
        pages = db.stats()["leaf_pages"] + db.stats()["branch_pages"]
    reads = []
    decode = Node.decode
    monkeypatch.setattr(Node, "decode", lambda *a: reads.append(a[1]) or decode(*a))
    with DB(path, cache_pages=pages + 10) as db:
        for _ in range(3):
            with db.view() as tx:
                assert sum(1 for _ in tx.bucket(b"b").items()) == 3_000
            if _ == 0:
                assert len(reads) >= pages - 2  # the first walk reads the tree
                reads.clear()
        assert reads == []


def test_deleting_any_range_of_a_deep_tree_commits_a_clean_file(tmp_path):
    """Deletes that empty a whole branch beside an underfull one: the merge took the empty
    branch's separator without a child, and the commit failed (found by a fuzzer)."""
    base = tmp_path / "base.db"
    keys = [b"k%04d" % i + b"x" * 60 for i in range(240)]  # 512-byte pages: 7 levels
    with DB(str(base), page_size=512) as db, db.update() as tx:
        b = tx.create_bucket(b"b")
        for k in keys:
            b.put(k, b"v" * 20)
    with DB(str(base)) as db:
        assert db.stats()["depth"] >= 3
    image = base.read_bytes()
    path = tmp_path / "d.db"
    for lo in range(0, len(keys), 7):
        for hi in range(lo + 1, len(keys) + 1, 11):
            path.write_bytes(image)
            with DB(str(path)) as db:
                with db.update() as tx:
                    b = tx.bucket(b"b")
                    for k in keys[lo:hi]:
                        b.delete(k)
                with db.view() as tx:
                    assert [k for k, _ in tx.bucket(b"b").items()] == keys[:lo] + keys[hi:]
            assert check_file(str(path)) == [], (lo, hi)


def test_a_transaction_kept_after_its_commit_holds_none_of_the_pages_it_wrote(tmp_path):
    """A caller may keep a bucket (and so its transaction) after the block, and an ended
    transaction in a cycle with its buckets waits for a full collection anyway: either way it
    must not hold the buffers of the pages it wrote (a 100k-put commit's are ~40 MB), nor
    its lists of runs and freed pages. Measured as the memory that keeping the buckets costs
    over not keeping them, after a full collection."""
    import gc
    import tracemalloc

    def commits(path: Path, keep: bool) -> tuple[int, int]:
        kept, written = [], 0
        with DB(str(path)) as db:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for r in range(4):
                    size = os.path.getsize(path)
                    with db.update() as tx:
                        b = tx.create_bucket(b"b%d" % r)
                        for i in range(5000):
                            b.put(b"%08d" % i, b"v" * 100)
                    if keep:
                        kept.append(b)
                    written += os.path.getsize(path) - size
                gc.collect()  # what dropped transactions leave in their cycles goes
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        return grown, written

    dropped, written = commits(tmp_path / "dropped.db", keep=False)
    kept, _ = commits(tmp_path / "kept.db", keep=True)
    assert written > 2_000_000
    assert kept - dropped < written / 4, (kept, dropped, written)
