"""Real crashes: a child appending with sync="always" is SIGKILLed at random moments.

After every kill the log is reopened and must hold every acknowledged record, be a prefix of
what was appended (nothing invented, nothing reordered), and number on from where it stopped.
"""

import os
import random
import signal
import subprocess
import sys

import pytest

from keyval.fsck import main as fsck
from keyval.wal import WAL

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
SEGMENT = 32 * 1024  # small: crashes land inside rotations too
ROUNDS = int(os.environ.get("KEYVAL_CRASH_ROUNDS", "30"))


def run_until_killed(path, rnd, mode, threads, seed, acks_before_kill):
    """Runs the child until it has acknowledged `acks_before_kill` operations, then SIGKILLs
    it. Returns the lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, CHILD, path, str(rnd), mode, str(threads), str(SEGMENT), str(seed)],
        stdout=subprocess.PIPE,
    )
    lines, done = [], 0
    try:
        for raw in proc.stdout:
            line = raw.decode().strip()
            lines.append(line)
            if line.startswith("D "):
                done += 1
                if done >= acks_before_kill:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().decode().splitlines()  # what it printed before dying
        lines.extend(x.strip() for x in rest)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return lines


def read_log(path):
    with WAL(path, segment_size=SEGMENT, sync="none") as wal:
        return wal.first_seq, wal.last_seq, {s: p for s, _, p in wal.replay()}


def tag(payload: bytes) -> str:
    return payload.split(b"x")[0].split(b"y")[0].split(b"z")[0].decode()


@pytest.mark.parametrize("threads", [1, 4])
def test_every_acknowledged_append_survives_sigkill(tmp_path, threads):
    crash_appending(str(tmp_path / "log"), threads, ROUNDS)


def test_mixed_workload_with_truncations_survives_sigkill(tmp_path):
    crash_mixed(str(tmp_path / "log"), ROUNDS)


@pytest.mark.torture
def test_torture_hundreds_of_kills(tmp_path):
    crash_appending(str(tmp_path / "a"), 1, 300)
    crash_appending(str(tmp_path / "b"), 8, 300)
    crash_mixed(str(tmp_path / "c"), 300)


def crash_appending(path, threads, rounds):
    rng = random.Random(threads)
    acked: dict[int, str] = {}  # seq -> "<round>.<thread>.<n>"
    last_seen = 0
    for rnd in range(rounds):
        lines = run_until_killed(path, rnd, "append", threads, rnd, rng.randrange(1, 400))
        opened = lines[0].split()
        assert opened[0] == "O" and int(opened[3]) == last_seen + 1, "numbering must go on"
        for line in lines:
            parts = line.split()
            if parts[0] == "D":
                acked[int(parts[4])] = f"{rnd}.{parts[2]}.{parts[3]}"
        first, last, records = read_log(path)
        assert first == 1 and sorted(records) == list(range(1, last + 1))
        for seq, name in acked.items():
            assert seq in records and tag(records[seq]) == name, f"round {rnd}: lost seq {seq}"
        # a prefix of what was appended: each thread's records of a round are 0..k, in order
        by_thread: dict[tuple[str, str], list[int]] = {}
        for seq in sorted(records):
            r, t, n = tag(records[seq]).split(".")
            by_thread.setdefault((r, t), []).append(int(n))
        for key, ns in by_thread.items():
            assert ns == list(range(len(ns))), f"thread {key} has a hole: {ns[:10]}..."
        last_seen = last
    assert fsck([path]) == 0


def states_after_crash_during(model, op, args):
    """The logs that may be on disk after a crash during a truncation: before it or after it,
    never anything in between."""
    to = int(args[0])
    after = {s: v for s, v in model.items() if (s <= to if op == "back" else s >= to)}
    return [model, after]


def crash_mixed(path, rounds):
    rng = random.Random(7)
    model: dict[int, str] = {}
    for rnd in range(rounds):
        lines = run_until_killed(path, rnd, "mixed", 1, 1000 + rnd, rng.randrange(1, 150))
        next_seq = int(lines[0].split()[3])
        pending = None
        for line in lines[1:]:
            parts = line.split()
            if parts[0] == "B":
                pending = parts[1:]
                continue
            op = parts[1]
            if op == "append":
                seq = int(parts[4])
                assert seq == next_seq
                model[seq] = f"{rnd}.0.{parts[3]}"
                next_seq += 1
            elif op == "many":
                n, k, a = int(parts[2]), int(parts[3]), int(parts[4])
                assert a == next_seq
                for j in range(k):
                    model[a + j] = f"{rnd}.0.{n + j}"
                next_seq += k
            elif op == "back":
                to = int(parts[2])
                model = {s: v for s, v in model.items() if s <= to}
                next_seq = to + 1
            elif op == "front":
                to = int(parts[2])
                model = {s: v for s, v in model.items() if s >= to}
            pending = None
        _first, _last, records = read_log(path)
        got = {s: tag(p) for s, p in records.items()}
        if pending and pending[0] in ("append", "many"):
            # the in-flight append may have landed, but a batch only whole
            extra = {s: v for s, v in got.items() if s not in model}
            assert sorted(extra) == list(range(next_seq, next_seq + len(extra)))
            whole = 1 if pending[0] == "append" else int(pending[2])
            assert len(extra) in (0, whole), f"round {rnd}: part of a batch survived: {pending}"
            assert all(v.startswith(f"{rnd}.0.") for v in extra.values())
            assert {s: v for s, v in got.items() if s in model} == model
            model.update(extra)
        elif pending:
            assert got in states_after_crash_during(model, pending[0], pending[1:]), (
                f"round {rnd}: a crash during {pending} left a state that never existed"
            )
            model = got
        else:
            assert got == model, f"round {rnd}: acknowledged state lost"
    assert fsck([path]) == 0
