"""The linearizability checker: hand-made legal and illegal histories, randomized histories built
from sequential executions (legal) and the same with one observable corruption (illegal), a
differential test against brute force on small histories, the time budget, and speed."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time

import pytest

from keyval.kv.linearizability import (
    ABSENT,
    APPEND,
    DELETE,
    FOUND,
    GET,
    PUT,
    History,
    Operation,
    check,
    step,
)

K = b"k"


def put(call, ret, value, key=K, client=0):
    return Operation(client, call, ret, PUT, key, value)


def append(call, ret, value, key=K, client=0):
    return Operation(client, call, ret, APPEND, key, value)


def delete(call, ret, key=K, client=0, output=None):
    return Operation(client, call, ret, DELETE, key, None, output)


def get(call, ret, output, key=K, client=0):
    return Operation(client, call, ret, GET, key, None, output)


# --- hand-made histories -------------------------------------------------------------------


def test_empty_history_is_linearizable():
    assert check([]).ok is True


def test_get_of_a_key_never_written_sees_nothing():
    assert check([get(0, 1, None)]).ok is True
    assert check([get(0, 1, b"x")]).ok is False


def test_sequential_put_then_get_is_linearizable():
    assert check([put(0, 10, b"1"), get(20, 30, b"1")]).ok is True


def test_stale_read_after_a_completed_put_is_illegal():
    history = [put(0, 10, b"1"), put(20, 30, b"2"), get(40, 50, b"1")]
    result = check(history)
    assert result.ok is False
    assert result.key == K
    assert result.blocked == history[2]
    assert result.prefix == history[:2]
    assert "2 of 3" in result.explanation


def test_read_concurrent_with_a_put_may_see_old_or_new_value():
    for seen in (b"1", b"2"):
        assert check([put(0, 10, b"1"), put(20, 40, b"2"), get(25, 35, seen)]).ok is True


def test_concurrent_puts_may_be_seen_in_either_order():
    puts = [put(0, 100, b"a", client=1), put(0, 100, b"b", client=2)]
    assert check([*puts, get(200, 300, b"a")]).ok is True
    assert check([*puts, get(200, 300, b"b")]).ok is True


def test_once_an_order_of_concurrent_puts_is_observed_it_cannot_flip():
    puts = [put(0, 100, b"a", client=1), put(0, 100, b"b", client=2)]
    assert check([*puts, get(200, 210, b"b"), get(220, 230, b"a")]).ok is False
    # ... unless a reader overlapped the puts and saw the first one take effect.
    assert check([*puts, get(50, 60, b"a"), get(220, 230, b"b")]).ok is True


def test_touching_operations_count_as_concurrent():
    # The put returns at the very instant the get is called: the clock cannot order them.
    assert check([put(0, 10, b"1"), get(10, 20, None)]).ok is True


def test_appends_take_effect_in_real_time_order():
    appends = [append(0, 10, b"x"), append(20, 30, b"y")]
    assert check([*appends, get(40, 50, b"xy")]).ok is True
    assert check([*appends, get(40, 50, b"yx")]).ok is False
    assert check([*appends, get(40, 50, b"y")]).ok is False
    assert check([appends[0], get(12, 18, b"x"), appends[1]]).ok is True


def test_concurrent_appends_may_land_in_either_order():
    appends = [append(0, 10, b"x"), append(0, 10, b"y")]
    for seen in (b"xy", b"yx"):
        assert check([*appends, get(20, 30, seen)]).ok is True
    assert check([*appends, get(20, 30, b"x")]).ok is False


def test_append_to_a_missing_key_is_the_value():
    assert check([append(0, 1, b"v"), get(2, 3, b"v")]).ok is True


def test_delete_removes_the_key():
    assert check([put(0, 1, b"v"), delete(2, 3), get(4, 5, None)]).ok is True
    assert check([put(0, 1, b"v"), delete(2, 3), get(4, 5, b"v")]).ok is False


def test_delete_of_a_missing_key_is_allowed_and_append_after_delete_starts_afresh():
    history = [delete(0, 1), append(2, 3, b"a"), delete(4, 5), append(6, 7, b"b")]
    assert check([*history, get(8, 9, b"b")]).ok is True
    assert check([*history, get(8, 9, b"ab")]).ok is False


def test_a_delete_says_truly_whether_it_found_the_key():
    assert check([put(0, 1, b"v"), delete(2, 3, output=FOUND)]).ok is True
    assert check([put(0, 1, b"v"), delete(2, 3, output=ABSENT)]).ok is False
    assert check([delete(0, 1, output=ABSENT), put(2, 3, b"v")]).ok is True
    assert check([delete(0, 1, output=FOUND)]).ok is False
    # Two deletes of one key at once: exactly one of them finds it.
    both = [put(0, 1, b"v"), delete(2, 5, output=FOUND, client=1)]
    assert check([*both, delete(3, 4, output=ABSENT, client=2)]).ok is True
    assert check([*both, delete(3, 4, output=FOUND, client=2)]).ok is False


def test_an_operation_that_never_returned_may_have_taken_effect():
    assert check([put(0, None, b"v"), get(10, 20, b"v")]).ok is True
    assert check([put(0, math.inf, b"v"), get(10, 20, b"v")]).ok is True


def test_an_operation_that_never_returned_may_not_have_taken_effect():
    assert check([put(0, None, b"v"), get(10, 20, None), get(30, 40, None)]).ok is True


def test_a_pending_operation_takes_effect_once_and_for_all():
    history = [put(0, 5, b"old"), put(10, None, b"new"), get(20, 30, b"new"), get(40, 50, b"old")]
    assert check(history).ok is False


def test_a_pending_operation_cannot_take_effect_before_its_call():
    assert check([get(10, 20, b"v"), put(50, None, b"v")]).ok is False


def test_a_pending_get_constrains_nothing():
    assert check([put(0, 1, b"v"), get(2, None, b"garbage")]).ok is True


def test_keys_are_independent():
    history = [put(0, 10, b"1", key=b"a"), put(0, 10, b"2", key=b"b"), get(20, 30, b"2", key=b"b")]
    assert check(history).ok is True
    result = check([*history, get(20, 30, b"2", key=b"a")])
    assert result.ok is False
    assert result.key == b"a"


def test_initial_values_are_the_state_before_the_history():
    assert check([get(0, 1, b"v")], initial={K: b"v"}).ok is True
    assert check([get(0, 1, None)], initial={K: b"v"}).ok is False


def test_malformed_operations_are_refused():
    with pytest.raises(ValueError):
        check([Operation(0, 0, 1, "cas", K)])
    with pytest.raises(ValueError):
        check([put(10, 5, b"v")])


def test_model_step():
    assert step(None, append(0, 1, b"a")) == (True, b"a")
    assert step(b"a", append(0, 1, b"b")) == (True, b"ab")
    assert step(b"a", put(0, 1, b"b")) == (True, b"b")
    assert step(b"a", delete(0, 1)) == (True, None)
    assert step(b"a", get(0, 1, b"a")) == (True, b"a")
    assert step(b"a", get(0, 1, None)) == (False, b"a")


# --- the recorder ------------------------------------------------------------------------


def test_history_records_calls_returns_and_pending_operations():
    h = History()
    t1 = h.invoke(1, PUT, K, b"v")
    h.complete(t1)
    t2 = h.invoke(2, GET, K)
    h.complete(t2, b"v")
    h.invoke(3, APPEND, K, b"w")  # never completes
    ops = h.operations()
    assert [op.kind for op in ops] == [PUT, GET, APPEND]
    assert ops[0].ret <= ops[1].call
    assert ops[1].output == b"v"
    assert ops[2].pending
    assert check(h).ok is True
    with pytest.raises(ValueError):
        h.complete(t1)
    with pytest.raises(ValueError):
        h.invoke(1, "cas", K)


def test_history_from_many_threads_over_a_locked_dict_is_linearizable():
    h = History()
    store: dict[bytes, bytes] = {}
    lock = threading.Lock()
    keys = [b"a", b"b", b"c"]

    def client(cid: int) -> None:
        rng = random.Random(cid)
        for i in range(200):
            key = rng.choice(keys)
            kind = rng.choice([GET, PUT, APPEND, DELETE])
            value = f"{cid}.{i};".encode() if kind in (PUT, APPEND) else None
            token = h.invoke(cid, kind, key, value)
            with lock:  # the critical section is each operation's linearization point
                out = store.get(key)
                if kind == PUT:
                    store[key] = value
                elif kind == APPEND:
                    store[key] = (out or b"") + value
                elif kind == DELETE:
                    store.pop(key, None)
            if kind == DELETE:
                out = ABSENT if out is None else FOUND
            h.complete(token, out if kind in (GET, DELETE) else None)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(h) == 800
    assert check(h, timeout=20).ok is True


# --- randomized histories ----------------------------------------------------------------


def sequential_history(
    rng: random.Random,
    n_ops: int,
    keys: list[bytes],
    spread: float,
    pending_rate: float = 0.0,
) -> list[Operation]:
    """Run ``n_ops`` random operations one at a time on a dict (op i takes effect at time 10*i),
    then give each a random call time before and return time after that point, so operations
    overlap. Values are unique. Some operations never return (``pending_rate``), half of which
    never took effect at all. Legal by construction."""
    state: dict[bytes, bytes] = {}
    ops = []
    for i in range(n_ops):
        at = 10.0 * (i + 1)
        key = rng.choice(keys)
        kind = rng.choices([GET, PUT, APPEND, DELETE], weights=[4, 2, 2, 1])[0]
        value = f"<{i}>".encode() if kind in (PUT, APPEND) else None
        call = at - rng.uniform(0, spread)
        ret: float | None = at + rng.uniform(0, spread)
        if kind != GET and rng.random() < pending_rate:
            ret = None
            if rng.random() < 0.5:  # never took effect: not applied to the state
                ops.append(Operation(rng.randrange(8), call, ret, kind, key, value))
                continue
        output = state.get(key)
        if kind == PUT:
            state[key] = value
        elif kind == APPEND:
            state[key] = (output or b"") + value
        elif kind == DELETE:
            state.pop(key, None)
            output = ABSENT if output is None else FOUND
        ops.append(Operation(rng.randrange(8), call, ret, kind, key, value, output))
    rng.shuffle(ops)  # the checker must not rely on input order
    return ops


def corrupt_one_get(rng: random.Random, ops: list[Operation]) -> list[Operation]:
    """Make one completed get return a value no operation ever wrote: observable by design."""
    gets = [i for i, op in enumerate(ops) if op.kind == GET and not op.pending]
    i = rng.choice(gets)
    bad = Operation(ops[i].client, ops[i].call, ops[i].ret, GET, ops[i].key, None, b"<corrupt>")
    return [*ops[:i], bad, *ops[i + 1 :]]


@pytest.mark.parametrize("seed", range(40))
def test_sequential_executions_with_overlapping_timing_are_linearizable(seed):
    rng = random.Random(seed)
    ops = sequential_history(rng, 200, [b"a", b"b", b"c"], spread=45, pending_rate=0.05)
    assert check(ops, timeout=10).ok is True


@pytest.mark.parametrize("seed", range(40))
def test_the_same_with_one_corrupted_read_is_not(seed):
    rng = random.Random(seed)
    ops = corrupt_one_get(rng, sequential_history(rng, 200, [b"a", b"b"], spread=45))
    result = check(ops, timeout=10)
    assert result.ok is False
    assert result.blocked is not None


def brute_force(ops: list[Operation]) -> bool:
    """Linearizable iff some order of all completed ops plus any subset of pending ones respects
    real time (a before b when a returned strictly before b was called) and the model."""
    done = [op for op in ops if not op.pending]
    maybe = [op for op in ops if op.pending and op.kind != GET]
    for r in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, r):
            for order in itertools.permutations(done + list(extra)):
                if any(
                    not b.pending and b.ret < a.call for i, a in enumerate(order) for b in order[i:]
                ):
                    continue
                state: bytes | None = None
                for op in order:
                    ok, state = step(state, op)
                    if not ok:
                        break
                else:
                    return True
    return False


def test_agrees_with_brute_force_on_small_random_histories():
    rng = random.Random(1234)
    verdicts = set()
    for _ in range(300):
        ops = []
        for c in range(rng.randint(1, 6)):
            call = rng.randint(0, 10)
            ret = None if rng.random() < 0.15 else call + rng.randint(0, 5)
            kind = rng.choice([GET, PUT, APPEND, DELETE])
            value = rng.choice([b"x", b"y"]) if kind in (PUT, APPEND) else None
            output = rng.choice([None, b"x", b"y", b"xy"]) if kind == GET else None
            ops.append(Operation(c, call, ret, kind, K, value, output))
        expected = brute_force(ops)
        verdicts.add(expected)
        assert check(ops).ok is expected, ops
    assert verdicts == {True, False}  # the generator exercised both answers


def test_an_exhausted_time_budget_answers_unknown():
    # 14 mutually concurrent appends: every order is a distinct state, and the final read matches
    # none, so the search must try all 14! orders.
    history = [append(0, 100, bytes([65 + i])) for i in range(14)]
    history.append(get(200, 300, b"none of them"))
    t0 = time.monotonic()
    result = check(history, timeout=0.2)
    assert result.ok is None
    assert result.unknown_keys == [K]
    assert time.monotonic() - t0 < 2.0


def test_an_illegal_key_wins_over_an_undecided_one():
    hard = [append(0, 100, bytes([65 + i]), key=b"hard") for i in range(14)]
    hard.append(get(200, 300, b"none of them", key=b"hard"))
    stale = [put(0, 1, b"1"), put(2, 3, b"2"), get(4, 5, b"1")]
    assert check(stale + hard, timeout=0.2).ok is False


def test_a_large_history_over_many_keys_checks_quickly():
    rng = random.Random(7)
    keys = [f"key{i}".encode() for i in range(100)]
    ops = sequential_history(rng, 5000, keys, spread=60, pending_rate=0.01)
    t0 = time.monotonic()
    result = check(ops, timeout=30)
    elapsed = time.monotonic() - t0
    assert result.ok is True
    assert elapsed < 1.0, f"{len(ops)} operations took {elapsed:.3f} s"
