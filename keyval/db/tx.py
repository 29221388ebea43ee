"""Transactions: a snapshot to read, or the one writer's changes and their commit.

Commit protocol (the order is what makes a crash at any instant safe):

1. Rebalance and spill every changed bucket: changed nodes get new pages (never the pages the
   last committed tree uses: copy-on-write), pages freed by this transaction become *pending*.
2. Write the freelist chunks that changed and a new freelist root.
3. Write all those pages in page order, then fdatasync: the new tree is on disk, unreachable.
   (A transaction writes its sealed pages in batches while it spills and starts their
   writeback, so that the disk works while it seals the rest and a large one's memory does
   not hold them all: they are unreachable from the last commit either way.)
4. Write the meta page for ``txid`` into slot ``txid % 2`` (the other slot keeps the previous
   commit), then fdatasync: the commit point. A torn meta fails its checksum and open falls
   back to the previous one, whose pages step 1-3 never touched.
5. Publish the meta to new readers.

A page freed by transaction ``t`` belonged to the tree of ``t - 1``; a reader that started at
``r < t`` may still read it, so it is reused only when every open reader has ``r >= t``.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

from keyval.errors import KeyvalError, ReadOnlyError, TxClosedError

from .bucket import Bucket, ShrinkBudget, check_key
from .meta import Meta
from .node import Node
from .page import BucketHeader, OverflowRef

if TYPE_CHECKING:
    from .db import DB


class Tx:
    """A transaction: ``db.view()`` gives a read-only one, ``db.update()`` the writer.

    A read transaction sees the database as of its start, however many commits happen while it
    runs. The write transaction sees its own changes; they become visible to new transactions,
    and durable (``sync=True``), when its ``with`` block exits normally; an exception rolls
    them all back. Use after the block raises TxClosedError. A transaction, and the buckets and
    cursors it hands out, belong to the thread that opened it.
    """

    def __init__(self, db: DB, meta: Meta, writable: bool):
        self._db = db
        self._meta = meta
        self.writable = writable
        self.txid = meta.txid + 1 if writable else meta.txid
        self._closed = False
        self._thread = threading.get_ident()
        # The page map for C lookups and node reads (None: Python paths only). Its own, not
        # the database's latest: a map is unmapped once no transaction holds it.
        self._map = db._map
        self._load = partial(db._load_node, cmap=self._map)
        self._freed: list[tuple[int, int]] = []
        self._runs: list[tuple[int, int, list, Node | None]] = []
        # Runs written early (see _write_early): (pgid, node) of each, for the node cache.
        self._written: list[tuple[int, Node | None]] = []
        self._hwm = meta.hwm
        self._root = Bucket(self, None, b"", BucketHeader.of_page(meta.root, 0))
        self._force_commit = False
        # The exception that left a write half done (see bucket._write): no commit then.
        self._broken: BaseException | None = None
        # shrink(): pages from here on are to be emptied (see _relocate_tail); 0: all of them.
        # _shrink_moved: whether this commit moves any page down.
        self._shrink_cut = 0
        self._shrink_moved = False

    def __repr__(self) -> str:
        kind = "write" if self.writable else "read"
        state = "closed" if self._closed else "open"
        return f"<Tx {self.txid} {kind} {state}>"

    def _check(self) -> None:
        if self._closed:
            raise TxClosedError("the transaction has ended")

    # -- top-level buckets -----------------------------------------------------------------

    def bucket(self, name: bytes) -> Bucket:
        """The top-level bucket ``name``; raises BucketNotFound."""
        self._check()
        return self._root.bucket(name)

    def create_bucket(self, name: bytes, exist_ok: bool = False) -> Bucket:
        """Create the top-level bucket ``name``; BucketExists if it exists unless ``exist_ok``."""
        self._check()
        return self._root.create_bucket(name, exist_ok)

    def delete_bucket(self, name: bytes) -> None:
        """Delete the top-level bucket ``name`` and all it holds; raises BucketNotFound."""
        self._check()
        check_key(name)
        self._root.delete_bucket(name)

    def buckets(self) -> Iterator[bytes]:
        """Names of the top-level buckets, ascending."""
        self._check()
        return self._root.buckets()

    # -- services for buckets and nodes ----------------------------------------------------

    def _free(self, pgid: int, span: int) -> None:
        self._freed.append((pgid, span))

    def _allocate(self, span: int) -> int:
        pgid, self._hwm = self._db._freelist.allocate(span, self._hwm)
        return pgid

    def _write(self, pgid: int, span: int, buffers: list, node: Node | None) -> None:
        self._runs.append((pgid, span, buffers, node))

    def _read_overflow(self, ref: OverflowRef) -> bytes:
        return self._db._read_overflow(ref)

    def _write_early(self) -> None:
        """Write the runs sealed so far, start their writeback and let their buffers go
        (step 3, ahead of time; see node.EARLY_WRITE_FIRST for when spill calls this).

        Why: the disk writes them while the rest is sealed, so the commit's fdatasync waits
        for less (a 1,000-put commit over 1M keys: 22-35 ms -> 18-25 ms). And a 1M-key load
        seals some 60,000 pages: holding them all cost 250 MB, most of the commit's page
        faults, and a copy from cold memory when they were finally written."""
        runs = self._runs
        runs.sort(key=_first)
        db = self._db
        db._evict(runs)
        write_runs(db._fd, db.page_size, runs)
        if db.sync:  # else nothing waits for the disk; its writes would only compete
            start_writeback(db._fd)
        self._written.extend([(pgid, node) for pgid, _, _, node in runs])
        runs.clear()

    # -- ending ----------------------------------------------------------------------------

    def _break(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc

    def rollback(self) -> None:
        """Discard the transaction's changes (nothing of them ever reached the file)."""
        if self._closed:
            return
        self._closed = True
        if self.writable:
            self._db._freelist.release_reserved()  # a shrink() round's (see _relocate_tail)
        self._end()

    def _end(self) -> None:
        self._root._end()
        self._db._end(self)
        # A transaction ended can live on: a bucket or cursor the caller keeps, or just the
        # cycle it makes with its buckets, which waits for a full collection. What it holds
        # for its commit goes now: the pages of a 100k-put commit alone are ~40 MB.
        self._runs, self._written, self._freed = [], [], []

    def commit(self) -> None:
        """Make the changes durable and visible; see the module docstring for the protocol.

        On an I/O error the database refuses further writes (ReadOnlyError) until reopened:
        after a failed write or fsync the state of the file is unknown. After a write that
        failed midway (see bucket._write) it rolls back and raises KeyvalError.
        """
        self._check()
        if not self.writable:
            raise ReadOnlyError("a read-only transaction cannot commit")
        if self._broken is not None:
            self.rollback()
            raise KeyvalError(
                "the transaction was rolled back, not committed: one of its writes failed "
                f"midway ({type(self._broken).__name__}) and may have been left half done"
            ) from self._broken
        try:
            if self._root._dirty or self._force_commit:
                # The collector waits: a commit makes no cycles, and a 1M-key load's makes
                # 64k page runs, enough for ~90 collections that sweep every older object
                # (6% of the load: its 1M-key lists are traversed each time).
                paused = gc.isenabled()
                gc.disable()
                try:
                    self._db._commit(self)
                finally:
                    if paused:
                        gc.enable()
        finally:
            self._closed = True
            self._end()

    def _relocate_tail(self) -> None:
        """shrink(): copy-on-write the live pages that lie past the size the file could have,
        so that this commit moves them down (see Bucket._relocate). Nothing moves when no page
        below that size is free to take them: the file would only grow."""
        db = self._db
        freelist = db._freelist
        db._release_pending(self)  # as the commit will: the pages no reader can see are free
        cut = self._hwm - len(freelist.free) - freelist.pending_pages()
        self._shrink_cut = cut
        # Copies take the lowest free pages: worth it when some lie below the cut, and safe
        # while they do not run out (the file would grow), less what rewriting the freelist
        # itself (every chunk and the root, at most) will need.
        budget = len(freelist.free) - len(freelist.chunk_pgids) - freelist.root_span - 1
        if freelist.free.count_below(cut) > 0 and budget > 0:
            self._root._relocate(cut, ShrinkBudget(budget))
        self._shrink_moved = bool(self._freed)

    def _prepare(self) -> tuple[Meta, list]:
        """Steps 1-2 of the protocol: all pages to write, and the meta that makes them live."""
        db = self._db
        freelist = db._freelist
        # shrink(): lowest pages first, so that the tail empties out (see Freelist.allocate).
        freelist.lowest_first = self._force_commit
        header = self._root._spill()
        freelist.release_reserved()  # what the moves of a shrink() round did not take
        freelist.give_back_taken()  # and the free pages of the last window spill took
        freelist.pend_runs(self.txid, self._freed)
        if self._force_commit:
            # shrink(): move the freelist's own pages down too, those in the tail (rewriting
            # any chunk rewrites the root); the pages they leave are trimmed by the next
            # shrink round, once released.
            cut = self._shrink_cut
            chunks = freelist.chunk_pgids
            tail = {slot for slot, pgid in enumerate(chunks) if pgid >= cut and pgid}
            if not tail and chunks and freelist.root + freelist.root_span > cut:
                tail = {0}
            # Only when the free pages below the cut can take every chunk to rewrite and the
            # root: a rewrite into pages past it (or new ones) would not shrink the file.
            rewrite = len(tail | freelist.dirty) + max(1, freelist.root_span)
            if tail and freelist.free.count_below(cut) >= rewrite:
                freelist.dirty.update(tail)
                self._shrink_moved = True
            # Cutting the free tail rewrites the freelist: at most a page per chunk still in
            # use, and the root (no longer than now). What the free pages below cannot take
            # goes where the tail was, so the file ends no later than now only if it all fits
            # in the free pages, tail included; else the cut waits for a later round (cut
            # anyway, with a reader holding the other free pages, the file grew).
            tail_pages = freelist.free_tail(self._hwm)
            chunks = freelist.chunks_in_use(self._hwm - tail_pages)
            need = chunks + max(1, freelist.root_span) if chunks else 0
            if need <= len(freelist.free):
                self._hwm = freelist.trim_tail(self._hwm)
        runs, self._hwm = freelist.write(self.txid, self._hwm)
        # The transaction's own list, not a copy: a 1M-key load queues 64k runs, and copying
        # them into new tuples cost a full garbage collection on top of the copy.
        all_runs = self._runs
        all_runs.extend((p, s, b, None) for p, s, b in runs)
        all_runs.sort(key=_first)
        meta = Meta(db.page_size, header.root, freelist.root, self._hwm, self.txid)
        return meta, all_runs


