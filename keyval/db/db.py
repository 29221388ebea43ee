"""The database: open or create the file, lock it, read pages, run transactions, maintain it.

Reading a tour of the package: :mod:`.page` specifies the file format; :class:`DB` (here) opens
a file and hands out transactions (:mod:`.tx`, which also documents the commit protocol);
:mod:`.bucket` and :mod:`.cursor` are what a transaction reads and writes through; :mod:`.node`
is the B+tree's split / rebalance / spill; :mod:`.freelist` tracks reusable pages; :mod:`.check`
verifies a file offline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from keyval.dirsync import fsync_dir
from keyval.errors import ClosedError, CorruptionError, KeyvalError, LockedError, ReadOnlyError

from .freelist import Freelist
from .meta import Meta, choose_meta, read_metas
from .node import MAX_DEPTH, Node
from .page import (
    DEFAULT_PAGE_SIZE,
    HEADER_SIZE,
    PAGE_HEADER,
    TYPE_BRANCH,
    TYPE_LEAF,
    TYPE_OVERFLOW,
    BucketHeader,
    OverflowRef,
    build_page,
    check_run,
    max_inline_value,
    type_name,
    valid_page_size,
)
from .pagemap import AVAILABLE as _MAP_AVAILABLE
from .pagemap import PageMap
from .tx import Tx, write_runs

# Decoded nodes kept in memory. Two generations approximate LRU at the cost of one dict lookup:
# a hit in the old generation moves to the young one; when the two hold more than the cache's
# size, the old one is dropped (or, if empty, the young one becomes the old). A tree that fits
# stays cached whole, however it is walked: turning the young generation over at half the
# size, as before, re-read a seventh of a 57,000-leaf tree on every full scan through a
# 100,000-node cache.
DEFAULT_CACHE_PAGES = 16384

# pread/pwrite move at most about 2 GiB per call on Linux; larger transfers loop.
_MAX_IO = 1 << 30

# shrink()'s commits at most: one moves the live tail pages down, the next cuts the freed
# tail off; more when moving the nodes above them freed pages in the tail too.
SHRINK_ROUNDS = 6

# compact() commits after roughly this many bytes, so copying a huge file does not hold the
# whole copy in memory as one transaction.
COMPACT_TX_BYTES = 64 << 20

_fdatasync = getattr(os, "fdatasync", os.fsync)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if n <= _MAX_IO:
        return os.pread(fd, n, offset)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.preadv(fd, [view[got : got + _MAX_IO]], offset + got)
        if k == 0:
            break
        got += k
    return bytes(view[:got])


def _temporary(path: str, kind: str) -> str:
    """The name under which this process builds ``path`` (``kind``: creating, compacting)."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{os.getpid()}.{kind}")


