"""Buckets: ordered maps of bytes to bytes inside a transaction, nestable.

A bucket is a B+tree of its own. Its header (root page, key count) is the value of its entry in
the parent bucket's leaf; a small bucket is stored *inline* in that header instead of in pages
of its own. Plain keys and nested bucket names share one key space: a name is either a key or a
bucket, never both.
"""

from __future__ import annotations

import functools
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyval.errors import (
    BucketExists,
    BucketNotFound,
    CorruptionError,
    KeyTooLarge,
    KeyvalError,
    ReadOnlyError,
    TxClosedError,
    ValueTooLarge,
)

from .cursor import Cursor
from .node import (
    MAX_DEPTH,
    SPLIT_ENTRIES,
    Node,
    child_for_write,
    inline_header,
    rebalance,
    route,
    spill_root,
    split_in_memory,
)
from .page import MAX_KEY_SIZE, MAX_VALUE_SIZE, BucketHeader, OverflowRef
from .pagemap import CLookup
from .pagemap import ffi as _ffi
from .pagemap import lib as _c

_kvdb_get = _c.kvdb_get if _c is not None else None
_MISSING = _c.KVDB_GET_MISSING if _c is not None else None

if TYPE_CHECKING:
    from .tx import Tx

DEFAULT_FILL_FACTOR = 0.5

# Bucket.get runs in C when the extension is there (csrc/db/pylookup.c); Bucket._get is the
# Python path it falls back to, and the whole of get without the extension.
_Base = CLookup if CLookup is not None else object


@dataclass(slots=True)
class ShrinkBudget:
    """What one shrink() round may still take for the copies it makes (Bucket._relocate):
    free pages, and moves that need runs of several pages (one per round, so that two
    cannot count on the same free run)."""

    pages: int
    runs: int = 1


def check_key(key) -> bytes:
    if type(key) is not bytes:
        if not isinstance(key, bytes):
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        key = bytes(key)
    if not key:
        raise KeyTooLarge("the empty key is not allowed")
    if len(key) > MAX_KEY_SIZE:
        raise KeyTooLarge(f"key of {len(key)} bytes is longer than {MAX_KEY_SIZE}")
    return key


def check_value(value) -> bytes:
    if type(value) is not bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"values are bytes, not {type(value).__name__}")
        value = bytes(value)
    if len(value) > MAX_VALUE_SIZE:
        raise ValueTooLarge(f"value of {len(value)} bytes is longer than {MAX_VALUE_SIZE}")
    return value


def check_bound(key) -> None:
    if key is not None and not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, not {type(key).__name__}")


