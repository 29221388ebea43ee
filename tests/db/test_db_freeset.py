"""FreeSet, the freelist's bitmap of reusable pages, against a plain set of page ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.db.freeset import FreeSet

pages = st.integers(0, 700)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), pages),
        st.tuples(st.just("remove"), pages),
        st.tuples(st.just("update"), st.lists(pages, max_size=40)),
        st.tuples(st.just("run"), pages, st.integers(1, 30)),
        st.tuples(st.just("pop_first"), st.just(0)),
        st.tuples(st.just("remove_run"), st.integers(1, 20)),
    ),
    max_size=60,
)


def lowest_run(model: set[int], span: int) -> int | None:
    return next((p for p in sorted(model) if all(p + i in model for i in range(span))), None)


def check_queries(fs: FreeSet, model: set[int], lo: int, hi: int, span: int, end: int) -> None:
    assert len(fs) == len(model) and bool(fs) == bool(model)
    assert list(fs) == sorted(model)
    assert fs.count_below(lo) == sum(1 for p in model if p < lo)
    assert fs.find_run(span) == lowest_run(model, span)
    n = 0
    while end - 1 - n in model:
        n += 1
    assert fs.tail_run(end) == n
    for p in (lo, hi, end):
        assert (p in fs) == (p in model)
    if model:
        assert fs.first() == min(model)
    else:
        with pytest.raises(ValueError):
            fs.first()


@settings(max_examples=300)
@given(ops, pages, pages, st.integers(1, 40), pages)
def test_free_set_answers_as_a_set_of_page_ids(ops, lo, hi, span, end):
    fs, model = FreeSet(), set()
    for op, *args in ops:
        if op == "add":
            fs.add(args[0])
            model.add(args[0])
        elif op == "update":
            fs.update(args[0])
            model.update(args[0])
        elif op == "remove":
            if args[0] in model:
                fs.remove(args[0])
                model.remove(args[0])
            else:
                with pytest.raises(ValueError):
                    fs.remove(args[0])
        elif op == "pop_first" and model:
            assert fs.pop_first() == min(model)
            model.remove(min(model))
        elif op == "remove_run":
            first = fs.find_run(args[0])
            if first is not None:
                fs.remove_run(first, args[0])
                model.difference_update(range(first, first + args[0]))
        check_queries(fs, model, lo, hi, span, end)
    bitmap = bytearray((max(model, default=0) >> 3) + 1)
    for p in model:
        bitmap[p >> 3] |= 1 << (p & 7)
    again = FreeSet.from_bitmap(bitmap)
    check_queries(again, model, lo, hi, span, end)
