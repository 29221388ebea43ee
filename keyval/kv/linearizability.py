"""A linearizability checker for key/value histories.

A *history* is what clients saw: for each operation, when it was called, when (if ever) it
returned, and what it returned. The history is *linearizable* if every operation can be given a
single point in time between its call and its return at which it took effect, such that the
operations, applied one at a time in the order of those points to a sequential key/value map,
produce exactly the outputs the clients observed. An operation that never returned (``ret`` is
``None``) may have taken effect at any point after its call, or not at all.

The algorithm is the Wing-Gong search as improved by Lowe (the design the porcupine checker
uses), here written from scratch:

1. **Partition by key.** Linearizability is compositional: a history is linearizable iff its
   restriction to each object is, and each key is an independent register, so every key is
   checked on its own, which turns one exponential search into many small ones.
2. **Entry list.** Each operation becomes a *call* entry and a *return* entry, sorted by time.
   At equal times calls sort before returns, so touching operations count as concurrent: the
   checker may then miss a real-time order the clock could not resolve, but never reports a
   legal history as illegal.
3. **Depth-first search.** Walking the list from its head, a call entry whose operation the
   model accepts in the current state is *linearized*: its call and return entries are unlinked
   (dancing-links style) and the walk restarts at the head. Reaching a return entry means that
   operation had to take effect by now but could not: undo the last linearized operation and
   try the next candidate after it.
4. **Memoisation (Lowe).** A cache of (set of linearized operations, model state) pairs already
   explored; reaching one again cannot lead anywhere new, so that branch is cut. The set is a
   Python ``int`` used as a bitset.
5. **Pending operations.** An operation that never returned gets a return entry after every
   real one, so it may be linearized anywhere after its call. The search succeeds as soon as
   every *completed* operation is linearized: the pending ones left over either took effect
   later (which nothing observed) or never did — the two are indistinguishable. A pending
   ``get`` constrains nothing (no output was seen), so it is dropped before the search.

The search is exponential in the worst case (many mutually concurrent operations whose order
matters); :func:`check` therefore takes a time budget and answers ``ok=None`` ("unknown") when it
runs out, never a guess.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

GET = "get"
PUT = "put"
APPEND = "append"
DELETE = "delete"
KINDS = frozenset({GET, PUT, APPEND, DELETE})
# A completed delete's output: whether the key was there to delete (None: not observed).
FOUND, ABSENT = b"found", b"absent"

# How many search steps run between two looks at the clock: a clock read costs about as much as
# a step, so checking every step would halve the speed, while 1,000 steps take well under 1 ms.
_CLOCK_EVERY = 1024


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as the client saw it.

    ``call`` and ``ret`` are times on one monotonic clock (any unit, e.g. ns); ``ret`` is
    ``None`` (or ``math.inf``) when the operation never returned, so it may or may not have taken
    effect. ``value`` is the input of put/append (``None`` for get/delete); ``output`` is what a
    completed get returned (``None`` = key absent), or whether a completed delete found the key
    (``FOUND`` or ``ABSENT``; ``None``: not checked), and is ignored for put and append.
    """

    client: int
    call: float
    ret: float | None
    kind: str
    key: bytes
    value: bytes | None = None
    output: bytes | None = None

    @property
    def pending(self) -> bool:
        return self.ret is None or self.ret == math.inf

    def __str__(self) -> str:
        ret = "..." if self.pending else f"{self.ret}"
        if self.kind == GET:
            what = f"get({self.key!r}) -> {self.output!r}"
        elif self.kind == DELETE:
            what = f"delete({self.key!r})" + ("" if self.output is None else f" -> {self.output!r}")
        else:
            what = f"{self.kind}({self.key!r}, {self.value!r})"
        return f"client {self.client} [{self.call}, {ret}] {what}"


@dataclass(slots=True)
class Result:
    """The verdict of :func:`check`.

    ``ok`` is ``True`` (linearizable), ``False`` (not), or ``None`` (the time budget ran out before
    every key was decided and none was found illegal). On ``False``, ``key`` is the first key found
    illegal, ``prefix`` the longest sequence of its operations that linearizes (in linearization
    order), ``blocked`` an operation that cannot be placed after that prefix, and ``explanation``
    says so in one line.
    """

    ok: bool | None
    key: bytes | None = None
    explanation: str = ""
    prefix: list[Operation] = field(default_factory=list)
    blocked: Operation | None = None
    unknown_keys: list[bytes] = field(default_factory=list)
    elapsed: float = 0.0


def step(state: bytes | None, op: Operation) -> tuple[bool, bytes | None]:
    """The sequential model of one key: apply ``op`` to ``state`` (``None`` = absent).

    Returns (whether the op's observed output is possible in ``state``, the state after it).
    """
    kind = op.kind
    if kind == GET:
        return op.output == state, state
    if kind == PUT:
        return True, op.value
    if kind == APPEND:
        return True, op.value if state is None else state + op.value
    found = op.output  # DELETE
    return found is None or (found == FOUND) == (state is not None), None


class _Budget:
    """A shared deadline, read every ``_CLOCK_EVERY`` steps."""

    __slots__ = ("deadline",)

    def __init__(self, timeout: float | None):
        self.deadline = math.inf if timeout is None else time.monotonic() + timeout

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


