# The C write-ahead log is compiled by cffi from keyval/_wal_build.py; everything else is in
# pyproject.toml. cffi_modules has no pyproject.toml spelling, hence this file.
from setuptools import setup

setup(cffi_modules=["keyval/_wal_build.py:ffibuilder"])
