"""Builds keyval._wal_cffi, the binding of the C write-ahead log in csrc/ (cffi API mode).

Run by setuptools through ``cffi_modules`` (see setup.py), so ``pip install .`` and
``pip install -e .`` compile it with no other step. cffi releases the GIL around every call,
so the C side does its own locking and never calls back into Python, except csrc/python/:
the iterator WAL.replay hands out, a Python type the interpreter calls with the GIL held. It
lives apart so that csrc/*.c stays plain C (tests/wal/c builds it without Python).
"""

import pathlib
import sys

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

if sys.byteorder != "little":  # the on-disk format and the CRC code are little-endian
    raise RuntimeError("keyval's WAL needs a little-endian CPU")


def _declarations(header: pathlib.Path) -> str:
    """The header minus preprocessor lines: the C API is declared once, in csrc/."""
    return "\n".join(
        line for line in header.read_text().splitlines() if not line.lstrip().startswith("#")
    )


HEADERS = (CSRC / "crc32c.h", CSRC / "wal.h", CSRC / "python" / "records.h")
CDEF = "\n".join(_declarations(h) for h in HEADERS)
CDEF += "\nvoid free(void *);\n"

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "keyval._wal_cffi",
    '#include <stdlib.h>\n#include "crc32c.h"\n#include "wal.h"\n#include "records.h"\n',
    sources=[
        str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.c")) + sorted(CSRC.glob("python/*.c"))
    ],
    include_dirs=[str(CSRC.relative_to(ROOT)), str((CSRC / "python").relative_to(ROOT))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