def _write(method: Callable) -> Callable:
    """A bucket write. The errors its checks raise (KeyvalError, TypeError, ValueError) come
    before it changes anything; any other exception out of it (MemoryError, KeyboardInterrupt)
    may leave it half done, a leaf with more values than keys, say. The transaction is then
    broken: it can only roll back (Tx.commit refuses), so no half write reaches the file."""

    @functools.wraps(method)
    def write(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (KeyvalError, TypeError, ValueError):
            raise
        except BaseException as exc:
            self._tx._break(exc)
            raise

    return write


class Bucket(_Base):
    """An ordered map of ``bytes`` keys to ``bytes`` values, valid while its transaction is open.

    Reads see the transaction's snapshot plus its own writes. Writes raise ReadOnlyError in a
    ``view()``; any use after the transaction ended raises TxClosedError; use of a bucket that
    was deleted raises BucketNotFound. Keys are 1 to 32 KiB (else KeyTooLarge), values up to
    2 GiB - 1 (else ValueTooLarge); anything but bytes raises TypeError. Not thread-safe: a
    transaction and its buckets belong to one thread.

    ``fill_factor`` (0.1 .. 1.0, default 0.5) is how full pages are left when split at commit;
    1.0 packs pages for keys that are only ever appended in ascending order; anything outside
    0.1 .. 1.0 raises ValueError.
    """

    __slots__ = (
        "_children",
        "_cmap",
        "_ctree",
        "_cvalue",
        "_deleted",
        "_dirty",
        "_header",
        "_name",
        "_parent",
        "_root",
        "_tx",
        "_fill_factor",
        # The fields a put changes are CLookup's (the C put path reads them directly).
        *(() if _Base is not object else ("_count", "_mods", "_node", "_unbalanced")),
    )

    def __init__(self, tx: Tx, parent: Bucket | None, name: bytes, header: BucketHeader):
        self._tx = tx
        self._parent = parent
        self._name = name
        self._header = header
        self._root = header.root
        self._count = header.count
        self._node: Node | None = None
        self._children: dict[bytes, Bucket] = {}
        self._dirty = False
        self._deleted = False
        self._mods = 0
        # Whether a node of this bucket may have shrunk in this transaction (a delete, a
        # shorter value, a split): only then can commit find underfull nodes to merge, so only
        # then does it walk the changed tree for them (bbolt's "unbalanced" mark). Puts that
        # insert or keep sizes leave it False, and their commit skips the walk.
        self._unbalanced = False
        self._fill_factor = DEFAULT_FILL_FACTOR
        # The page map while lookups may run in C: the tree is all committed pages (no dirty
        # node, not inline), the bucket is not deleted and the transaction is open. Whatever
        # ends one of those sets it to None.
        # _ctree and _cvalue are the C lookup's state and value buffer, None together with it.
        # The C base's own lookup (get) is bound to the same map and root, and unbound with
        # them (_no_c).
        self._cmap = tx._map if header.root else None
        self._ctree = self._cvalue = None
        if self._cmap is not None:
            self._ctree = self._cmap.tree(header.root)
            self._cvalue = _ffi.buffer(self._ctree.value)
            if CLookup is not None:
                self._c_bind(self._cmap.address, header.root)

    if CLookup is None:

        def _c_bind(self, address: int, root: int) -> None:
            pass

        def _c_put_on(
            self, node_type, split_entries: int, max_value: int, db=None, freed=None
        ) -> None:
            pass

    @property
    def fill_factor(self) -> float:
        return self._fill_factor

    @fill_factor.setter
    def fill_factor(self, value: float) -> None:
        if type(value) not in (float, int) or not 0.1 <= value <= 1.0:
            raise ValueError(f"fill_factor must be a number from 0.1 to 1.0, not {value!r}")
        self._fill_factor = float(value)

    def _no_c(self) -> None:
        """No more lookups in C for this bucket (its tree changed, it was deleted, or its
        transaction ended and the map may go away). Puts in C stop too; a put in Python
        turns them on again where that is right."""
        self._cmap = self._ctree = self._cvalue = None
        self._c_bind(0, 0)
        self._c_put_on(None, 0, 0)

    @property
    def name(self) -> bytes:
        return self._name

    def __repr__(self) -> str:
        return f"<Bucket {self._name!r} of tx {self._tx.txid}>"

    # -- state checks ----------------------------------------------------------------------

    def _check_read(self) -> None:
        if self._tx._closed:
            raise TxClosedError("the transaction of this bucket has ended")
        if self._deleted:
            raise BucketNotFound(f"bucket {self._name!r} was deleted")

    def _check_write(self) -> None:
        self._check_read()
        if not self._tx.writable:
            raise ReadOnlyError("write in a read-only transaction (use db.update())")

    # -- tree access -----------------------------------------------------------------------

    def _root_node(self) -> Node:
        node = self._node
        if node is None:
            if self._root:
                node = self._tx._load(self._root)
            else:
                keys, vals = self._header.inline_entries(self._tx._db.path)
                plain = all(type(v) is bytes for v in vals)
                node = Node(True, keys, vals, plain=plain)
            self._node = node
        return node

    def _lookup(self, key: bytes):
        """The raw value under ``key`` (bytes, OverflowRef, BucketHeader) or None."""
        cmap = self._cmap
        if cmap is not None:
            return cmap.lookup(self._ctree, key)
        node = self._node
        if node is None:
            node = self._root_node()
        load = self._tx._load
        depth = 0
        while not node.leaf:
            depth += 1
            if depth > MAX_DEPTH:
                raise self._too_deep()
            keys = node.keys
            i = route(keys, key)
            child = node.vals[i]
            node = load(child) if type(child) is int else child
        keys = node.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return node.vals[i]
        return None

    def _touch(self) -> None:
        self._mods += 1
        b = self
        while b is not None and not b._dirty:
            b._dirty = True
            b = b._parent

    def _leaf_for_write(self, key: bytes) -> tuple[list[tuple[Node, int]], Node]:
        """The path to the leaf for ``key``, every node on it made dirty."""
        if self._dirty:
            self._mods += 1
        else:
            self._touch()
        tx = self._tx
        node = self._node
        if node is None:
            node = self._root_node()
        if not node.dirty:
            node = self._dirty_root(node)
        path = []
        while not node.leaf:
            if len(path) == MAX_DEPTH:
                raise self._too_deep(write=True)
            i = route(node.keys, key)
            child = node.vals[i]
            if type(child) is int:
                child = child_for_write(tx, node, i)
            path.append((node, i))
            node = child
        return path, node

    def _dirty_root(self, node: Node) -> Node:
        self._no_c()
        if node.pgid:
            self._tx._free(node.pgid, node.span)
        node = node.dirty_copy()
        self._node = node
        return node

    def _insert(self, key: bytes, value) -> bool:
        """Set ``key`` to a raw value (bytes or BucketHeader); returns whether it is new.

        Raises BucketExists, changing nothing visible, if ``key`` names a nested bucket.
        """
        # _leaf_for_write() inlined: this runs once per put.
        if self._dirty:
            self._mods += 1
        else:
            self._touch()
        node = self._node
        if node is None:
            node = self._root_node()
        if not node.dirty:
            node = self._dirty_root(node)
        path = []
        if not node.leaf:
            tx = self._tx
            while True:
                i = bisect_right(node.keys, key) - 1
                if i < 0:
                    i = 0
                child = node.vals[i]
                if type(child) is int:
                    child = child_for_write(tx, node, i)
                path.append((node, i))
                node = child
                if node.leaf:
                    break
                if len(path) == MAX_DEPTH:
                    raise self._too_deep(write=True)
        leaf = node
        keys = leaf.keys
        if type(value) is not bytes or len(value) > self._tx._db._max_inline:
            leaf.plain = False
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            old = leaf.vals[i]
            if type(old) is BucketHeader:
                raise BucketExists(f"{key!r} is a nested bucket, not a key")
            if (
                type(old) is not bytes
                or type(value) is not bytes
                or len(value) < len(old)
                or len(value) > self._tx._db._max_inline
            ):
                self._unbalanced = True  # the entry may have shrunk
            self._drop_value(old)
            leaf.vals[i] = value
            return False
        keys.insert(i, key)
        leaf.vals.insert(i, value)
        if len(keys) > SPLIT_ENTRIES:
            self._unbalanced = True
            new_root = split_in_memory(leaf, path, key)
            if new_root is not None:
                self._node = new_root
        return True

    def _drop_value(self, old) -> None:
        if type(old) is OverflowRef:
            db = self._tx._db
            db._check_overflow_ref(old)  # CorruptionError before anything is freed
            self._tx._free(old.pgid, old.span(db.page_size))

    # -- the mapping -----------------------------------------------------------------------

    def _get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default`` if it is absent (or names a nested bucket).

        ``get`` itself is the C base's when the extension is there: it answers an exact bytes
        key whose value is plain or absent, and calls this for everything else."""
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            check_key(key)  # raises for a non-bytes, empty or oversized key, as put does
        tree = self._ctree
        if tree is not None and type(key) is bytes:
            # The whole descent in one C call; a plain value comes back in the tree's buffer.
            rc = _kvdb_get(tree, key, len(key))
            if rc >= 0:
                return self._cvalue[:rc]
            if rc == _MISSING:
                return default
            v = self._cmap.outcome(rc, tree)
            if type(v) is bytes:
                return v
            if type(v) is OverflowRef:
                return self._tx._read_overflow(v)
            return default
        tx = self._tx
        if tx._closed or self._deleted:
            self._check_read()
        # The descent is inlined, with the page cache probed directly: this is the hottest
        # path of the store, and each Python call saved is a measurable share of a get.
        node = self._node
        if node is None:
            node = self._root_node()
        if not node.leaf:
            cache = tx._db._hot
            load = tx._load
            depth = 0
            while True:
                i = bisect_right(node.keys, key) - 1
                child = node.vals[i if i > 0 else 0]
                if type(child) is int:
                    found = cache.get(child)
                    node = found if found is not None else load(child)
                else:
                    node = child
                if node.leaf:
                    break
                depth += 1
                if depth == MAX_DEPTH:
                    raise self._too_deep()
        keys = node.keys
        i = bisect_left(keys, key)
        if i != len(keys) and keys[i] == key:
            v = node.vals[i]
            if type(v) is bytes:
                return v
            if type(v) is OverflowRef:
                return tx._read_overflow(v)
        return default

    if CLookup is None:
        get = _get

    @_write
    def _put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``. Raises BucketExists if ``key`` names a nested bucket.

        ``put`` itself is the C base's when the extension is there: once a put here has made
        the bucket and its root dirty it takes the plain puts whose path is dirty or can be
        made dirty from the page cache (a bulk load's, a batch of updates'), and calls this
        for everything else."""
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = check_key(key)
        if type(value) is not bytes or len(value) > MAX_VALUE_SIZE:
            value = check_value(value)
        tx = self._tx
        if tx._closed or not tx.writable or self._deleted:
            self._check_write()
        # _insert() inlined for a plain value: a bulk load is this function, once per key, and
        # the call and the checks a plain value does not need are a fifth of its time.
        if self._dirty:
            self._mods += 1
        else:
            self._touch()
        node = self._node
        if node is None:
            node = self._root_node()
        if not node.dirty:
            node = self._dirty_root(node)
        if CLookup is not None:
            # Open, writable, not deleted, changed, root dirty: the C put may take over.
            self._c_put_on(Node, SPLIT_ENTRIES, tx._db._max_inline, tx._db, tx._freed)
        path = []
        if not node.leaf:
            while True:
                i = bisect_right(node.keys, key) - 1
                if i < 0:
                    i = 0
                child = node.vals[i]
                if type(child) is int:
                    child = child_for_write(tx, node, i)
                path.append((node, i))
                node = child
                if node.leaf:
                    break
                if len(path) == MAX_DEPTH:
                    raise self._too_deep(write=True)
        keys = node.keys
        if len(value) > tx._db._max_inline:
            node.plain = False
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            old = node.vals[i]
            if type(old) is not bytes:
                if type(old) is BucketHeader:
                    raise BucketExists(f"{key!r} is a nested bucket, not a key")
                self._drop_value(old)
                self._unbalanced = True
            elif len(value) < len(old) or len(value) > tx._db._max_inline:
                self._unbalanced = True  # shorter, or moved out to an overflow run
            node.vals[i] = value
            return
        keys.insert(i, key)
        node.vals.insert(i, value)
        self._count += 1
        if len(keys) > SPLIT_ENTRIES:
            self._unbalanced = True
            new_root = split_in_memory(node, path, key)
            if new_root is not None:
                self._node = new_root

    if CLookup is None:
        put = _put

    @_write
    def delete(self, key: bytes) -> bool:
        """Remove ``key``; returns whether it was there. A nested bucket's name raises
        BucketExists (use delete_bucket)."""
        key = check_key(key)
        self._check_write()
        old = self._lookup(key)
        if old is None:
            return False
        if type(old) is BucketHeader:
            raise BucketExists(f"{key!r} is a nested bucket; use delete_bucket()")
        _path, leaf = self._leaf_for_write(key)
        i = bisect_left(leaf.keys, key)
        self._drop_value(leaf.vals[i])
        del leaf.keys[i], leaf.vals[i]
        self._count -= 1
        self._unbalanced = True
        return True

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: bytes) -> bool:
        self._check_read()
        key = check_key(key)
        v = self._lookup(key)
        return v is not None and type(v) is not BucketHeader

    def __len__(self) -> int:
        """Number of plain keys (nested buckets not counted); O(1)."""
        self._check_read()
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        for k, _ in self.items():
            yield k

    def items(
        self, start: bytes | None = None, stop: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``start <= key < stop``, ascending (descending if ``reverse``).

        Nested buckets are skipped. Writing to the bucket while iterating is allowed: the walk
        goes on from the last key it returned.
        """
        self._check_read()
        check_bound(start)
        check_bound(stop)
        cursor = Cursor(self)
        if reverse:
            return cursor._iter_backward(start, stop)
        return cursor._iter_forward(start, stop)

    def cursor(self) -> Cursor:
        """A cursor over the plain keys; see :class:`keyval.db.cursor.Cursor`."""
        self._check_read()
        return Cursor(self)

    def _raw_items(self) -> Iterator:
        self._check_read()
        return Cursor(self)._iter_raw()

    # -- nested buckets --------------------------------------------------------------------

    def bucket(self, name: bytes) -> Bucket:
        """The nested bucket ``name``; raises BucketNotFound."""
        self._check_read()
        if not isinstance(name, bytes):
            raise TypeError(f"bucket names are bytes, not {type(name).__name__}")
        child = self._children.get(name)
        if child is not None:
            return child
        header = self._lookup(name)
        if type(header) is not BucketHeader:
            raise BucketNotFound(f"no bucket {name!r}")
        child = Bucket(self._tx, self, bytes(name), header)
        self._children[child._name] = child
        return child

    @_write
    def create_bucket(self, name: bytes, exist_ok: bool = False) -> Bucket:
        """Create the nested bucket ``name`` (BucketExists if it exists, unless ``exist_ok``;
        BucketExists too if ``name`` is a plain key)."""
        name = check_key(name)
        self._check_write()
        existing = self._lookup(name)
        if existing is not None or name in self._children:
            if type(existing) is BucketHeader and exist_ok:
                return self.bucket(name)
            if type(existing) is BucketHeader:
                raise BucketExists(f"bucket {name!r} exists")
            raise BucketExists(f"{name!r} is a key, not a bucket")
        header = BucketHeader.inline(0, [], [])
        self._insert(name, header)
        child = Bucket(self._tx, self, name, header)
        child._node = Node(True, [], [], dirty=True, plain=True)
        child._touch()
        self._children[name] = child
        return child

    @_write
    def delete_bucket(self, name: bytes) -> None:
        """Delete the nested bucket ``name`` and everything in it; raises BucketNotFound."""
        name = check_key(name)
        self._check_write()
        child = self.bucket(name)
        freed = self._tx._freed
        mark = len(freed)
        try:
            child._free_all()
        except BaseException:
            # A corrupt page found midway: the bucket stays, so none of its pages may be
            # freed (a commit would give them to new data while the bucket still uses them).
            del freed[mark:]
            raise
        child._forget()
        del self._children[name]
        _path, leaf = self._leaf_for_write(name)
        i = bisect_left(leaf.keys, name)
        del leaf.keys[i], leaf.vals[i]
        self._unbalanced = True

    def buckets(self) -> Iterator[bytes]:
        """Names of the nested buckets, ascending."""
        self._check_read()
        return Cursor(self)._iter_buckets()

    def _end(self) -> None:
        """The transaction ended: no more C lookups (the map may go away)."""
        self._no_c()
        for child in self._children.values():
            child._end()

    # -- freeing ---------------------------------------------------------------------------

    def _forget(self) -> None:
        self._deleted = True
        self._no_c()
        for child in self._children.values():
            child._forget()

    def _free_all(self) -> None:
        """Free every page of this bucket and of all buckets nested in it."""
        for child in self._children.values():
            child._free_all()
        self._free_subtree(self._root_node(), self._children, 0, set())

    def _free_subtree(self, node: Node, opened: dict, depth: int, roots: set[int]) -> None:
        """``roots``: the nested buckets' root pages met so far, so that a corrupt header
        naming a bucket that holds it is an error, not an endless recursion."""
        tx = self._tx
        if depth > MAX_DEPTH:
            raise self._too_deep()
        if not node.dirty and node.pgid:
            tx._free(node.pgid, node.span)
        if not node.leaf:
            for child in node.vals:
                child = tx._load(child) if type(child) is int else child
                self._free_subtree(child, opened, depth + 1, roots)
            return
        for k, v in zip(node.keys, node.vals, strict=True):
            if type(v) is OverflowRef:
                self._drop_value(v)
            elif type(v) is BucketHeader and k not in opened:
                self._free_header(v, roots)

    def _free_header(self, header: BucketHeader, roots: set[int]) -> None:
        tx = self._tx
        if header.root:
            if header.root in roots or header.root == self._root:
                raise self._too_deep()
            roots.add(header.root)
            self._free_subtree(tx._load(header.root), {}, 0, roots)
        else:
            keys, vals = header.inline_entries(tx._db.path)
            self._free_subtree(Node(True, keys, vals), {}, 0, roots)

    def _too_deep(self, write: bool = False) -> CorruptionError:
        """The error for a descent past MAX_DEPTH levels: the file's branches (or nested
        bucket headers) form a cycle. ``write``: copies made on the way down hold the cycle,
        so the transaction may only roll back."""
        db = self._tx._db
        exc = CorruptionError(
            f"the tree of the bucket rooted at page {self._root} is deeper than any can be "
            "(its pages form a cycle)",
            db.path,
            self._root * db.page_size,
        )
        if write:
            self._tx._break(exc)
        return exc

    # -- shrink ----------------------------------------------------------------------------

    def _relocate(self, cut: int, budget: ShrinkBudget) -> None:
        """Copy-on-write every node and overflow value of this bucket, and of the buckets
        nested in it, that lies on page ``cut`` or past it, with the nodes above them.

        Spill then gives them new pages, which shrink()'s commits take lowest first: the live
        pages leave the tail of the file, and the next commit can cut it off. Reads the whole
        tree (a nested bucket's too) to find them. What does not fit in ``budget`` waits for
        the next shrink round."""
        tx = self._tx
        page_size = tx._db.page_size
        freelist = tx._db._freelist
        load = tx._load
        moves: list[tuple[int, ...]] = []  # index paths from the root to the nodes to copy
        values: list[tuple[tuple[int, ...], int, OverflowRef]] = []  # leaf path, index, value
        nested: list[bytes] = []

        def walk(node: Node, path: tuple[int, ...]) -> None:
            if len(path) > MAX_DEPTH:
                raise self._too_deep()
            if not node.leaf:
                for i, child in enumerate(node.vals):
                    walk(load(child) if type(child) is int else child, (*path, i))
            else:
                for i, v in enumerate(node.vals):
                    if type(v) is OverflowRef and v.pgid + v.span(page_size) > cut:
                        values.append((path, i, v))
                    elif type(v) is BucketHeader and v.root:
                        nested.append(node.keys[i])
            if not node.dirty and node.pgid + node.span > cut:
                moves.append(path)

        if self._root or self._node is not None:
            walk(self._root_node(), ())
        for name in nested:
            # A nested bucket that changes has its header rewritten in a leaf of this tree:
            # the path to that leaf is paid for first, and refunded if nothing changed.
            before = (budget.pages, budget.runs)
            reserved = freelist.reserved_runs()
            if not self._charge(self._path_to(name), None, budget):
                break
            child = self.bucket(name)
            was_dirty = child._dirty
            child._relocate(cut, budget)
            if child._dirty == was_dirty:
                budget.pages, budget.runs = before
                # With the free runs its charges set aside: kept until the commit, they were
                # pages no copy could take, and spill grew the file past them.
                freelist.release_reserved(keep=reserved)
        for path in moves:
            if not self._charge(path, None, budget):
                return
            self._node_for_write(self._writable_root(), path)
        for path, i, ref in values:
            if not self._charge(path, ref, budget):
                return
            leaf = self._node_for_write(self._writable_root(), path)
            # Back to bytes: spill writes them to a new overflow run (lowest pages first).
            leaf.vals[i] = tx._read_overflow(ref)
            self._drop_value(ref)

    def _path_to(self, key: bytes) -> tuple[int, ...]:
        """Index path from the root to the leaf that holds ``key``."""
        node, path = self._root_node(), []
        while not node.leaf:
            if len(path) == MAX_DEPTH:
                raise self._too_deep()
            i = route(node.keys, key)
            path.append(i)
            child = node.vals[i]
            node = self._tx._load(child) if type(child) is int else child
        return tuple(path)

    def _charge(self, path: tuple[int, ...], value: OverflowRef | None, budget) -> bool:
        """Takes from ``budget`` what copying the nodes on ``path`` not dirty yet (and
        ``value``) needs; False, taking nothing, if it cannot pay. Nodes and values of
        several pages (runs) move only where the free list has room for them below: elsewhere
        the copy would not move down, or would grow the file."""
        tx = self._tx
        node = self._root_node()
        clean = [] if node.dirty else [node]
        for i in path:
            child = node.vals[i]
            node = tx._load(child) if type(child) is int else child
            if not node.dirty:
                clean.append(node)
        runs = [(n.span, n.pgid) for n in clean if n.span > 1]
        pages = sum(n.span for n in clean)
        if value is not None:
            span = value.span(tx._db.page_size)
            runs.append((span, value.pgid))
            pages += span
        if pages > budget.pages or (runs and not budget.runs):
            return False
        # One free run as long as all of them together, below them all: then each finds a
        # place below its old one, whatever the order they are allocated in.
        if runs and not tx._db._freelist.reserve_run_below(
            sum(span for span, _ in runs), min(pgid for _, pgid in runs)
        ):
            return False
        budget.pages -= pages
        budget.runs -= bool(runs)
        return True

    def _writable_root(self) -> Node:
        """This bucket's root, made dirty (and the bucket marked changed)."""
        self._touch()
        root = self._root_node()
        return root if root.dirty else self._dirty_root(root)

    def _node_for_write(self, root: Node, path: tuple[int, ...]) -> Node:
        """The node at index ``path`` below the dirty ``root``, every node on the way dirty."""
        node = root
        for i in path:
            node = child_for_write(self._tx, node, i)
        return node

    # -- commit ----------------------------------------------------------------------------

    def _spill(self) -> BucketHeader:
        """Write this bucket's changes (nested ones first); returns its new header."""
        tx = self._tx
        for name, child in self._children.items():
            if child._dirty:
                header = child._spill()
                _path, leaf = self._leaf_for_write(name)
                i = bisect_left(leaf.keys, name)
                old = leaf.vals[i]
                leaf.vals[i] = header
                # Headers of buckets with a root page have one size; an inline bucket's may
                # have shrunk. (Merging without need would make shrink() copy pages it did
                # not plan for.)
                if not (old.root and header.root):
                    self._unbalanced = True
        node = self._node
        if node is not None and node.dirty:
            if self._unbalanced:
                node = rebalance(tx, node)
                self._unbalanced = False
            if self._parent is not None:
                header = inline_header(node, self._count, tx._db.page_size)
                if header is not None:
                    self._root = 0
                    self._header = header
                    return header
            self._root = spill_root(tx, node, self._fill_factor)
            self._node = None
        if self._root == 0:
            return self._header
        return BucketHeader.of_page(self._root, self._count)
