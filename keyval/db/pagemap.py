"""The page map: the database file mapped read-only, and the C lookups that run over it.

Reads that do not need Python objects per entry (a point lookup descends a whole tree in one C
call) go through a :class:`PageMap` instead of the decoded-node cache. The C side (csrc/db/,
built into ``keyval._db_cffi``) verifies each page run's checksum, page id and length the first
time it reads it, remembers that in a bit per page, and checks every length it reads against
the run, so a corrupt page raises CorruptionError with the file and the page's offset, as the
Python codec does.

The map reserves address space for far more pages than the file has (``MAP_BYTES``) and is never
remapped: a transaction keeps the map it started with, and a file that outgrows it gets a new
map for later transactions while older ones keep theirs (no remap stall for readers or writer).
Only pages below the file's current page count are ever touched.

Checksums in C use xxh3_64 as exported by the ``xxhash`` module's own extension library (no
second copy of xxHash); if it is not there, :data:`AVAILABLE` is False and the database uses the
Python paths alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import xxhash

from keyval.errors import CorruptionError

from .page import (
    FLAG_BUCKET,
    FLAG_OVERFLOW,
    LEAF_ELEMENT,
    OVERFLOW_REF,
    TYPE_BRANCH,
    TYPE_LEAF,
    OverflowRef,
    decode_bucket_header,
)

try:
    import xxhash._xxhash as _xxhash_ext

    from keyval._db_cffi import ffi, lib
except ImportError:  # pragma: no cover - a build without the extension
    ffi = lib = None
    AVAILABLE = False
else:

    def _hash_ready() -> bool:
        if lib.kvdb_hash_init(os.fsencode(_xxhash_ext.__file__)) != 0:
            return False
        probe = bytes(range(256)) * 5
        return lib.kvdb_hash(probe, len(probe)) == xxhash.xxh3_64_intdigest(probe)

    AVAILABLE = _hash_ready()


def _python_exports() -> dict:
    """What the C side makes with the Python API (csrc/db/pylookup.c, pyencode.c, pynode.c,
    pysplit.c): ``CLookup``, the C base class of Bucket, the plain leaf encoders ``leaf_size``
    and ``encode_leaf`` (used by :mod:`.encode`), ``dirty_list`` and ``leaf_cuts`` (used by
    :mod:`.node`). Empty without the extension.

    CLookup's ``get`` and ``put`` run in C and call the subclass's ``_get`` / ``_put`` for
    every case they do not take themselves; ``_c_bind(PageMap.address, root)`` turns C gets
    on, ``_c_bind(0, 0)`` off. The objects are made by a C call given this dict's address
    (CPython's ``id``): cffi modules have no other way to hand out objects of their own.
    """
    if not AVAILABLE:
        return {}
    out: dict = {}
    if lib.kvdb_py_export(ffi.cast("void *", id(out))) != 0:  # pragma: no cover
        return {}
    return out


PY_EXPORTS = _python_exports()
CLookup = PY_EXPORTS.get("CLookup")

_NODE_TYPES = (TYPE_LEAF, TYPE_BRANCH)

# Address space reserved per open database (not memory: pages are read from the page cache on
# demand). A file larger than half of it maps twice its size instead.
MAP_BYTES = 1 << 36


class PageMap:
    """A read-only map of an open database file; thread-safe for readers.

    ``pages`` is how many pages it can address; the file must stay below that (the DB opens a
    new map when it would not). The writer calls :meth:`forget` for every page it rewrites,
    :meth:`set_file_pages` when the file grows (after) or shrinks (before). ``handle`` and
    ``buf`` are for the lookup fast paths in :mod:`.bucket`, which calls ``kvdb_get`` inline
    (with ``kvdb_tree`` structs from :meth:`tree`); ``address`` is the handle's, for
    :data:`CLookup`.
    """

    __slots__ = ("__weakref__", "address", "buf", "handle", "page_size", "pages", "path")

    def __init__(self, fd: int, page_size: int, file_pages: int, path: str):
        pages = max(MAP_BYTES // page_size, 2 * file_pages)
        handle = lib.kvdb_map_open(fd, page_size, pages, file_pages)
        if handle == ffi.NULL:
            err = ffi.errno
            raise OSError(err, f"cannot map the database: {os.strerror(err)}", path)
        self.handle = ffi.gc(handle, lib.kvdb_map_close)
        self.address = int(ffi.cast("uintptr_t", handle))  # for CLookup._c_bind
        self.buf = ffi.buffer(lib.kvdb_map_base(handle), pages * page_size)
        self.page_size = page_size
        self.pages = pages
        self.path = path

    def close(self) -> None:
        """Unmap now; only once no transaction can use the map any more."""
        ffi.release(self.handle)

    def set_file_pages(self, n: int) -> None:
        lib.kvdb_map_set_file_pages(self.handle, n)

    def forget(self, pgid: int, span: int) -> None:
        lib.kvdb_map_forget(self.handle, pgid, span)

    def forget_runs(self, runs: Iterable[tuple]) -> None:
        """:meth:`forget` for each run (a tuple starting with page id and span)."""
        forget, handle = lib.kvdb_map_forget, self.handle
        for run in runs:
            forget(handle, run[0], run[1])

    def read_node_run(self, pgid: int) -> tuple[bytes, int, int] | None:
        """A leaf or branch run verified in the map, as DB._read_run gives it (buffer, type,
        count), copied out; None for anything else, valid or not (the caller then reads the
        page with pread, and reports what is wrong with it). No system call, and the checksum
        is computed once per page while it stays unchanged, not on every read."""
        res = ffi.new("kvdb_result *")
        if lib.kvdb_page(self.handle, pgid, res) != lib.KVDB_OK or res.type not in _NODE_TYPES:
            return None
        start = pgid * self.page_size
        return self.buf[start : start + res.span * self.page_size], res.type, res.count

    def tree(self, root: int):
        """A ``kvdb_tree`` for lookups in the tree at ``root``; one per bucket and transaction
        (it holds its last outcome, so it belongs to one thread). ``ffi.buffer(t.value)`` is
        where a plain value found is copied."""
        t = ffi.new("kvdb_tree *")
        t.map = self.handle
        t.root = root
        return t

    def error(self, res) -> CorruptionError:
        """The CorruptionError for a KVDB_ECORRUPT outcome in ``res``."""
        why = ffi.string(res.why).decode()
        return CorruptionError(f"page {res.pgid} {why}", self.path, res.pgid * self.page_size)

    def lookup(self, tree, key: bytes):
        """The raw value under ``key`` in ``tree``: bytes, OverflowRef, BucketHeader, or None.
        Raises CorruptionError."""
        return self.outcome(lib.kvdb_get(tree, key, len(key)), tree)

    def outcome(self, rc: int, tree):
        """:meth:`lookup`'s answer from kvdb_get's return value ``rc``."""
        if rc >= 0:
            return ffi.buffer(tree.value, rc)[:]
        if rc == lib.KVDB_GET_MISSING:
            return None
        res = tree.result
        raw = self.buf[res.offset : res.offset + res.length]
        if rc == lib.KVDB_GET_VALUE:
            return raw
        if rc == lib.KVDB_GET_OVERFLOW:
            return OverflowRef(*OVERFLOW_REF.unpack(raw))
        offset = res.pgid * self.page_size
        if rc == lib.KVDB_GET_BUCKET:
            return decode_bucket_header(raw, self.path, offset)
        if rc == lib.KVDB_GET_CORRUPT:
            raise self.error(res)
        raise MemoryError("keyval.db lookup")


def decode_node(run: bytes, path: str | None = None, offset: int | None = None):
    """Decode a leaf or branch run held in memory with the C codec, without checking its
    checksum: (type, keys, values), values as :func:`.page.decode_leaf_body` gives them (leaf)
    or child page ids (branch). Raises CorruptionError as the Python codec does; the reference
    it is tested against."""
    cap = 2 * (len(run) // LEAF_ELEMENT.size) + 2
    ends = ffi.new("uint64_t[]", cap)
    flags = ffi.new("uint8_t[]", cap)
    children = ffi.new("uint64_t[]", cap)
    res = ffi.new("kvdb_result *")
    rc = lib.kvdb_decode(run, len(run), ends, flags, children, cap, res)
    if rc == lib.KVDB_ECORRUPT:
        raise CorruptionError(f"page {ffi.string(res.why).decode()}", path, offset)
    if rc != lib.KVDB_OK:
        raise CorruptionError(f"page is not a branch or leaf (code {rc})", path, offset)
    count = res.count
    if res.type == TYPE_BRANCH:
        keys = [run[ends[i] : ends[i + 1]] for i in range(count)]
        return TYPE_BRANCH, keys, [children[i] for i in range(count)]
    keys = []
    vals: list = []
    for i in range(count):
        keys.append(run[ends[2 * i] : ends[2 * i + 1]])
        raw = run[ends[2 * i + 1] : ends[2 * i + 2]]
        if flags[i] == FLAG_OVERFLOW:
            vals.append(OverflowRef(*OVERFLOW_REF.unpack(raw)))
        elif flags[i] == FLAG_BUCKET:
            vals.append(decode_bucket_header(raw, path, offset))
        else:
            vals.append(raw)
    return res.type, keys, vals
