"""Builds keyval._wal_cffi, the binding of the C write-ahead log in csrc/ (cffi API mode).

Run by setuptools through ``cffi_modules`` (see setup.py), so ``pip install .`` and
``pip install -e .`` compile it with no other step. cffi releases the GIL around every call,
so the C side does its own locking and never calls back into Python.
"""

import pathlib
import sys

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

if sys.byteorder != "little":  # the on-disk format and the CRC code are little-endian
    raise RuntimeError("keyval's WAL needs a little-endian CPU")

CDEF = """
uint32_t kv_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t kv_crc32c_sw(uint32_t crc, const void *buf, size_t len);
int64_t kv_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int kv_crc32c_hw_available(void);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "keyval._wal_cffi",
    '#include "crc32c.h"\n',
    sources=[str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
