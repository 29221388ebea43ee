"""Builds keyval._db_cffi, the binding of keyval.db's C fast paths in csrc/db/ (cffi API mode).

Run by setuptools through ``cffi_modules`` (see setup.py) beside the WAL's build. The C API is
declared once, in csrc/db/kvdb.h; the cdef is that header minus its preprocessor lines. The
C side never calls back into Python, except csrc/db/pylookup.c: the C base class of Bucket,
whose ``get`` and ``put`` the interpreter calls directly and which hand what they do not do
themselves to the Python methods.

Unlike the WAL's binding, this one keeps the GIL during its calls (see _KEEP_GIL): they take
microseconds and never block on a lock or an fsync.
"""

import pathlib
import sys

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc" / "db"

if sys.byteorder != "little":  # the page format is little-endian and read in place
    raise RuntimeError("keyval.db's C code needs a little-endian CPU")


def _declarations(header: pathlib.Path) -> str:
    return "\n".join(
        line for line in header.read_text().splitlines() if not line.lstrip().startswith("#")
    )


# cffi wraps every call in Py_BEGIN/END_ALLOW_THREADS; these calls are too short for that to
# pay. Worse, a thread that releases and retakes the GIL thousands of times a second starves
# the threads waiting for it (the convoy effect): with three readers doing lookups, a writer
# returning from its fsync waited for the GIL so long that 150 small transactions took 35 s
# instead of 0.3 s. The macros are redefined to keep only their braces; the preamble comes
# after Python.h and before cffi's wrappers, so it applies to exactly this module.
_KEEP_GIL = """
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
"""

ffibuilder = FFI()
ffibuilder.cdef(_declarations(CSRC / "kvdb.h"))
ffibuilder.set_source(
    "keyval._db_cffi",
    _KEEP_GIL + '#include "kvdb.h"\n',
    sources=[str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
    libraries=["dl"],
    # The full C API, not the stable ABI: the put path reads list items and moves them with
    # the unchecked macros and one memmove (csrc/db/pylookup.c), which the limited API hides
    # behind a call per item; that halved a random bulk load's puts (2.7 to 1.45 us each).
    # The module is built on the machine that runs it, so a wheel per Python version is no
    # loss.
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
