"""csrc/db/pyspill.c's seal_leaves and seal_branch: a commit's sealing of a branch's dirty plain
leaves, and of the branch itself, in C.

They must give every page the id and the bytes the Python spill gives it (checked on whole
database files written both ways), stop at the first child seal_leaves does not handle (and
leave to Python a branch seal_branch does not), refuse bad input before they change anything,
and fail loudly when a node changes under them."""

import gc
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyval.db import DB, node
from keyval.db.encode import branch_parts, encode_branch
from keyval.db.node import MIN_ENTRIES, Node
from keyval.db.pagemap import PY_EXPORTS

seal_leaves = PY_EXPORTS.get("seal_leaves")
seal_branch = PY_EXPORTS.get("seal_branch")
pytestmark = pytest.mark.skipif(seal_leaves is None, reason="no C extension")

PAGE = 4096


def write_both_ways(tmp_path, monkeypatch, txs, fill, page_size):
    """The files (bytes) of one database written with seal_leaves and seal_branch, and one
    without."""
    files = []
    for name, sealers in (("c", (seal_leaves, seal_branch)), ("py", (None, None))):
        monkeypatch.setattr(node, "_seal_leaves", sealers[0])
        monkeypatch.setattr(node, "_seal_branch", sealers[1])
        path = tmp_path / f"{name}.db"
        with DB(str(path), page_size=page_size, sync=False) as db:
            for ops in txs:
                with db.update() as tx:
                    b = tx.create_bucket(b"b", exist_ok=True)
                    b.fill_factor = fill
                    for key, value in ops:
                        if value is None:
                            b.delete(key)
                        else:
                            b.put(key, value)
            with db.view() as tx:
                content = dict(tx.bucket(b"b").items()) if txs else {}
        files.append((path.read_bytes(), content))
    return files


@st.composite
def transactions(draw):
    """A few transactions of puts (ascending runs, random keys, values small to overflowing)
    and some deletes."""
    txs = []
    for _ in range(draw(st.integers(1, 3))):
        ops = []
        start = draw(st.integers(0, 5_000))
        # ascending, past SPLIT_ENTRIES (512) in one leaf: packed leaves
        value = b"v" * draw(st.sampled_from([1, 10, 100]))
        ops += [(b"k%08d" % (start + i), value) for i in range(draw(st.integers(0, 2_500)))]
        rnd = random.Random(draw(st.integers(0, 2**32)))
        for _ in range(draw(st.integers(0, 300))):  # random keys and sizes
            size = rnd.choice([0, 5, 100, 700, 3_000])
            ops.append((b"k%08d" % rnd.randrange(8_000), rnd.randbytes(size)))
        for _ in range(draw(st.integers(0, 100))):
            ops.append((b"k%08d" % rnd.randrange(8_000), None))
        txs.append(ops)
    return txs


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    transactions(),
    st.sampled_from([0.1, 0.5, 0.9, 1.0]),
    st.sampled_from([512, 4096]),
)
def test_files_are_byte_for_byte_those_of_the_python_spill(
    tmp_path_factory, monkeypatch, txs, fill, page_size
):
    tmp = tmp_path_factory.mktemp("spill")
    (c_file, c_content), (py_file, py_content) = write_both_ways(
        tmp, monkeypatch, txs, fill, page_size
    )
    model: dict[bytes, bytes] = {}
    for ops in txs:
        for key, value in ops:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
    assert c_content == py_content == model
    assert c_file == py_file


def dirty_leaf(keys, vals, **fields):
    leaf = Node(True, list(keys), list(vals), dirty=True, plain=fields.pop("plain", True))
    for name, value in fields.items():
        setattr(leaf, name, value)
    return leaf


class Allocator:
    """Page ids from 100 up, as a fresh file's high-water mark hands them out."""

    def __init__(self):
        self.next = 100
        self.calls = []

    def __call__(self, span):
        self.calls.append(span)
        pgid = self.next
        self.next += span
        return pgid


