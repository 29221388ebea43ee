"""Builds keyval._db_cffi, the binding of keyval.db's C fast paths in csrc/db/ (cffi API mode).

Run by setuptools through ``cffi_modules`` (see setup.py) beside the WAL's build. The C API is
declared once, in csrc/db/kvdb.h; the cdef is that header minus its preprocessor lines. cffi
releases the GIL around every call, so the C side never calls back into Python.
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


ffibuilder = FFI()
ffibuilder.cdef(_declarations(CSRC / "kvdb.h"))
ffibuilder.set_source(
    "keyval._db_cffi",
    '#include "kvdb.h"\n',
    sources=[str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
    libraries=["dl"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
