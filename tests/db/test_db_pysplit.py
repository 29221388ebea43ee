"""csrc/db/pysplit.c's leaf_cuts: where a commit cuts a plain leaf into pages. It must agree
with the Python reference (node._py_pieces) on every leaf, and refuse bad input clearly."""

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.db.node import MIN_ENTRIES, Node, _py_pieces
from keyval.db.page import HEADER_SIZE, LEAF_ELEMENT
from keyval.db.pagemap import PY_EXPORTS

leaf_cuts = PY_EXPORTS.get("leaf_cuts")
pytestmark = pytest.mark.skipif(leaf_cuts is None, reason="no C extension")


@st.composite
def leaves(draw):
    keys = sorted(draw(st.sets(st.binary(min_size=1, max_size=40), max_size=120)))
    vals = [draw(st.binary(max_size=draw(st.sampled_from([8, 100, 400])))) for _ in keys]
    return keys, vals


@settings(max_examples=400)
@given(
    leaves(),
    st.sampled_from([512, 1024, 4096]),
    st.one_of(st.sampled_from([0.1, 0.5, 0.9, 1.0]), st.floats(0.1, 1.0)),
)
def test_leaf_cuts_agree_with_python(leaf, page_size, fill):
    keys, vals = leaf
    entries = zip(keys, vals, strict=True)
    size = HEADER_SIZE + sum(LEAF_ELEMENT.size + len(k) + len(v) for k, v in entries)
    node = Node(True, keys, vals, dirty=True, plain=True)
    expect = _py_pieces(node, page_size, fill, page_size // 4, size)
    got = leaf_cuts(keys, vals, page_size, int(page_size * fill), MIN_ENTRIES)
    assert got == expect
    # the pieces cover every entry once, in order
    assert got[0][0] == 0 and got[-1][1] == len(keys)
    assert all(b == c for (_, b), (c, _) in pairwise(got))


def test_leaf_cuts_refuses_bad_input():
    with pytest.raises(TypeError, match="lists"):
        leaf_cuts((b"a",), [b"1"], 4096, 2048, 2)
    with pytest.raises(TypeError, match="bytes"):
        leaf_cuts([b"a", "b"], [b"1", b"2"], 4096, 2048, 2)
    with pytest.raises(TypeError, match="bytes"):
        leaf_cuts([b"a"], [bytearray(b"1")], 4096, 2048, 2)
    with pytest.raises(ValueError, match="as many values"):
        leaf_cuts([b"a", b"b"], [b"1"], 4096, 2048, 2)
    with pytest.raises(ValueError, match="positive"):
        leaf_cuts([b"a"], [b"1"], 0, 2048, 2)
    with pytest.raises(ValueError, match="positive"):
        leaf_cuts([b"a"], [b"1"], 4096, 2048, 0)
    with pytest.raises(TypeError):
        leaf_cuts([b"a"], [b"1"], 4096, 2048)
    with pytest.raises(TypeError):
        leaf_cuts([b"a"], [b"1"], "4096", 2048, 2)
