"""In-memory B+tree nodes: decoding, and the write transaction's split, rebalance and spill.

A node read from disk is *clean*: immutable, shared by every transaction through the page cache
(pages never change once written, so a decoded node is valid until its page id is reused). A
write transaction that changes a node works on a *dirty* private copy; the copy's old page is
freed at once (the page stays readable for older readers until the freelist releases it).

Dirty nodes may grow past a page while the transaction runs; ``split_in_memory`` keeps them
bounded by entry count so huge transactions stay O(log n) per put. At commit, ``rebalance``
merges underfull nodes and ``spill`` splits by size into pages, allocates them and encodes them.

A branch's ``vals`` are its children: page ids (ints) or, in a dirty branch, dirty ``Node``s.
A leaf's ``vals`` are bytes, :class:`OverflowRef` or :class:`BucketHeader`.

A clean node holds its entries in tuples, a dirty one in lists. Why: the page cache keeps tens of
thousands of clean nodes, and lists are always tracked by the cyclic garbage collector, which
then walked every key of every cached node on each full collection (a 1,000-put transaction
over 1M keys spent more time in the collector than in its puts). With the extension, the
tuples and the dirty lists are untracked from birth (``clean_tuple``, ``dirty_list``:
csrc/db/pynode.c says why that is safe), and Node's fields live in a C base class that the
collector does not know (``CNode``, which the C put path reads directly), so the collector
never walks the tree at all.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from operator import add
from typing import TYPE_CHECKING

from keyval.errors import CorruptionError

from .encode import AVAILABLE as _C_ENCODE
from .encode import branch_parts, encode_branch, encode_leaf, leaf_parts
from .encode import branch_size as _branch_size
from .encode import leaf_size as _leaf_size
from .page import (
    BRANCH_ELEMENT,
    HEADER_SIZE,
    LEAF_ELEMENT,
    TYPE_BRANCH,
    TYPE_LEAF,
    BucketHeader,
    OverflowRef,
    build_overflow,
    build_page,
    decode_branch_body,
    decode_leaf_body,
    encode_branch_body,
    encode_leaf_body,
    leaf_value_size,
    max_inline_value,
    span_for,
)
from .pagemap import PY_EXPORTS

if TYPE_CHECKING:
    from .tx import Tx

# A new list of an iterable's items for a dirty node, untracked by the garbage collector
# (csrc/db/pynode.c says why that is safe: a dirty node's lists are never part of a cycle).
dirty_list = PY_EXPORTS.get("dirty_list", list)
# The same for a clean node's tuples (csrc/db/pynode.c).
clean_tuple = PY_EXPORTS.get("clean_tuple", tuple)


def _seal_entries(node: Node) -> None:
    node.keys = tuple(node.keys)
    node.vals = tuple(node.vals)


# A dirty node's lists made its clean tuples; in C the entries move out of lists nothing else
# holds, instead of being copied (csrc/db/pynode.h says what that spares).
seal_entries = PY_EXPORTS.get("seal_entries", _seal_entries)
# Node's fields in C (csrc/db/pynode.h): no collector tracking, and direct reads by C puts.
_NodeBase = PY_EXPORTS.get("CNode", object)
# A leaf body whose values are all in the leaf, in C (None: the Python codec decodes it).
_decode_plain_leaf = PY_EXPORTS.get("decode_plain_leaf")

# spill's sealing of a branch's dirty plain leaves in C (csrc/db/pyspill.c), or None.
_seal_leaves = PY_EXPORTS.get("seal_leaves")
# ... and of a dirty branch that fits one page, the common case (~500 of a 1,000-put commit).
_seal_branch = PY_EXPORTS.get("seal_branch")

# _pieces of a plain leaf in C (csrc/db/pysplit.c), or None without the extension.
_leaf_cuts = PY_EXPORTS.get("leaf_cuts")

# A dirty node with more entries than this is halved at once during the transaction, so an
# insert never moves more than a few KiB of list (a bulk load into one node would be O(n^2)).
# 512, not 1,024: a random 1M-key load's puts went 5% faster (half the memmove per insert;
# the splits it adds are a few thousand); an ascending load's did not change.
SPLIT_ENTRIES = 512

# A piece made by a split keeps at least this many entries when it can.
MIN_ENTRIES = 2

# More levels than any tree a file can hold (csrc/db/kvdb.h's KVDB_MAX_DEPTH): a descent that
# goes deeper is in a cycle of pages, which only a corrupt file (with valid checksums) makes.
MAX_DEPTH = 64

# Sealed runs a commit holds before it writes them and starts their writeback
# (Tx._write_early): EARLY_WRITE_FIRST at first, so that the disk works on them while the rest
# is sealed (a 1,000-put commit's ~1,500 pages then wait less at its fdatasync), then half of
# what it wrote so far, since each batch costs a sort, an eviction pass and writes that no
# longer coalesce across it; at most EARLY_WRITE_RUNS (8 MiB of 4 KiB pages), which bounds
# the memory a large commit holds.
EARLY_WRITE_FIRST = 128
EARLY_WRITE_RUNS = 2048


class Node(_NodeBase):
    # The fields are CNode's when the extension is there; the same names as slots otherwise.
    __slots__ = (
        ()
        if _NodeBase is not object
        else ("dirty", "dirty_kids", "keys", "leaf", "packed", "pgid", "plain", "span", "vals")
    )

    if _NodeBase is object:  # without the extension: CNode's __init__ does this in C

        def __init__(
            self,
            leaf: bool,
            keys: list[bytes],
            vals: list,
            pgid: int = 0,
            span: int = 1,
            dirty: bool = False,
            plain: bool = False,
        ):
            self.leaf = leaf
            self.keys = keys
            self.vals = vals
            self.pgid = pgid
            self.span = span
            self.dirty = dirty
            # A leaf whose values are all bytes short enough to stay in the leaf: scans zip it
            # directly, and sizes and encodings take C-speed paths. Writes keep it up to date.
            self.plain = plain
            # Left whole by an append at its end (see split_in_memory): spilled into full pages.
            self.packed = False
            # A dirty branch's indices of the children child_for_write made dirty, while no entry
            # was inserted or removed (None after that, or if unknown): spill then finds them
            # without reading the type of each of the branch's hundreds of children, a cache miss
            # each (a tenth of a 1,000-put commit).
            self.dirty_kids: list[int] | None = None

    def dirty_copy(self) -> Node:
        copy = Node(
            self.leaf, dirty_list(self.keys), dirty_list(self.vals), dirty=True, plain=self.plain
        )
        if not self.leaf:
            copy.dirty_kids = dirty_list(())
        return copy

    @classmethod
    def decode(
        cls, buf: bytes, pgid: int, ptype: int, count: int, span: int, page_size: int, path
    ) -> Node:
        offset = pgid * page_size
        end = span * page_size
        if ptype == TYPE_LEAF:
            if _decode_plain_leaf is not None:
                cut = _decode_plain_leaf(buf, HEADER_SIZE, count, end)
                if cut is not None:
                    return cls(True, cut[0], cut[1], pgid, span, plain=True)
            keys, vals = decode_leaf_body(buf, HEADER_SIZE, count, end, path, offset)
            plain = all(type(v) is bytes for v in vals)
            return cls(True, clean_tuple(keys), clean_tuple(vals), pgid, span, plain=plain)
        keys, children = decode_branch_body(buf, HEADER_SIZE, count, end, path, offset)
        return cls(False, clean_tuple(keys), clean_tuple(children), pgid, span)


def route(keys: list[bytes], key: bytes) -> int:
    """Index of the child of a branch that may hold ``key``."""
    i = bisect_right(keys, key) - 1
    return i if i > 0 else 0


def split_in_memory(node: Node, path: list[tuple[Node, int]], key: bytes) -> Node | None:
    """Split ``node``, into which ``key`` was just inserted, and its ancestors on ``path``
    while they exceed SPLIT_ENTRIES.

    A node that overflowed because an entry was appended at its end (ascending keys: a sorted
    bulk load, a log, time series) keeps everything but that entry and is marked ``packed``:
    nothing will be inserted among its keys again, so spill fills its pages to the brim, as
    B-trees split at the insertion point in that case (LMDB, SQLite). Any other overflow
    halves the node, and spill leaves its pages at the bucket's fill factor, room for the
    inserts around them.

    Returns a new root if the root itself was split, else None.
    """
    at_end = node.keys[-1] == key
    while len(node.keys) > SPLIT_ENTRIES:
        mid = len(node.keys) - 1 if at_end else len(node.keys) // 2
        # untracked lists, as dirty_copy's: a bulk load's whole dirty tree is made here
        right = Node(
            node.leaf,
            dirty_list(node.keys[mid:]),
            dirty_list(node.vals[mid:]),
            dirty=True,
            plain=node.plain,
        )
        del node.keys[mid:]
        del node.vals[mid:]
        node.packed = at_end
        if not path:
            return Node(False, [node.keys[0], right.keys[0]], [node, right], dirty=True)
        parent, i = path.pop()
        parent.keys.insert(i + 1, right.keys[0])
        parent.vals.insert(i + 1, right)
        parent.dirty_kids = None
        at_end = i + 2 == len(parent.keys)
        node = parent
    return None


def node_size(node: Node, max_inline: int) -> int:
    keys = node.keys
    if _leaf_size is not None:  # the same sums in C: a rebalance sizes every changed node
        if not node.leaf:
            return _branch_size(keys)
        if node.plain:
            return _leaf_size(keys, node.vals)
    if node.leaf:
        if node.plain:
            return (
                HEADER_SIZE
                + LEAF_ELEMENT.size * len(keys)
                + sum(map(len, keys))
                + sum(map(len, node.vals))
            )
        return HEADER_SIZE + sum(entry_sizes(node, max_inline))
    return HEADER_SIZE + BRANCH_ELEMENT.size * len(keys) + sum(map(len, keys))


def entry_sizes(node: Node, max_inline: int) -> list[int]:
    if node.leaf:
        elem = LEAF_ELEMENT.size
        if node.plain:
            return [elem + n for n in map(add, map(len, node.keys), map(len, node.vals))]
        return [
            elem + len(k) + leaf_value_size(v, max_inline)
            for k, v in zip(node.keys, node.vals, strict=True)
        ]
    elem = BRANCH_ELEMENT.size
    return [elem + len(k) for k in node.keys]


def child_for_write(tx: Tx, parent: Node, i: int) -> Node:
    # The C put does the same for a child in the page cache (csrc/db/pylookup.c, dirty_child):
    # a change here is a change there.
    child = parent.vals[i]
    if type(child) is int:
        clean = tx._load(child)
        tx._free(child, clean.span)
        child = clean.dirty_copy()
        parent.vals[i] = child
        kids = parent.dirty_kids
        if kids is not None:
            kids.append(i)
    return child


def _underfull(node: Node, threshold: int, max_inline: int) -> bool:
    if not node.leaf and len(node.vals) < 2:
        return True
    return node_size(node, max_inline) < threshold


def _check_siblings(tx: Tx, left: Node, right: Node) -> None:
    """Children of one branch are all leaves or all branches; a corrupt file (a leaf page put
    where a branch was, with a valid checksum) is refused here, before a merge mixes them."""
    if left.leaf != right.leaf:
        db = tx._db
        pgid = right.pgid or left.pgid
        raise CorruptionError(
            f"page {pgid} is a {'leaf' if right.leaf else 'branch'} beside a "
            f"{'leaf' if left.leaf else 'branch'} under one branch",
            db.path,
            pgid * db.page_size,
        )


def _merge(left: Node, right: Node, separator: bytes) -> None:
    """Append ``right``'s entries to ``left``; ``separator`` is right's key in their parent, a
    correct lower bound for right's first child even when right's own first key is stale."""
    left.dirty_kids = None
    if left.leaf:
        left.plain = left.plain and right.plain
        left.keys.extend(right.keys)
    elif right.vals:
        left.keys.append(separator)
        left.keys.extend(right.keys[1:])
    # else: a branch emptied by the deletes below it brings nothing, not even the separator
    # (which, with no child to go with it, made the commit fail: keys outnumbered children).
    left.vals.extend(right.vals)


def rebalance(tx: Tx, root: Node) -> Node:
    """Merge underfull dirty nodes into a sibling, drop empty ones, collapse a one-child root.

    Only dirty nodes can have shrunk, so clean subtrees are never read. Returns the new root.
    """
    page_size = tx._db.page_size
    max_inline = max_inline_value(page_size)
    threshold = page_size // 4
    if not root.leaf:
        _rebalance_children(tx, root, threshold, max_inline)
    while not root.leaf and len(root.vals) == 1:
        root = child_for_write(tx, root, 0)
    if not root.leaf and not root.vals:
        root = Node(True, [], [], dirty=True, plain=True)
    return root


def _rebalance_children(tx: Tx, node: Node, threshold: int, max_inline: int) -> None:
    node.dirty_kids = None  # merges below move and remove children
    vals = node.vals
    # A branch has hundreds of children and usually few are dirty: find those with C-speed
    # scans of a parallel list of types instead of a Python loop over every child.
    types = list(map(type, vals))
    at = -1
    for _ in range(types.count(Node)):
        at = types.index(Node, at + 1)
        if not vals[at].leaf:
            _rebalance_children(tx, vals[at], threshold, max_inline)
    keys = node.keys
    i = 0
    while True:
        try:
            i = types.index(Node, i)
        except ValueError:
            break
        child = vals[i]
        if not _underfull(child, threshold, max_inline):
            i += 1
            continue
        if not child.vals:
            del keys[i], vals[i], types[i]
            continue
        if len(vals) == 1:
            break  # nothing to merge with here; the parent merges this node as a whole
        if i + 1 < len(vals):
            right = child_for_write(tx, node, i + 1)
            _check_siblings(tx, child, right)
            _merge(child, right, keys[i + 1])
            del keys[i + 1], vals[i + 1], types[i + 1]
        else:
            left = child_for_write(tx, node, i - 1)
            types[i - 1] = Node
            _check_siblings(tx, left, child)
            _merge(left, child, keys[i])
            del keys[i], vals[i], types[i]
            i -= 1
        # the merged node is re-examined: it may still be underfull, or too big (spill splits)


def _pieces(
    node: Node, page_size: int, fill: float, max_inline: int, size: int
) -> list[tuple[int, int]]:
    """Index ranges of the pages ``node`` (``size`` bytes encoded) is cut into."""
    if _leaf_cuts is not None and node.leaf and node.plain:
        return _leaf_cuts(node.keys, node.vals, page_size, int(page_size * fill), MIN_ENTRIES)
    return _py_pieces(node, page_size, fill, max_inline, size)


def _py_pieces(
    node: Node, page_size: int, fill: float, max_inline: int, size: int
) -> list[tuple[int, int]]:
    """:func:`_pieces` in Python: every node without the extension, and the nodes that are
    not plain leaves; the reference the C cuts are tested against."""
    n = len(node.keys)
    if n <= MIN_ENTRIES or size <= page_size:
        return [(0, n)]
    sizes = entry_sizes(node, max_inline)
    threshold = int(page_size * fill)
    # Greedy: a piece starting at entry a ends before the first entry i >= a + MIN_ENTRIES that
    # would take it past the threshold. With cumulative sizes that is one bisect per piece
    # instead of a Python step per entry (a bulk load spills nodes of hundreds of entries).
    cum = list(itertools.accumulate(sizes, initial=0))
    cuts = [0]
    a = 0
    while True:
        i = bisect_right(cum, threshold - HEADER_SIZE + cum[a]) - 1
        if i < a + MIN_ENTRIES:
            i = a + MIN_ENTRIES
        if i >= n:
            break
        cuts.append(i)
        a = i
    cuts.append(n)
    ranges = list(itertools.pairwise(cuts))
    if len(ranges) > 1:
        # A small last piece would be underfull at once: share the last two evenly.
        a, b = ranges[-2][0], ranges[-1][1]
        last = HEADER_SIZE + sum(sizes[ranges[-1][0] : b])
        if last < page_size // 4:
            half = (HEADER_SIZE + sum(sizes[a:b])) / 2
            acc = HEADER_SIZE
            mid = a
            while mid < b - 1 and (acc + sizes[mid] <= half or mid - a < 1):
                acc += sizes[mid]
                mid += 1
            ranges[-2:] = [(a, mid), (mid, b)] if a < mid < b else [(a, b)]
    return ranges


def spill(tx: Tx, node: Node, fill: float) -> list[tuple[bytes, int]]:
    """Write a dirty subtree: children first, then ``node`` cut into pages.

    Returns (first key, page id) of each page ``node`` became, for its parent.
    """
    db = tx._db
    page_size = db.page_size
    max_inline = max_inline_value(page_size)
    if node.leaf:
        if not node.plain:
            vals = node.vals
            for i, v in enumerate(vals):
                if type(v) is bytes and len(v) > max_inline:
                    pgid = tx._allocate(span_for(HEADER_SIZE + len(v), page_size))
                    span, buffers = build_overflow(pgid, v, page_size)
                    tx._write(pgid, span, buffers, None)
                    vals[i] = OverflowRef(pgid, len(v))
    else:
        # Find the dirty children with C-speed scans: a branch has hundreds of children and
        # usually few of them changed.
        keys, children = node.keys, node.vals
        dirty = node.dirty_kids
        if dirty is not None:
            dirty.sort()
        else:
            types = list(map(type, children))
            dirty = []
            at = -1
            for _ in range(types.count(Node)):
                at = types.index(Node, at + 1)
                dirty.append(at)
        # Back to front, so splicing keeps earlier indices valid. The dirty plain leaves are
        # sealed in C, as this loop would (a bulk load seals tens of thousands); C stops at
        # each other child, which the loop spills before handing the rest back.
        threshold = int(page_size * fill)
        end = len(dirty)
        while end:
            if _seal_leaves is not None:
                end = _seal_leaves(
                    keys,
                    children,
                    dirty,
                    end,
                    page_size,
                    threshold,
                    MIN_ENTRIES,
                    tx._allocate,
                    tx._runs,
                )
                if not end:
                    break
            end -= 1
            i = dirty[end]
            pieces = spill(tx, children[i], fill)
            if len(pieces) == 1:
                keys[i], children[i] = pieces[0]
            else:
                keys[i : i + 1] = [k for k, _ in pieces]
                children[i : i + 1] = [p for _, p in pieces]
        if len(tx._runs) >= min(EARLY_WRITE_RUNS, max(EARLY_WRITE_FIRST, len(tx._written) // 2)):
            tx._write_early()
        if _seal_branch is not None:
            # It moves the entries only out of lists nothing else refers to: drop this frame's.
            keys = children = dirty = None
            sealed = _seal_branch(node, page_size, tx._allocate, tx._runs)
            if sealed is not None:
                return [sealed]
    n = len(node.keys)
    # Entries take at least 8 (leaf) or 11 (branch) bytes: a node sure not to fit one page is
    # cut into pieces without packing it whole first.
    if n > MIN_ENTRIES and HEADER_SIZE + 8 * n > page_size:
        parts = None
        size = node_size(node, max_inline)
    else:
        parts = _c_parts(node, node.keys, node.vals)
        size = node_size(node, max_inline) if parts is None else parts[2]
    if n <= MIN_ENTRIES or size <= page_size:
        # The common case (a changed node that still fits its page): no cutting, and the dirty
        # node itself becomes the clean cached one, since nothing changes it after its spill.
        sealed = _seal(tx, node, node.keys, node.vals, page_size, node, parts)
        # seal_entries moves the entries into the node's tuples only from lists nothing else
        # refers to: this frame's references go first (parts holds the lists too).
        keys = vals = children = parts = None
        seal_entries(node)
        return [sealed]
    out = []
    for a, b in _pieces(node, page_size, 1.0 if node.packed else fill, max_inline, size):
        keys = node.keys[a:b]
        vals = node.vals[a:b]
        out.append(_seal(tx, node, keys, vals, page_size, None, _c_parts(node, keys, vals)))
    return out


def _c_parts(node: Node, keys: list, vals: list) -> tuple | None:
    """What the C encoder needs for these entries of ``node`` (None: use the Python codec,
    for leaves with overflow references or nested buckets, or without the extension)."""
    if not _C_ENCODE:
        return None
    if node.leaf:
        return leaf_parts(keys, vals) if node.plain else None
    return branch_parts(keys)


def _seal(
    tx: Tx,
    node: Node,
    keys: list,
    vals: list,
    page_size: int,
    reuse: Node | None,
    parts: tuple | None,
) -> tuple[bytes, int]:
    """Encode ``keys``/``vals`` of ``node`` as one page run, allocate it and queue its write.

    ``reuse``: the node to cache for the new page (it must hold exactly keys and vals, and
    the caller then makes them tuples with :func:`seal_entries`), else a new one is made.
    ``parts``: :func:`_c_parts` of the entries. Returns (first key, page id) for the parent.
    """
    leaf = node.leaf
    plain = leaf and node.plain
    if parts is not None:
        span = span_for(parts[2], page_size)
        pgid = tx._allocate(span)
        if leaf:
            page = encode_leaf(pgid, parts, page_size)
        else:
            page = encode_branch(pgid, parts, vals, page_size)
    else:
        if leaf:
            body = encode_leaf_body(keys, vals, plain)
            ptype = TYPE_LEAF
            if not plain:
                plain = all(type(v) is bytes for v in vals)
        else:
            body = encode_branch_body(keys, vals)
            ptype = TYPE_BRANCH
        span = span_for(HEADER_SIZE + len(body), page_size)
        pgid = tx._allocate(span)
        page = build_page(pgid, ptype, len(keys), body, page_size)
    # Clean from here on: entries in tuples (see the module docstring), reuse's once the caller
    # has sealed them.
    if reuse is None:
        reuse = Node(leaf, clean_tuple(keys), clean_tuple(vals), pgid, span, plain=plain)
    else:
        reuse.dirty_kids = None
        reuse.pgid = pgid
        reuse.span = span
        reuse.dirty = False
        reuse.plain = plain
    tx._write(pgid, span, [page], reuse)
    return (keys[0] if keys else b"", pgid)


def inline_header(node: Node, count: int, page_size: int) -> BucketHeader | None:
    """The inline form of a bucket whose whole tree is ``node``, if it is small enough."""
    if not node.leaf:
        return None
    max_inline = max_inline_value(page_size)
    for v in node.vals:
        if type(v) is not bytes or len(v) > max_inline:
            return None
    if node_size(node, max_inline) > page_size // 4:
        return None
    return BucketHeader.inline(count, node.keys, node.vals)


def spill_root(tx: Tx, root: Node, fill: float) -> int:
    """Spill a whole dirty tree; returns the page id of its new root."""
    pieces = spill(tx, root, fill)
    while len(pieces) > 1:
        root = Node(False, [k for k, _ in pieces], [p for _, p in pieces], dirty=True)
        pieces = spill(tx, root, fill)
    return pieces[0][1]
