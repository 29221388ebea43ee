"""The C extension is part of the product: a build that cannot load it must fail the suite,
not fall back to the pure-Python paths (still correct, but several times slower) unseen."""

from __future__ import annotations

import os

import pytest

from keyval.db import encode, node, pagemap

pytestmark = pytest.mark.skipif(
    os.environ.get("KEYVAL_PURE_PYTHON") == "1", reason="pure-Python run asked for"
)


def test_the_db_extension_loads():
    import keyval._db_cffi  # an ImportError here names the cause (say, an undefined symbol)

    assert keyval._db_cffi.lib.kvdb_hash is not None


def test_the_db_fast_paths_are_on():
    assert pagemap.AVAILABLE and encode.AVAILABLE
    assert {"CLookup", "dirty_list", "encode_leaf", "leaf_size"} <= set(pagemap.PY_EXPORTS)
    assert node.dirty_list is not list
