"""Child process for RaftStorage crash tests: a seeded random workload until it is killed.

Prints "B <op...>" before each call and "D" once it returned. Everything an operation writes
follows from its printed arguments, so the parent can replay acknowledged calls on a model.

    python crash_child.py DIR SEED
ops:  A <start> <count> <term> <tag>   append entries start..start+count-1 (data "<tag>:<i>")
      H <term> <vote> <commit>          set_hard_state
      S <start> <count> <term> <tag> <hterm> <hvote> <hcommit>   save(hard state, entries)
      P <index> <term> <tag>            save_snapshot (data "snap:<tag>" * 50), half of the
                                        time as stage_snapshot then save_snapshot(staged=True)
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import RaftStorage


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def entries(start, count, term, tag):
    return [Entry(start + i, term, f"{tag}:{start + i}".encode() * 3) for i in range(count)]


def main():
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    st = RaftStorage(path, segment_size=16 * 1024)
    say("O")
    n = 0
    while True:
        n += 1
        tag = f"{seed}.{n}"
        hs = st.hard_state()
        first, last = st.first_index, st.last_index
        op = rng.choices("AHSP", [50, 15, 25, 10])[0]
        # A valid Raft history: committed entries are never replaced, a node learns a term
        # (hard state) no later than it stores entries of it, snapshots cover committed entries.
        if op in "AS":
            start = rng.randrange(max(first, hs.commit + 1), last + 2)
            low = max(st.term(start - 1), 1)
            count = rng.randrange(1, 40)
            if op == "A" and low <= hs.term:
                term = rng.randrange(low, hs.term + 1)
                say(f"B A {start} {count} {term} {tag}")
                st.append(entries(start, count, term, tag))
            else:
                term = max(low, hs.term) + rng.randrange(2)
                vote = hs.vote if term == hs.term else 0
                h = HardState(term, vote, rng.randrange(hs.commit, start))
                say(f"B S {start} {count} {term} {tag} {h.term} {h.vote} {h.commit}")
                st.save(h, entries(start, count, term, tag))
        elif op == "H":
            h = HardState(hs.term + 1, rng.randrange(1, 4), rng.randrange(hs.commit, last + 1))
            say(f"B H {h.term} {h.vote} {h.commit}")
            st.set_hard_state(h)
        elif op == "P" and hs.commit >= first:
            index = rng.randrange(first, hs.commit + 1)
            say(f"B P {index} {st.term(index)} {tag}")
            snap = Snapshot(index, st.term(index), f"snap:{tag}".encode() * 50)
            if index > (st.snapshot().index if st.snapshot() else 0) and rng.random() < 0.5:
                st.stage_snapshot(snap)  # as a node compacting off its lock: file first
                st.save_snapshot(snap, staged=True)
            else:
                st.save_snapshot(snap)
        else:
            continue
        say("D")


if __name__ == "__main__":
    main()
