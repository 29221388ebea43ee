"""csrc/db/pynode.c's dirty_list: the list a dirty node holds its entries in, which the garbage
collector does not track. It must be an ordinary list with the items of its argument, refuse
what list() refuses, and stay a working list under every mutation a write transaction makes."""

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyval.db.node import Node, dirty_list
from keyval.db.pagemap import PY_EXPORTS

pytestmark = pytest.mark.skipif("dirty_list" not in PY_EXPORTS, reason="no C extension")

items = st.lists(st.one_of(st.binary(max_size=40), st.integers(0, 2**64 - 1)), max_size=60)


@given(items, st.data())
def test_dirty_list_is_list_of_its_items_untracked(values, data):
    out = dirty_list(values)
    assert type(out) is list
    assert out == list(values)
    assert out is not values
    assert not gc.is_tracked(out)
    # a tuple or any iterable, as list() takes them
    assert dirty_list(tuple(values)) == values
    assert dirty_list(iter(values)) == values
    # the mutations a write transaction makes keep it a correct list
    extra = data.draw(st.binary(max_size=10))
    i = data.draw(st.integers(0, len(out)))
    out.insert(i, extra)
    expect = list(values)
    expect.insert(i, extra)
    assert out == expect
    del out[i]
    out.extend([b"x"])
    out[0:1] = [b"a", b"b"]
    expect = [*list(values), b"x"]
    expect[0:1] = [b"a", b"b"]
    assert out == expect


def test_dirty_list_refuses_non_iterables():
    with pytest.raises(TypeError):
        dirty_list(5)
    with pytest.raises(TypeError):
        dirty_list(None)


def test_dirty_copy_of_a_clean_node_is_untracked_and_equal():
    clean = Node(True, (b"a", b"b"), (b"1", b"2"), pgid=7, plain=True)
    dirty = clean.dirty_copy()
    assert dirty.dirty and dirty.keys == [b"a", b"b"] and dirty.vals == [b"1", b"2"]
    assert not gc.is_tracked(dirty.keys) and not gc.is_tracked(dirty.vals)
    dirty.keys.append(b"c")
    assert clean.keys == (b"a", b"b")