def _check_key(
    ops: list[Operation], initial: bytes | None, budget: _Budget
) -> tuple[bool | None, list[int], int | None, bytes | None]:
    """Search one key's operations. Returns (verdict, longest linearized prefix as op indices,
    index of the op blocked after it, the state after that prefix)."""
    n = len(ops)
    # Entries 0..n-1 are calls, n..2n-1 returns (return of op i is n + i); -1 is the list head.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((math.inf if op.pending else op.ret, 1, n + i))
    events.sort()
    order = [e for _, _, e in events]
    head = 2 * n  # the sentinel's slot
    nxt = [0] * (2 * n + 1)
    prv = [0] * (2 * n + 1)
    prev = head
    for e in order:
        nxt[prev] = e
        prv[e] = prev
        prev = e
    nxt[prev] = -1
    pending = [op.pending for op in ops]
    remaining = pending.count(False)  # completed ops not yet linearized

    state = initial
    linearized = 0
    cache: set[tuple[int, bytes | None]] = set()
    stack: list[tuple[int, bytes | None]] = []  # (op index, state before it)
    best: list[int] = []
    best_blocked: int | None = None
    best_state: bytes | None = initial
    steps = 0
    entry = nxt[head]
    while True:
        if remaining == 0:
            return True, [i for i, _ in stack], None, state
        steps += 1
        if steps % _CLOCK_EVERY == 0 and budget.expired():
            return None, best, best_blocked, best_state
        if entry < n:  # a call: try to linearize this op now
            ok, new_state = step(state, ops[entry])
            if ok:
                new_lin = linearized | (1 << entry)
                memo = (new_lin, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_lin
                    if not pending[entry]:
                        remaining -= 1
                    # Unlink the call and its return; their own links are kept for the undo.
                    r = n + entry
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    nxt[prv[r]] = nxt[r]
                    if nxt[r] != -1:
                        prv[nxt[r]] = prv[r]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return entry whose op is not linearized: this branch is dead.
        if best_blocked is None or len(stack) > len(best):
            best = [i for i, _ in stack]
            best_blocked = entry - n
            best_state = state
        if not stack:
            return False, best, best_blocked, best_state
        top, state = stack.pop()
        linearized &= ~(1 << top)
        if not pending[top]:
            remaining += 1
        # Relink in the reverse order of unlinking.
        r = n + top
        nxt[prv[r]] = r
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[top]] = top
        prv[nxt[top]] = top
        entry = nxt[top]


def check(
    history: Iterable[Operation] | History,
    timeout: float | None = 10.0,
    initial: dict[bytes, bytes] | None = None,
) -> Result:
    """Decide whether ``history`` is linearizable for a key/value map.

    Every key starts absent unless ``initial`` gives its value. ``timeout`` (seconds, ``None`` for
    no limit) bounds the whole check; keys left undecided make the answer ``ok=None`` unless
    another key is found illegal first. Raises ``ValueError`` for an operation of unknown kind or
    one that returned before it was called. Pure function of its input; safe from any thread.
    """
    t0 = time.monotonic()
    if isinstance(history, History):
        history = history.operations()
    initial = initial or {}
    by_key: dict[bytes, list[Operation]] = defaultdict(list)
    for op in history:
        if op.kind not in KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r} in {op}")
        if not op.pending and op.ret < op.call:
            raise ValueError(f"operation returned before it was called: {op}")
        if op.kind == GET and op.pending:
            continue
        by_key[op.key].append(op)
    budget = _Budget(timeout)
    unknown: list[bytes] = []
    for key, ops in by_key.items():
        if unknown and budget.expired():
            unknown.append(key)
            continue
        verdict, prefix, blocked, state = _check_key(ops, initial.get(key), budget)
        if verdict is None:
            unknown.append(key)
        elif verdict is False:
            blocked_op = ops[blocked] if blocked is not None else None
            explanation = (
                f"key {key!r}: at most {len(prefix)} of {len(ops)} operations linearize; "
                f"then the state is {state!r} and {blocked_op} cannot take effect before it "
                f"returns"
            )
            return Result(
                ok=False,
                key=key,
                explanation=explanation,
                prefix=[ops[i] for i in prefix],
                blocked=blocked_op,
                elapsed=time.monotonic() - t0,
            )
    if unknown:
        return Result(
            ok=None,
            explanation=f"time budget of {timeout} s ran out with {len(unknown)} key(s) undecided",
            unknown_keys=unknown,
            elapsed=time.monotonic() - t0,
        )
    return Result(ok=True, elapsed=time.monotonic() - t0)


class History:
    """Records operations from many client threads for :func:`check`.

    Thread-safe. Times come from ``time.monotonic_ns()`` (one clock for every thread): the call
    time is read when :meth:`invoke` is entered and the return time when :meth:`complete` is
    entered, so call ``invoke`` just before sending a request and ``complete`` just after its
    answer arrives. An operation never completed (a timeout: it may or may not have taken effect)
    is reported as pending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[int, int, str, bytes, bytes | None]] = []
        self._returns: dict[int, tuple[int, bytes | None]] = {}

    def invoke(self, client: int, kind: str, key: bytes, value: bytes | None = None) -> int:
        """Record a call; returns the token to pass to :meth:`complete`."""
        now = time.monotonic_ns()
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        with self._lock:
            self._calls.append((client, now, kind, key, value))
            return len(self._calls) - 1

    def complete(self, token: int, output: bytes | None = None) -> None:
        """Record that the operation of ``token`` returned ``output`` (a get's value or None)."""
        now = time.monotonic_ns()
        with self._lock:
            if not 0 <= token < len(self._calls) or token in self._returns:
                raise ValueError(f"unknown or already completed token {token}")
            self._returns[token] = (now, output)

    def operations(self) -> list[Operation]:
        """A snapshot of the history so far, in call order."""
        with self._lock:
            calls = list(self._calls)
            returns = dict(self._returns)
        out = []
        for token, (client, call, kind, key, value) in enumerate(calls):
            ret, output = returns.get(token, (None, None))
            out.append(Operation(client, call, ret, kind, key, value, output))
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)