def test_seals_one_page_leaves_in_place_and_cuts_big_ones():
    small = dirty_leaf([b"a", b"b"], [b"1", b"2"])
    big_keys = [b"c%04d" % i for i in range(200)]
    big = dirty_leaf(big_keys, [b"x" * 50] * 200)
    keys = [b"", b"c0000", b"z"]
    children = [small, big, 7]
    runs = []
    alloc = Allocator()
    assert seal_leaves(keys, children, [0, 1], 2, PAGE, PAGE // 2, MIN_ENTRIES, alloc, runs) == 0
    pieces = len(alloc.calls) - 1
    assert pieces > 2
    # back to front: the big leaf's pages first (ids 100..), then the small one
    assert [r[0] for r in runs] == list(range(100, 100 + pieces + 1))
    assert runs[-1][3] is small and small.pgid == 100 + pieces and not small.dirty
    assert small.keys == (b"a", b"b") and type(small.vals) is tuple
    assert not gc.is_tracked(small.keys) and not gc.is_tracked(runs[-1])
    assert children[0] == small.pgid and keys[0] == b"a"
    assert children[1:-1] == list(range(100, 100 + pieces)) and children[-1] == 7
    sealed = [r[3] for r in runs[:-1]]
    assert all(
        type(n) is Node and n.pgid == r[0] and not n.dirty
        for n, r in zip(sealed, runs[:-1], strict=True)
    )
    assert [k for n in sealed for k in n.keys] == big_keys
    assert keys[1:-1] == [n.keys[0] for n in sealed]
    for _, span, buffers, _ in runs:
        assert span == 1 and len(buffers) == 1 and len(buffers[0]) == PAGE


def test_stops_at_the_first_child_it_leaves_to_spill():
    branch = Node(False, [b"k"], [3], dirty=True)
    not_plain = dirty_leaf([b"d"], [b"1"], plain=False)
    clean = Node(True, (b"e",), (b"1",), 9, 1)
    empty = dirty_leaf([], [])
    big = dirty_leaf([b"b%04d" % i for i in range(100)], [b"x" * 100] * 100)
    last = dirty_leaf([b"g"], [b"1"])
    children = [branch, big, not_plain, clean, empty, last]
    keys = [b"a", b"b0000", b"d", b"e", b"f", b"g"]
    dirty = [0, 1, 2, 3, 4, 5]
    runs = []
    alloc = Allocator()
    args = (PAGE, PAGE, MIN_ENTRIES, alloc, runs)
    # the last child is sealed, and the empty leaf stops it; then the clean leaf, the one with
    # other values; then the big leaf is sealed and the branch stops it
    for end, left in ((6, 5), (4, 4), (3, 3)):
        assert seal_leaves(keys, children, dirty, end, *args) == left
    assert len(runs) == 1 and children[5] == 100 and keys[5] == b"g"
    assert seal_leaves(keys, children, dirty, 2, *args) == 1
    pages = len(runs) - 1
    assert pages > 1 and children[1 : 1 + pages] == list(range(101, 101 + pages))
    assert children[0] is branch and children[1 + pages :] == [not_plain, clean, empty, 100]
    assert seal_leaves(keys, children, dirty, 0, *args) == 0
    assert len(runs) == 1 + pages


def test_refuses_bad_input_and_changes_nothing():
    leaf = dirty_leaf([b"a"], [b"1"])
    keys, children, runs = [b"a"], [leaf], []
    alloc = Allocator()
    rest = (PAGE, PAGE, 2, alloc)
    cases = [
        ((keys, children, [0], 1, *rest), TypeError, "seal_leaves"),
        (((b"a",), children, [0], 1, *rest, runs), TypeError, "lists"),
        ((keys, children, (0,), 1, *rest, runs), TypeError, "lists"),
        ((keys, children, [0], 1, *rest, (1,)), TypeError, "lists"),
        (([b"a", b"b"], children, [0], 1, *rest, runs), ValueError, "as many"),
        ((keys, children, [0], 1, 1000, PAGE, 2, alloc, runs), ValueError, "power of two"),
        ((keys, children, [0], 1, "4096", PAGE, 2, alloc, runs), TypeError, None),
        ((keys, children, [0], 2, *rest, runs), ValueError, "end"),
        ((keys, children, [0], -1, *rest, runs), ValueError, "end"),
        ((keys, children, [1], 1, *rest, runs), ValueError, "ascending"),
        ((keys, children, [-1], 1, *rest, runs), ValueError, "ascending"),
        (([b"a", b"b"], [leaf, leaf], [1, 0], 2, *rest, runs), ValueError, "ascending"),
        (([b"a", b"b"], [leaf, leaf], [0, 0], 2, *rest, runs), ValueError, "ascending"),
        ((keys, children, ["0"], 1, *rest, runs), TypeError, None),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            seal_leaves(*args)
    assert keys == [b"a"] and children == [leaf] and runs == [] and alloc.calls == []
    assert leaf.dirty and leaf.keys == [b"a"] and leaf.pgid == 0
    assert gc.isenabled()


def test_errors_of_allocate_and_of_a_changing_leaf_propagate():
    leaf = dirty_leaf([b"a", b"b"], [b"1", b"2"])

    def failing(span):
        raise OSError(28, "no space")

    with pytest.raises(OSError, match="no space"):
        seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE, 2, failing, [])
    assert gc.isenabled()

    def shrinking(span):
        leaf.keys.pop()
        leaf.vals.pop()
        return 5

    runs = []
    with pytest.raises(RuntimeError, match="changed"):
        seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE, 2, shrinking, runs)
    assert runs == []

    leaf = dirty_leaf([b"a", b"b"], [b"1", b"2"])

    def swapping(span):
        leaf.vals[0] = b"longer than it was"
        return 5

    with pytest.raises(RuntimeError, match="changed"):
        seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE, 2, swapping, runs)
    assert runs == []


def test_the_collector_state_is_restored():
    leaf = dirty_leaf([b"a"], [b"1"])
    gc.disable()
    try:
        seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE, 2, Allocator(), [])
        assert not gc.isenabled()
    finally:
        gc.enable()
    leaf = dirty_leaf([b"a"], [b"1"])
    seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE, 2, Allocator(), [])
    assert gc.isenabled()


