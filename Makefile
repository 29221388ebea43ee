# `make run` and `make test` work as the first command on a fresh machine with Python 3.11 and gcc:
# they create .venv, install keyval into it (which compiles the C WAL) and go on.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keyval-installed
SOURCES := pyproject.toml setup.py keyval/_wal_build.py keyval/_db_build.py \
           $(wildcard csrc/*.c csrc/*.h csrc/python/*.c csrc/python/*.h csrc/db/*.c csrc/db/*.h)

.PHONY: run test torture peers bench bench-quick lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Editable install: Python edits need nothing, C edits re-run this rule (the stamp is older).
$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m keyval.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

torture: $(STAMP)
	$(BIN)/python -m pytest -q -m torture

# Peers one by one: one that cannot build here (plyvel needs LevelDB's headers) must not keep
# the others out; the suites skip a missing peer with its reason.
PEERS := lmdb rocksdict plyvel pysyncobj matplotlib sortedcontainers
peers: $(STAMP)
	@for p in $(PEERS); do $(BIN)/python -m pip install -q $$p >/dev/null 2>&1 || echo "peer $$p did not install; its cases will be skipped"; done

bench: peers
	$(BIN)/python -m bench.report --full

bench-quick: peers
	$(BIN)/python -m bench.report --quick

lint: $(STAMP)
	$(BIN)/ruff check keyval tests bench
	$(BIN)/ruff format --check keyval tests bench

clean:
	rm -rf build dist *.egg-info keyval/*.so keyval/_wal_cffi.c keyval/_db_cffi.c .pytest_cache .hypothesis .benchmarks bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