def _remove_stale(path: str, kind: str) -> None:
    """Remove what other processes that died while building ``path`` left behind.

    A temporary (see _temporary) is stale when the process named in it is gone and nobody
    holds its lock: its builder holds one from the start (another PID namespace sharing the
    directory may see a live builder's process as gone, not its lock). This process's own
    leftover is the caller's to handle. Errors are ignored: a leftover costs only space."""
    directory, base = os.path.split(os.path.abspath(path))
    prefix, suffix = f".{base}.", f".{kind}"
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) : -len(suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(os.path.join(directory, name))
            finally:
                os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, as another user
        return True
    return True


def _create(path: str, page_size: int) -> None:
    """Write a fresh empty database under a temporary name, then move it into place.

    The file appears at ``path`` complete and synced or not at all. A hard link (which fails
    if ``path`` exists) stands in for rename so two processes creating the same file cannot
    replace each other's.
    """
    _remove_stale(path, "creating")
    tmp = _temporary(path, "creating")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # so that _remove_stale leaves it alone
        os.pwrite(fd, Meta(page_size, 2, 0, 3, 0).encode(), 0)
        os.pwrite(fd, Meta(page_size, 2, 0, 3, 1).encode(), page_size)
        os.pwrite(fd, build_page(2, TYPE_LEAF, 0, b"", page_size), 2 * page_size)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first; open theirs
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(tmp, path)  # a file system without hard links
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


class DB:
    """A single-file, copy-on-write B+tree database (BoltDB's design).

    ``DB(path, page_size=4096, sync=True)`` opens ``path``, creating it if it is missing (an
    existing empty file is refused with CorruptionError: a database is never empty).
    ``page_size`` applies to a new file only; an existing file keeps the page size it was
    created with. With ``sync=True`` a committed ``update()`` is on stable storage when its
    ``with`` block exits; with ``sync=False`` nothing is fsynced: a crash of the process loses
    nothing committed, a crash of the machine may lose or corrupt recent commits.

    Thread safety: one writer at a time (``update()`` blocks while another thread's update is
    open), any number of concurrent ``view()``s in other threads; readers never wait for the
    writer and the writer never waits for readers. Each transaction belongs to its thread.

    Only one process can open a file: the process holds an exclusive ``flock`` and a second
    open raises KeyvalError. Corrupt pages raise CorruptionError with the file and the page's
    byte offset when they are read. Use after ``close()`` raises ClosedError.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        page_size: int = DEFAULT_PAGE_SIZE,
        sync: bool = True,
        *,
        cache_pages: int = DEFAULT_CACHE_PAGES,
    ):
        if not valid_page_size(page_size):
            raise ValueError(f"page_size must be a power of two from 512 to 65536: {page_size}")
        self.path = os.fspath(path)
        self.sync = sync
        self._cache_pages = max(32, cache_pages)
        self._hot: dict[int, Node] = {}
        self._cold: dict[int, Node] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wlock = threading.Lock()
        self._writer: int | None = None
        self._readers: dict[int, int] = {}
        self._open_reads: set[Tx] = set()
        self._closed = False
        self._closing = False
        self._failed: BaseException | None = None
        self._map: PageMap | None = None
        # Every map made and still alive (older ones until the transactions that use them go):
        # close() unmaps them all.
        self._maps: weakref.WeakSet[PageMap] = weakref.WeakSet()

        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = None
        if size == 0:
            # A database is created under a temporary name and renamed whole, so it is never
            # empty: an empty file here was truncated (or is not ours), and initialising it
            # would silently replace whatever it held with an empty database.
            raise CorruptionError(
                "the file is empty: a keyval database never is (truncated?)", self.path, 0
            )
        if size is None:
            _create(self.path, page_size)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    f"{self.path} is open in another process (or another DB object): "
                    "a database file has one owner at a time"
                ) from None
            self._open_existing()
        except BaseException:
            os.close(self._fd)
            raise

    def _open_existing(self) -> None:
        if self.sync:
            # A writer that died between writing a meta page and syncing it left a commit
            # in the page cache only; the newest meta below is taken as committed, so make
            # it so before anything reads it or builds on it.
            _fdatasync(self._fd)
        size = os.fstat(self._fd).st_size
        meta = choose_meta(read_metas(self._fd, self.path), self.path)
        self.page_size = meta.page_size
        if size < meta.hwm * meta.page_size:
            raise CorruptionError(
                f"file is cut short: {size} bytes, but its meta page commits {meta.hwm} pages "
                f"of {meta.page_size} bytes",
                self.path,
                size,
            )
        self._file_pages = size // meta.page_size
        self._meta = meta
        if _MAP_AVAILABLE:
            self._map = PageMap(self._fd, meta.page_size, self._file_pages, self.path)
            self._maps.add(self._map)
        self._max_inline = max_inline_value(meta.page_size)
        self._freelist = Freelist(meta.page_size)
        self._freelist.load(meta.freelist, meta.hwm, self._read_freelist_run, self.path)

    # -- reading pages ---------------------------------------------------------------------

    def _read_run(
        self, pgid: int, expect: tuple[int, ...], span: int = 0
    ) -> tuple[bytes, int, int]:
        """A verified page run as (buffer, type, count); CorruptionError names its offset."""
        ps = self.page_size
        offset = pgid * ps
        if pgid < 2 or pgid + max(span, 1) > self._file_pages:
            raise CorruptionError(
                f"reference to page {pgid} (a run of {max(span, 1)}), outside the file",
                self.path,
                offset,
            )
        buf = _pread(self._fd, (span or 1) * ps, offset)
        if len(buf) < HEADER_SIZE:
            raise CorruptionError(
                f"page {pgid} is cut short by the end of the file", self.path, offset
            )
        overflow = PAGE_HEADER.unpack_from(buf)[6]
        if overflow + 1 != (span or overflow + 1) or pgid + overflow >= self._file_pages:
            raise CorruptionError(
                f"page {pgid} claims {overflow} overflow pages, past the end of the file or "
                "not what its reference says",
                self.path,
                offset,
            )
        if overflow and not span:
            buf += _pread(self._fd, overflow * ps, offset + ps)
        ptype, count, _ = check_run(buf, pgid, ps, self.path)
        if ptype not in expect:
            raise CorruptionError(
                f"page {pgid} is a {type_name(ptype)} page where "
                f"{' or '.join(type_name(t) for t in expect)} was expected",
                self.path,
                offset,
            )
        return buf, ptype, count

    def _read_freelist_run(self, pgid: int, ptype: int) -> tuple[bytes, int, int]:
        buf, _, count = self._read_run(pgid, (ptype,))
        return buf, count, len(buf) // self.page_size - 1

    def _load_node(self, pgid: int, cmap: PageMap | None = None) -> Node:
        """The node of page ``pgid``, from the cache or read and decoded; ``cmap``: the
        calling transaction's page map, read from when it has the page (no system call)."""
        node = self._hot.get(pgid)
        if node is None:
            node = self._cold.pop(pgid, None)
            if node is None:
                run = cmap.read_node_run(pgid) if cmap is not None else None
                if run is None:
                    run = self._read_run(pgid, (TYPE_LEAF, TYPE_BRANCH))
                buf, ptype, count = run
                span = len(buf) // self.page_size
                node = Node.decode(buf, pgid, ptype, count, span, self.page_size, self.path)
            self._hot[pgid] = node
            self._turn_cache()
        return node

    def _turn_cache(self) -> None:
        """Keep the two generations within the cache's size (see DEFAULT_CACHE_PAGES)."""
        hot, cold = self._hot, self._cold
        if len(hot) + len(cold) > self._cache_pages:
            if cold:
                self._cold = {}
            else:
                self._cold, self._hot = hot, {}

    def _check_overflow_ref(self, ref: OverflowRef) -> None:
        """Before an overflow run is freed: its first page's header must say it is the run
        ``ref`` names (id, type, length, span). A corrupt reference freed unchecked gave pages
        that another tree still uses to the next commit, or grew the freelist's bitmap to a
        page id past the file. The header alone, not the run's checksum: deleting a large
        value must not read it."""
        ps = self.page_size
        span = ref.span(ps)
        offset = ref.pgid * ps
        head = b""
        if ref.pgid >= 2 and ref.pgid + span <= self._file_pages:
            head = _pread(self._fd, HEADER_SIZE, offset)
        if len(head) == HEADER_SIZE:
            _, pid, ptype, _, _, count, overflow = PAGE_HEADER.unpack_from(head)
            if (pid, ptype, count, overflow + 1) == (ref.pgid, TYPE_OVERFLOW, ref.length, span):
                return
        raise CorruptionError(
            f"overflow reference to page {ref.pgid} ({ref.length} bytes) does not name an "
            "overflow run there",
            self.path,
            offset,
        )

    def _read_overflow(self, ref: OverflowRef) -> bytes:
        span = ref.span(self.page_size)
        buf, _, count = self._read_run(ref.pgid, (TYPE_OVERFLOW,), span)
        if count != ref.length:
            raise CorruptionError(
                f"overflow page {ref.pgid} holds {count} bytes, its reference says {ref.length}",
                self.path,
                ref.pgid * self.page_size,
            )
        return buf[HEADER_SIZE : HEADER_SIZE + count]

    def _evict(self, runs: Iterable[tuple]) -> None:
        """Forget what the map and the cache know of the page runs about to be rewritten
        (each a tuple starting with page id and span): one pass for a commit's thousands of
        pages, without a call per page."""
        if self._map is not None:
            self._map.forget_runs(runs)
        self._uncache(runs)

    def _uncache(self, runs: Iterable[tuple]) -> None:
        """Drop the cached nodes of page runs (the map keeps its checks: see _commit)."""
        hot_pop, cold_pop = self._hot.pop, self._cold.pop
        for run in runs:
            pgid, span = run[0], run[1]
            if span == 1:
                hot_pop(pgid, None)
                cold_pop(pgid, None)
            else:
                for p in range(pgid, pgid + span):
                    hot_pop(p, None)
                    cold_pop(p, None)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def view(self) -> Iterator[Tx]:
        """A read-only snapshot transaction. Never blocked by the writer; many at once."""
        tx = self._begin_read()
        try:
            yield tx
        finally:
            tx.rollback()

    @contextmanager
    def update(self) -> Iterator[Tx]:
        """The read-write transaction: commits (durably if ``sync``) when the block exits,
        rolls back and re-raises on an exception. Blocks while another thread's update is
        open; calling it inside an update of the same thread raises KeyvalError (it would
        deadlock). After a failed commit (I/O error) raises ReadOnlyError until reopened."""
        tx = self._begin_write()
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
        if not tx._closed:
            tx.commit()

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise ClosedError(f"database {self.path} is closed")

    def _begin_read(self) -> Tx:
        with self._lock:
            self._check_open()
            meta = self._meta
            self._readers[meta.txid] = self._readers.get(meta.txid, 0) + 1
            tx = Tx(self, meta, False)
            self._open_reads.add(tx)
            return tx

    def _begin_write(self) -> Tx:
        self._check_open()
        if self._writer == threading.get_ident():
            raise KeyvalError("update() inside an update() of the same thread would deadlock")
        self._wlock.acquire()
        try:
            with self._lock:
                self._check_open()
                if self._failed is not None:
                    raise ReadOnlyError(
                        f"database {self.path} refuses writes after a failed commit; reopen it"
                    ) from self._failed
                meta = self._meta
            self._writer = threading.get_ident()
            return Tx(self, meta, True)
        except BaseException:
            self._wlock.release()
            raise

    def _end(self, tx: Tx) -> None:
        if tx.writable:
            self._writer = None
            self._wlock.release()
            return
        with self._cond:
            self._end_read_locked(tx)

    def _end_read_locked(self, tx: Tx) -> None:
        if tx not in self._open_reads:
            return
        self._open_reads.discard(tx)
        txid = tx.txid
        left = self._readers[txid] - 1
        if left:
            self._readers[txid] = left
        else:
            del self._readers[txid]
        self._cond.notify_all()

    def _release_pending(self, tx: Tx) -> None:
        """Pages freed by commits that no open reader predates become reusable."""
        with self._lock:
            oldest = min(self._readers) if self._readers else tx._meta.txid
        self._freelist.release_to(min(oldest, tx._meta.txid))

    def _commit(self, tx: Tx) -> None:
        self._release_pending(tx)
        try:
            meta, runs = tx._prepare()
            self._evict(runs)
            write_runs(self._fd, self.page_size, runs)
            if self.sync:
                _fdatasync(self._fd)
            self._file_pages = max(self._file_pages, meta.hwm)
            new_map = self._grow_map()
            os.pwrite(self._fd, meta.encode(), meta.slot * self.page_size)
            if self.sync:
                _fdatasync(self._fd)
            if tx._force_commit and self._file_pages > meta.hwm:
                # Only free pages no reader can reach are cut (see shrink()); the map stops
                # reading them before they go.
                current = new_map or self._map
                if current is not None:
                    current.set_file_pages(meta.hwm)
                os.ftruncate(self._fd, meta.hwm * self.page_size)
                if self.sync:
                    os.fsync(self._fd)
                self._file_pages = meta.hwm
        except BaseException as e:
            self._failed = e
            raise
        # The pages this commit freed hold no node the newer transactions can reach: their
        # cached nodes go now, not when the page is reused (maybe thousands of commits later),
        # so dead nodes do not crowd live ones out of the cache. An older reader that still
        # needs one reads it again from its page, unchanged until it is reused. (Not _evict:
        # the map may forget a page only once no reader can reach it.)
        self._uncache(tx._freed)
        hot = self._hot
        for pgid, node in tx._written:
            if node is not None:
                hot[pgid] = node
        for pgid, _, _, node in runs:
            if node is not None:
                hot[pgid] = node
        self._turn_cache()
        with self._lock:
            if new_map is not None:
                self._map = new_map  # older transactions keep the map they started with
            self._meta = meta

    def _grow_map(self) -> PageMap | None:
        """After the file grew: let the map read the new pages, or make a bigger map for the
        transactions that start after this commit if the file outgrew it."""
        cmap = self._map
        if cmap is None:
            return None
        if self._file_pages <= cmap.pages:
            cmap.set_file_pages(self._file_pages)
            return None
        new_map = PageMap(self._fd, self.page_size, self._file_pages, self.path)
        self._maps.add(new_map)
        return new_map

    # -- maintenance -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts of the committed state: pages by kind, free pages, tree depth, keys.

        ``depth`` is the number of levels of the deepest bucket tree. Reads every page of the
        database (in a read transaction, so it runs beside the writer).
        """
        counts = {"branch_pages": 0, "leaf_pages": 0, "overflow_pages": 0}
        totals = {"buckets": 0, "inline_buckets": 0, "keys": 0, "depth": 0}

        seen: set[int] = set()  # a page met twice: the file's pages form a cycle

        def walk_tree(node: Node, level: int) -> None:
            totals["depth"] = max(totals["depth"], level)
            if node.pgid:
                if node.pgid in seen or level > MAX_DEPTH:
                    raise CorruptionError(
                        f"page {node.pgid} is reached twice: the file's pages form a cycle",
                        self.path,
                        node.pgid * self.page_size,
                    )
                seen.add(node.pgid)
                counts["leaf_pages" if node.leaf else "branch_pages"] += node.span
            if not node.leaf:
                for child in node.vals:
                    walk_tree(self._load_node(child), level + 1)
                return
            for v in node.vals:
                if type(v) is OverflowRef:
                    counts["overflow_pages"] += v.span(self.page_size)
                elif type(v) is BucketHeader:
                    totals["buckets"] += 1
                    totals["keys"] += v.count
                    if v.root:
                        walk_tree(self._load_node(v.root), 1)
                    else:
                        totals["inline_buckets"] += 1
                        keys, vals = v.inline_entries(self.path)
                        walk_tree(Node(True, keys, vals), 1)

        with self.view() as tx:
            meta = tx._meta
            walk_tree(self._load_node(meta.root), 1)
        # The freelist belongs to the writer; wait for it (unless this thread is the writer).
        own = self._writer == threading.get_ident()
        if not own:
            self._wlock.acquire()
        try:
            pending = self._freelist.pending_pages()
            free = self._freelist.reusable_pages()
            freelist_pages = self._freelist.root_span + sum(
                1 for p in self._freelist.chunk_pgids if p
            )
        finally:
            if not own:
                self._wlock.release()
        return {
            "page_size": self.page_size,
            "txid": meta.txid,
            "page_count": meta.hwm,
            "file_size": os.fstat(self._fd).st_size,
            "free_pages": free,
            "pending_pages": pending,
            "freelist_pages": freelist_pages,
            **counts,
            **totals,
        }

    def shrink(self) -> int:
        """Return free pages at the end of the file to the file system; returns bytes freed.

        Online: runs as write transactions beside readers. Live pages in the tail of the file
        are copied down into free pages (reading the whole tree to find them), then the free
        tail is cut off. Pages still visible to an open reader are kept, so a long-running
        reader can make this give back less; it never makes the file bigger.
        """
        self._check_open()
        before = os.fstat(self._fd).st_size
        last = None
        for _ in range(SHRINK_ROUNDS):
            with self.update() as tx:
                tx._force_commit = True
                tx._relocate_tail()
            hwm = self._meta.hwm
            if hwm == last and not tx._shrink_moved:
                break
            last = hwm
        return before - os.fstat(self._fd).st_size

    def compact(self, dst_path: str | os.PathLike) -> None:
        """Copy every bucket and key into a new file at ``dst_path``, packed and defragmented.

        Reads one snapshot, so it runs beside the writer. ``dst_path`` must not exist (or be
        empty). The copy is built under a temporary name in the same directory, committed in
        batches, and moved into place once complete: ``dst_path`` appears whole or not at all
        (a failure leaves nothing behind; what a killed compact of another process left is
        removed by the next compact to the same name).
        """
        dst_path = os.fspath(dst_path)
        replace = os.path.exists(dst_path)
        if replace and os.path.getsize(dst_path) > 0:
            raise FileExistsError(errno.EEXIST, "compact() destination exists", dst_path)
        _remove_stale(dst_path, "compacting")
        tmp = _temporary(dst_path, "compacting")
        # Left by a compact of this process id that crashed (a restarted container gets the same
        # id): opening it would merge its stale contents into the copy. Removed, not reused.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            with (
                self.view() as src,
                DB(tmp, page_size=self.page_size, sync=self.sync) as out,
            ):
                copier = _Copier(out)
                try:
                    for name in src.buckets():
                        copier.copy_bucket(src.bucket(name), (name,))
                except BaseException as e:
                    copier.abort(e)
                    raise
                copier.finish()
            if replace:
                os.rename(tmp, dst_path)  # over the empty file
            else:
                try:
                    os.link(tmp, dst_path)  # fails if a file appeared there meanwhile
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                        raise
                    os.rename(tmp, dst_path)  # a file system without hard links
            if self.sync:
                fsync_dir(os.path.dirname(os.path.abspath(dst_path)))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def close(self) -> None:
        """Wait for the writer and other threads' readers to finish, then close the file.

        This thread's own open read transactions are ended. Calling close() inside an update()
        of the same thread raises KeyvalError.
        """
        with self._lock:
            if self._closed or self._closing:
                return
            if self._writer == threading.get_ident():
                raise KeyvalError("close() inside an update() of the same thread")
            self._closing = True
        with self._wlock:
            with self._cond:
                me = threading.get_ident()
                for tx in list(self._open_reads):
                    if tx._thread == me:
                        tx._closed = True
                        tx._root._end()
                        self._end_read_locked(tx)
                while self._open_reads:
                    self._cond.wait()
                self._closed = True
            # Every map, not only the current one: an older one that ended transactions still
            # hold (until the garbage collector frees them) maps the file, and a mapping keeps
            # the open file, and so its flock, alive after os.close: the file could not be
            # opened again, by this process or another.
            for old_map in list(self._maps):
                old_map.close()
            self._map = None
            os.close(self._fd)
            self._hot = {}
            self._cold = {}

    def __enter__(self) -> DB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"txid {self._meta.txid}"
        return f"<DB {self.path!r} {state}>"


class _Copier:
    """compact()'s writer: copies buckets into ``out`` in transactions of bounded size."""

    def __init__(self, out: DB):
        self.out = out
        self.cm = None
        self.tx: Tx | None = None
        self.buckets: dict[tuple, Any] = {}
        self.pending = 0

    def _dst(self, path: tuple):
        if self.tx is None:
            self.cm = self.out.update()
            self.tx = self.cm.__enter__()
            self.buckets = {}
        b = self.buckets.get(path)
        if b is None:
            parent = self.tx if len(path) == 1 else self._dst(path[:-1])
            b = parent.create_bucket(path[-1], exist_ok=True)
            b.fill_factor = 1.0
            self.buckets[path] = b
        return b

    def _flush(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)
        self.cm = None
        self.tx = None
        self.pending = 0

    def copy_bucket(self, src, path: tuple) -> None:
        self._dst(path)
        for key, raw in src._raw_items():
            if type(raw) is BucketHeader:
                self.copy_bucket(src.bucket(key), (*path, key))
                continue
            value = src._tx._read_overflow(raw) if type(raw) is OverflowRef else raw
            self._dst(path).put(key, value)
            self.pending += len(key) + len(value)
            if self.pending > COMPACT_TX_BYTES:
                self._flush()

    def finish(self) -> None:
        self._flush()

    def abort(self, exc: BaseException) -> None:
        if self.cm is not None:
            self.cm.__exit__(type(exc), exc, exc.__traceback__)
        self.cm = None
        self.tx = None
