"""RaftStorage through real crashes: SIGKILL at random points inside append, conflict
replacement, set_hard_state, save_snapshot and compaction. After reopen the state must be
one that existed (before or after the call in flight, never a mix), every acknowledged call
must be there, and fsck must find nothing corrupt."""

import os
import random
import signal
import subprocess
import sys

import pytest

from keyval.fsck import main as fsck
from keyval.raft.check import check_node_dir
from keyval.raft.memory import MemoryStorage
from keyval.raft.records import HardState, Snapshot
from keyval.raft.storage import RaftStorage

from .crash_child import entries

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
ROUNDS = int(os.environ.get("KEYVAL_CRASH_ROUNDS", "30"))


def apply(model: MemoryStorage, op: list[str]) -> None:
    kind, args = op[0], op[1:]
    if kind == "A":
        start, count, term = map(int, args[:3])
        model.append(entries(start, count, term, args[3]))
    elif kind == "S":
        start, count, term = map(int, args[:3])
        model.append(entries(start, count, term, args[3]))
        model.set_hard_state(HardState(*map(int, args[4:7])))
    elif kind == "H":
        model.set_hard_state(HardState(*map(int, args)))
    elif kind == "P":
        index, term = int(args[0]), int(args[1])
        model.save_snapshot(Snapshot(index, term, f"snap:{args[2]}".encode() * 50))


def observe(st) -> tuple:
    return (
        st.first_index,
        st.last_index,
        st.hard_state(),
        st.snapshot(),
        st.entries(st.first_index, st.last_index + 1),
    )


def copy_of(model: MemoryStorage) -> MemoryStorage:
    clone = MemoryStorage()
    snap = model.snapshot()
    if snap is not None:
        clone.save_snapshot(snap)
    clone.append(model.entries(model.first_index, model.last_index + 1))
    clone.set_hard_state(model.hard_state())
    return clone


def run_until_killed(path: str, seed: int, acks: int) -> list[list[str]]:
    proc = subprocess.Popen([sys.executable, CHILD, path, str(seed)], stdout=subprocess.PIPE)
    lines, done = [], 0
    try:
        for raw in proc.stdout:
            lines.append(raw.decode().split())
            if lines[-1] == ["D"]:
                done += 1
                if done >= acks:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        lines.extend(x.split() for x in proc.stdout.read().decode().splitlines())
        proc.wait()
    return lines


def crash_rounds(path: str, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    model = MemoryStorage()
    in_flight_kinds = set()
    for rnd in range(rounds):
        lines = run_until_killed(path, seed * 1000 + rnd, rng.randrange(1, 60))
        pending = None
        for line in lines[1:]:
            if line[0] == "B":
                pending = line[1:]
            elif line == ["D"]:
                apply(model, pending)
                pending = None
        problems = [p for p in check_node_dir(path) if not p.repairable]
        assert problems == [], f"round {rnd}: fsck found {problems}"
        with RaftStorage(path, segment_size=16 * 1024) as st:
            got = observe(st)
        allowed = [observe(model)]
        if pending:
            in_flight_kinds.add(pending[0])
            after = copy_of(model)
            apply(after, pending)
            allowed.append(observe(after))
        assert got in allowed, f"round {rnd}: state after a crash during {pending} never existed"
        if pending and got == allowed[-1]:
            model = after
        assert check_node_dir(path) == [], f"round {rnd}: not clean after reopen"
    return in_flight_kinds


@pytest.mark.parametrize("seed", [1, 2])
def test_every_acknowledged_call_survives_sigkill_and_no_mix_appears(tmp_path, seed):
    crash_rounds(str(tmp_path / "node"), ROUNDS, seed)


@pytest.mark.torture
def test_torture_hundreds_of_kills(tmp_path):
    kinds = crash_rounds(str(tmp_path / "node"), 300, 3)
    assert kinds >= {"A", "S", "P"}, f"the kills never landed inside {set('ASPH') - kinds}"


CRASH_IN_COMPACTION = """
import os, sys
import keyval.wal.log as wal_log
from keyval.raft.records import Entry, Snapshot
from keyval.raft.storage import RaftStorage

st = RaftStorage(sys.argv[1], segment_size=1 << 20)
st.append([Entry(i, 2, b"old%d" % i) for i in range(1, 21)])
st.append([Entry(15, 3, b"new15"), Entry(16, 3, b"new16")])  # replaces 15..20
# The process dies after the snapshot is checkpointed, before the WAL is compacted.
wal_log.WAL.truncate_front = lambda self, seq: os._exit(9)
st.save_snapshot(Snapshot(16, 3, b"state at 16"))
os._exit(0)
"""


@pytest.mark.parametrize("after", [0, 2])
def test_entries_a_conflict_replaced_stay_gone_when_compaction_is_cut_short(tmp_path, after):
    """Entries 17..20 were replaced (the log ends at 16 when the snapshot is taken); a crash
    between the snapshot's checkpoint and the WAL's compaction must not bring them back: replay
    skips records the snapshot covers, but not what they replaced. ``after``: entries appended
    after the snapshot, before the crash."""
    path = str(tmp_path / "node")
    child = CRASH_IN_COMPACTION
    if after:
        child = child.replace(
            'st.save_snapshot(Snapshot(16, 3, b"state at 16"))',
            'st.append([Entry(17, 3, b"n17"), Entry(18, 3, b"n18")])\n'
            'st.save_snapshot(Snapshot(18, 3, b"state at 18"))',
        )
    done = subprocess.run([sys.executable, "-c", child, path], timeout=60)
    assert done.returncode == 9
    snap = 16 + after
    with RaftStorage(path, segment_size=1 << 20) as st:
        assert (st.first_index, st.last_index) == (snap + 1, snap)
        assert st.term(snap) == 3
    assert fsck([path]) == 0
