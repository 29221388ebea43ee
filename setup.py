# The C write-ahead log and keyval.db's C fast paths are compiled by cffi from
# keyval/_wal_build.py and keyval/_db_build.py; everything else is in pyproject.toml.
# cffi_modules has no pyproject.toml spelling, hence this file.
from setuptools import setup

setup(cffi_modules=["keyval/_wal_build.py:ffibuilder", "keyval/_db_build.py:ffibuilder"])