def dirty_branch(n: int, key_size: int = 8) -> Node:
    keys = [b"%0*d" % (key_size, i) for i in range(n)]
    return Node(False, node.dirty_list(keys), node.dirty_list(range(500, 500 + n)), dirty=True)


def test_seal_branch_seals_a_branch_that_fits_in_place():
    branch, allocate, runs = dirty_branch(50), Allocator(), []
    keys, children = list(branch.keys), list(branch.vals)
    assert seal_branch(branch, PAGE, allocate, runs) == (keys[0], 100)
    assert allocate.calls == [1]
    assert (branch.keys, branch.vals) == (tuple(keys), tuple(children))
    assert (branch.pgid, branch.span, branch.dirty, branch.dirty_kids) == (100, 1, False, None)
    [(pgid, span, buffers, owner)] = runs
    assert (pgid, span, owner) == (100, 1, branch)
    assert bytes(buffers[0]) == bytes(encode_branch(100, branch_parts(keys), children, PAGE))


def test_seal_branch_leaves_to_python_what_it_does_not_handle():
    too_big = dirty_branch(200, key_size=40)  # over one 4 KiB page
    with_node = dirty_branch(3)
    with_node.vals[1] = dirty_leaf([b"a"], [b"b"])
    clean = Node(False, (b"a",), (7,))
    for n in (too_big, with_node, clean, dirty_leaf([b"a"], [b"b"])):
        allocate, runs = Allocator(), []
        before = (list(n.keys), list(n.vals), n.dirty)
        assert seal_branch(n, PAGE, allocate, runs) is None
        assert (list(n.keys), list(n.vals), n.dirty) == before
        assert allocate.calls == [] and runs == []


def test_seal_branch_lets_an_error_of_allocate_through_and_changes_nothing():
    branch = dirty_branch(5)
    before = (list(branch.keys), list(branch.vals))

    def failing(span):
        raise OSError("no space")

    runs = []
    with pytest.raises(OSError):
        seal_branch(branch, PAGE, failing, runs)
    assert (branch.keys, branch.vals, branch.dirty, runs) == (*before, True, [])

    def shrinking(span):
        branch.keys.pop()
        return 100

    with pytest.raises(RuntimeError):
        seal_branch(branch, PAGE, shrinking, runs)
    assert runs == [] and branch.dirty


@pytest.mark.parametrize("field", ["keys", "vals", "leaf"])
def test_seal_branch_refuses_a_field_allocate_deleted_or_changed(field):
    """allocate runs Python code: a node field it deletes (NULL in C) or a branch it turns
    into a leaf must be refused, not read (a deleted list crashed the interpreter)."""
    branch = dirty_branch(5)

    def mutating(span):
        if field == "leaf":
            branch.leaf = True
        else:
            delattr(branch, field)
        return 100

    runs = []
    with pytest.raises(RuntimeError):
        seal_branch(branch, PAGE, mutating, runs)
    assert runs == [] and branch.dirty and branch.pgid == 0


@pytest.mark.parametrize("field", ["keys", "vals"])
def test_seal_leaves_refuses_a_leaf_whose_list_allocate_deleted(field):
    """A leaf's list that allocate deletes is NULL in C: refused, not read (it crashed)."""
    leaf = dirty_leaf([b"a", b"b"], [b"1", b"2"])

    def mutating(span):
        delattr(leaf, field)
        return 100

    runs = []
    with pytest.raises(RuntimeError):
        seal_leaves([b"a"], [leaf], [0], 1, PAGE, PAGE // 2, MIN_ENTRIES, mutating, runs)
    assert runs == [] and leaf.dirty


def test_pages_written_early_make_the_same_file(tmp_path, monkeypatch):
    """A commit that writes its sealed pages in batches while it spills (Tx._write_early)
    writes the file a commit holding them all writes, and it checks clean and reads back."""
    from keyval.db.check import check_file

    rnd = random.Random(7)
    keys = [b"k%08d" % i for i in range(6_000)]
    rnd.shuffle(keys)
    files = []
    for name, limit in (("early", 3), ("whole", 10**9)):
        monkeypatch.setattr(node, "EARLY_WRITE_FIRST", limit)
        monkeypatch.setattr(node, "EARLY_WRITE_RUNS", limit)
        path = tmp_path / f"{name}.db"
        sizes = random.Random(8)
        with DB(str(path), page_size=512) as db:
            for lo, hi in ((0, 4_000), (4_000, 6_000)):
                with db.update() as tx:
                    b = tx.create_bucket(b"b", exist_ok=True)
                    for k in keys[lo:hi]:
                        b.put(k, k * sizes.choice([1, 3, 40]))
                    if lo:
                        for k in keys[:1_000]:
                            b.delete(k)
        assert check_file(str(path)) == []
        with DB(str(path), page_size=512) as db, db.view() as tx:
            got = dict(tx.bucket(b"b").items())
        assert sorted(got) == sorted(keys[1_000:])
        files.append(path.read_bytes())
    assert files[0] == files[1]
