"""csrc/db/pynode.c's dirty_list: the list a dirty node holds its entries in, which the garbage
collector does not track. It must be an ordinary list with the items of its argument, refuse
what list() refuses, and stay a working list under every mutation a write transaction makes.
The same for clean_tuple (a clean node's tuples), seal_entries (which makes a dirty node's
lists its tuples, moving their entries when nothing else holds them) and for the Node objects
themselves, whose fields live in CNode, a C base class that the C put path reads directly."""

import gc
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyval.db.node import Node, clean_tuple, dirty_list, seal_entries
from keyval.db.page import OverflowRef, decode_leaf_body, encode_leaf_body
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


@given(items)
def test_clean_tuple_is_tuple_of_its_items_untracked(values):
    out = clean_tuple(values)
    assert type(out) is tuple
    assert out == tuple(values)
    assert clean_tuple(iter(values)) == out
    if values:
        assert not gc.is_tracked(out)


def test_clean_tuple_refuses_non_iterables():
    with pytest.raises(TypeError):
        clean_tuple(5)


@given(items, st.booleans())
def test_seal_entries_makes_the_lists_tuples_and_leaves_a_list_held_elsewhere_as_it_was(
    values, hold
):
    node = Node(False, dirty_list(values), dirty_list(reversed(values)), dirty=True)
    held = node.keys if hold else None  # a list someone else refers to is copied, not emptied
    seal_entries(node)
    assert node.keys == tuple(values) and node.vals == tuple(reversed(values))
    if values:
        assert not gc.is_tracked(node.keys) and not gc.is_tracked(node.vals)
    if hold:
        assert held == values
    # the moved entries are the node's alone now: every reference count is still right
    del held
    gc.collect()
    assert node.keys == tuple(values)


def test_seal_entries_refuses_what_is_not_a_dirty_node():
    with pytest.raises(TypeError):
        seal_entries(Node(True, (b"k",), (b"v",)))  # clean already: tuples
    with pytest.raises(TypeError):
        seal_entries([b"k"])


@pytest.mark.parametrize("nth", range(3))
def test_seal_entries_out_of_memory_changes_nothing(nth):
    testcapi = pytest.importorskip("_testcapi", reason="needs CPython's _testcapi")
    keys, vals = [b"a%d" % i for i in range(50)], [b"v%d" % i for i in range(50)]
    node = Node(True, dirty_list(keys), dirty_list(vals), dirty=True)
    testcapi.set_nomemory(nth, nth + 1)
    try:
        seal_entries(node)
        outcome = "sealed"
    except MemoryError:
        outcome = "refused"
    finally:
        testcapi.remove_mem_hooks()
    assert (node.keys, node.vals) == (
        (tuple(keys), tuple(vals)) if outcome == "sealed" else (keys, vals)
    )


def test_nodes_are_untracked_and_freed_by_reference_counting():
    leaf = Node(True, [b"k"], [b"v"], dirty=True, plain=True)
    branch = Node(False, [b"k"], [leaf], dirty=True)
    assert not gc.is_tracked(leaf) and not gc.is_tracked(branch)
    assert not gc.is_tracked(branch.dirty_copy())

    class Probe:  # stands in for a value; weakly referenceable, unlike bytes
        pass

    probe = Probe()
    alive = weakref.ref(probe)
    tree = Node(False, [b"k"], [Node(True, [b"k"], [probe], dirty=True)], dirty=True)
    del probe
    assert alive() is not None
    gc.disable()
    try:
        del tree
        assert alive() is None  # freed at once, without the collector
    finally:
        gc.enable()


def test_node_fields_default_and_assign_like_slots():
    node = Node(True, [b"k"], [b"v"])
    assert (node.leaf, node.keys, node.vals, node.pgid, node.span) == (True, [b"k"], [b"v"], 0, 1)
    assert (node.dirty, node.plain, node.packed, node.dirty_kids) == (False, False, False, None)
    named = Node(leaf=False, keys=(b"a",), vals=(9,), pgid=7, span=3, dirty=True, plain=True)
    assert (named.leaf, named.keys, named.vals, named.pgid, named.span) == (
        False, (b"a",), (9,), 7, 3,
    )  # fmt: skip
    assert named.dirty is True and named.plain is True
    for field, value in [("keys", (b"x",)), ("pgid", 12), ("packed", True), ("dirty_kids", [1])]:
        setattr(named, field, value)
        assert getattr(named, field) == value
    with pytest.raises(AttributeError):
        named.other = 1  # no __dict__: a node holds its nine fields and nothing else


def test_node_init_refuses_bad_arguments_and_reinit_replaces_fields():
    with pytest.raises(TypeError):
        Node(True, [b"k"])
    with pytest.raises(TypeError):
        Node(True, [], [], 0, 1, False, False, "extra")
    with pytest.raises(TypeError):
        Node(True, [], [], colour=1)

    class Probe:
        pass

    probe = Probe()
    alive = weakref.ref(probe)
    node = Node(True, [b"k"], [probe])
    del probe
    node.__init__(False, [], [])  # the old fields are released, not leaked
    assert alive() is None and node.leaf is False and node.vals == []


def test_c_puts_take_only_cnode_subclasses():
    from keyval.db.pagemap import CLookup

    class NotANode:
        pass

    class Lookup(CLookup):
        pass

    lookup = Lookup()
    with pytest.raises(TypeError):
        lookup._c_put_on(NotANode, 256, 100)
    with pytest.raises(TypeError):
        lookup._c_put_on(5, 256, 100)
    lookup._c_put_on(None, 0, 0)  # off, whatever it is given as a type
    with pytest.raises(AttributeError):
        lookup._node  # unset until the subclass sets it, as a slot would be  # noqa: B018


decode_plain_leaf = PY_EXPORTS.get("decode_plain_leaf")
leaf_entries = st.lists(
    st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300)), max_size=40
).map(lambda es: sorted(dict(es).items()))


@given(leaf_entries, st.integers(0, 16))
def test_decode_plain_leaf_cuts_what_the_python_codec_cuts(entries, lead):
    keys = [k for k, _ in entries]
    vals = [v for _, v in entries]
    buf = b"\xaa" * lead + encode_leaf_body(keys, vals, True)
    got = decode_plain_leaf(buf, lead, len(keys), len(buf))
    assert got == (tuple(keys), tuple(vals))
    assert not keys or not (gc.is_tracked(got[0]) or gc.is_tracked(got[1]))
    assert decode_leaf_body(buf, lead, len(keys), len(buf), None, None) == (keys, vals)


@given(st.binary(max_size=200), st.integers(-5, 60), st.integers(-5, 60), st.integers(-5, 260))
def test_decode_plain_leaf_leaves_anything_doubtful_to_the_python_codec(buf, start, count, end):
    """Garbage never crashes it: it answers None, or the entries the Python codec finds."""
    got = decode_plain_leaf(buf, start, count, end)
    if got is None:
        return
    assert 0 <= start <= end <= len(buf)
    keys, vals = decode_leaf_body(buf, start, count, end, None, None)
    assert got == (tuple(keys), tuple(vals))


def test_decode_plain_leaf_leaves_overflow_and_bucket_values_to_the_python_codec():
    body = encode_leaf_body([b"a", b"b"], [b"x", OverflowRef(9, 5000)], False)
    assert decode_plain_leaf(body, 0, 2, len(body)) is None
