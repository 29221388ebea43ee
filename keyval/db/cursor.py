"""Cursors: positioned walks over a bucket's plain keys, both ways.

A cursor keeps the path from the bucket's root to its current leaf entry. If the bucket is
written to while a cursor is open (in the same write transaction), the next move re-seeks from
the last key the cursor returned, so moves are always relative to the bucket as it is now.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .node import MAX_DEPTH, Node, route
from .page import BucketHeader, OverflowRef

if TYPE_CHECKING:
    from .bucket import Bucket

_START = 0  # before the first key: next() gives the first
_AT = 1  # on the key last returned
_END = 2  # after the last key: prev() gives the last


class Cursor:
    """Walks a bucket's plain keys (nested buckets are skipped) in order.

    ``first()``, ``last()``, ``seek(key)`` (the first key ``>= key``), ``next()`` and ``prev()``
    return ``(key, value)`` or None when there is no such entry. After None from ``next()`` the
    cursor is past the end (``prev()`` returns the last entry); after None from ``prev()`` it is
    before the start. A fresh cursor is before the start. Valid while its transaction is open
    (else TxClosedError).
    """

    __slots__ = ("_bucket", "_key", "_mods", "_stack", "_state")

    def __init__(self, bucket: Bucket):
        self._bucket = bucket
        self._stack: list[list] = []
        self._state = _START
        self._key: bytes | None = None
        self._mods = -1

    # -- positioning -----------------------------------------------------------------------

    def _check(self) -> None:
        self._bucket._check_read()

    def _child(self, node: Node, i: int) -> Node:
        child = node.vals[i]
        return self._bucket._tx._load(child) if type(child) is int else child

    def _descend(self, node: Node, first: bool) -> None:
        """Push the path from ``node`` to its first (or last) leaf; leaf index at its start
        (or one past its end)."""
        stack = self._stack
        while not node.leaf:
            if len(stack) == MAX_DEPTH:
                raise self._bucket._too_deep()
            i = 0 if first else len(node.vals) - 1
            stack.append([node, i])
            node = self._child(node, i)
        stack.append([node, 0 if first else len(node.keys)])

    def _reset(self) -> Node:
        self._stack = []
        self._mods = self._bucket._mods
        return self._bucket._root_node()

    def _seek_raw(self, key: bytes) -> None:
        """Stack at the first entry ``>= key`` (possibly one past a leaf's end)."""
        node = self._reset()
        stack = self._stack
        while not node.leaf:
            if len(stack) == MAX_DEPTH:
                raise self._bucket._too_deep()
            i = route(node.keys, key)
            stack.append([node, i])
            node = self._child(node, i)
        stack.append([node, bisect_left(node.keys, key)])

    def _next_leaf(self) -> bool:
        """Move the stack to the start of the next leaf; False at the end of the tree."""
        stack = self._stack
        # Nearly always the next child of the same parent: step to it without unwinding and
        # rebuilding the path (a scan's cost per leaf).
        if len(stack) > 1:
            frame = stack[-2]
            j = frame[1] + 1
            if j < len(frame[0].vals):
                child = self._child(frame[0], j)
                if child.leaf:
                    frame[1] = j
                    stack[-1] = [child, 0]
                    return True
        stack.pop()
        while stack:
            frame = stack[-1]
            frame[1] += 1
            if frame[1] < len(frame[0].vals):
                self._descend(self._child(frame[0], frame[1]), True)
                return True
            stack.pop()
        return False

    def _prev_leaf(self) -> bool:
        """Move the stack to one past the end of the previous leaf; False at the start."""
        stack = self._stack
        stack.pop()
        while stack:
            frame = stack[-1]
            frame[1] -= 1
            if frame[1] >= 0:
                self._descend(self._child(frame[0], frame[1]), False)
                return True
            stack.pop()
        return False

    def _forward(self) -> bool:
        """From the stack's position, settle on the first plain entry at or after it."""
        stack = self._stack
        while True:
            frame = stack[-1]
            node, i = frame
            n = len(node.keys)
            while i < n and type(node.vals[i]) is BucketHeader:
                i += 1
            if i < n:
                frame[1] = i
                return True
            if not self._next_leaf():
                return False

    def _backward(self) -> bool:
        """From the stack's position, settle on the last plain entry before it."""
        stack = self._stack
        while True:
            frame = stack[-1]
            node, i = frame
            i -= 1
            while i >= 0 and type(node.vals[i]) is BucketHeader:
                i -= 1
            if i >= 0:
                frame[1] = i
                return True
            if not self._prev_leaf():
                return False

    def _entry(self, found: bool, past: int) -> tuple[bytes, bytes] | None:
        if not found:
            self._state = past
            self._stack = []
            return None
        node, i = self._stack[-1]
        self._state = _AT
        key = node.keys[i]
        self._key = key
        v = node.vals[i]
        if type(v) is OverflowRef:
            v = self._bucket._tx._read_overflow(v)
        return key, v

    def _resync(self) -> None:
        """After a write to the bucket, stand on the last key again (or just after it)."""
        self._seek_raw(self._key)

    # -- the cursor API --------------------------------------------------------------------

    def first(self) -> tuple[bytes, bytes] | None:
        self._check()
        self._descend(self._reset(), True)
        return self._entry(self._forward(), _END)

    def last(self) -> tuple[bytes, bytes] | None:
        self._check()
        self._descend(self._reset(), False)
        return self._entry(self._backward(), _START)

    def seek(self, key: bytes) -> tuple[bytes, bytes] | None:
        self._check()
        if not isinstance(key, bytes):
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        self._seek_raw(key)
        return self._entry(self._forward(), _END)

    def next(self) -> tuple[bytes, bytes] | None:
        self._check()
        if self._state == _START:
            return self.first()
        if self._state == _END:
            return None
        if self._mods != self._bucket._mods:
            self._resync()
            node, i = self._stack[-1]
            if i < len(node.keys) and node.keys[i] == self._key:
                self._stack[-1][1] = i + 1
        else:
            self._stack[-1][1] += 1
        return self._entry(self._forward(), _END)

    def prev(self) -> tuple[bytes, bytes] | None:
        self._check()
        if self._state == _END:
            return self.last()
        if self._state == _START:
            return None
        if self._mods != self._bucket._mods:
            self._resync()
        return self._entry(self._backward(), _START)

    __next__ = next

    # -- bulk walks used by Bucket.items() / buckets() -------------------------------------

    def _iter_forward(self, start: bytes | None, stop: bytes | None) -> Iterator:
        bucket = self._bucket
        read_overflow = bucket._tx._read_overflow
        if start is None:
            self._descend(self._reset(), True)
        else:
            self._seek_raw(start)
        while True:
            bucket._check_read()
            frame = self._stack[-1]
            node, i = frame
            keys = node.keys
            j = len(keys)
            done = False
            if stop is not None and j and keys[-1] >= stop:
                j = bisect_left(keys, stop, i)
                done = True
            if i < j:
                # Slices are copies: a write between two yields cannot shift what is yielded.
                ks = keys[i:j]
                vs = node.vals[i:j]
                last = ks[-1]
                if node.plain:
                    yield from zip(ks, vs, strict=True)
                else:
                    for k, v in zip(ks, vs, strict=True):
                        t = type(v)
                        if t is bytes:
                            yield k, v
                        elif t is OverflowRef:
                            yield k, read_overflow(v)
                if done:
                    return
                if self._mods != bucket._mods:
                    self._seek_raw(last)
                    node, i = self._stack[-1]
                    if i < len(node.keys) and node.keys[i] == last:
                        self._stack[-1][1] = i + 1
                    continue
            elif done:
                return
            if not self._next_leaf():
                return

    def _iter_backward(self, start: bytes | None, stop: bytes | None) -> Iterator:
        bucket = self._bucket
        read_overflow = bucket._tx._read_overflow
        if stop is None:
            self._descend(self._reset(), False)
        else:
            self._seek_raw(stop)
        while True:
            bucket._check_read()
            frame = self._stack[-1]
            node, j = frame
            keys = node.keys
            i = 0
            done = False
            if start is not None and keys and keys[0] < start:
                i = bisect_left(keys, start, 0, j)
                done = True
            if i < j:
                ks = keys[i:j][::-1]  # slices of a list or (clean node) a tuple
                vs = node.vals[i:j][::-1]
                last = ks[-1]
                for k, v in zip(ks, vs, strict=True):
                    t = type(v)
                    if t is bytes:
                        yield k, v
                    elif t is OverflowRef:
                        yield k, read_overflow(v)
                if done:
                    return
                if self._mods != bucket._mods:
                    self._seek_raw(last)
                    continue
            elif done:
                return
            if not self._prev_leaf():
                return

    def _iter_raw(self) -> Iterator[tuple[bytes, Any]]:
        """Every entry with its stored value (bytes, OverflowRef or BucketHeader); for a read
        transaction, where nothing changes under the walk."""
        self._descend(self._reset(), True)
        while True:
            self._bucket._check_read()
            node, i = self._stack[-1]
            yield from zip(node.keys[i:], node.vals[i:], strict=True)
            if not self._next_leaf():
                return

    def _iter_buckets(self) -> Iterator[bytes]:
        bucket = self._bucket
        self._descend(self._reset(), True)
        while True:
            bucket._check_read()
            node, i = self._stack[-1]
            names = [
                k
                for k, v in zip(node.keys[i:], node.vals[i:], strict=True)
                if type(v) is BucketHeader
            ]
            last = node.keys[-1] if node.keys else None
            yield from names
            if last is not None and self._mods != bucket._mods:
                self._seek_raw(last)
                node, i = self._stack[-1]
                if i < len(node.keys) and node.keys[i] == last:
                    self._stack[-1][1] = i + 1
                continue
            if not self._next_leaf():
                return