def _first(run: tuple) -> int:
    return run[0]


def _sync_file_range():
    """libc's sync_file_range through cffi's ABI mode (which releases the GIL around the
    call; Python's os module lacks it), or None where there is none (not Linux)."""
    try:
        from cffi import FFI

        ffi = FFI()
        ffi.cdef("int sync_file_range(int, int64_t, int64_t, unsigned int);")
        return ffi.dlopen(None).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to the disk, without waiting:
    a hint, never a promise of durability (only fdatasync makes one, and it reports any write
    error, so this one's result is ignored)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def write_runs(fd: int, page_size: int, runs: list) -> None:
    """Write runs of pages, coalescing neighbours into one pwritev each."""
    iov_max = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
    i = 0
    n = len(runs)
    while i < n:
        pgid, span, buffers, _ = runs[i]
        start = pgid
        end = pgid + span
        batch = list(buffers)
        i += 1
        while i < n and runs[i][0] == end and len(batch) + len(runs[i][2]) <= iov_max:
            end += runs[i][1]
            batch.extend(runs[i][2])
            i += 1
        offset = start * page_size
        total = (end - start) * page_size
        written = os.pwritev(fd, batch, offset)
        if written != total:
            # Short writes are legal; finish with a plain write of the remainder.
            rest = b"".join(bytes(b) for b in batch)[written:]
            while rest:
                w = os.pwrite(fd, rest, offset + written)
                written += w
                rest = rest[w:]
