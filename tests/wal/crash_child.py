"""Child process for the crash tests: works on a log until it is killed.

Prints, unbuffered, "B <op> <args>" before each operation and "D <op> <result>" once it has
returned (so is acknowledged). Payloads are unique: "<round>.<thread>.<n>".

    python crash_child.py DIR ROUND MODE THREADS SEGMENT_SIZE SEED
MODE "append": THREADS threads append forever. MODE "mixed": one thread does a seeded mix of
append, append_many, truncate_back and truncate_front.
"""

import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from keyval.wal import WAL


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: lines never interleave


def append_forever(wal, rnd, thread):
    n = 0
    while True:
        data = f"{rnd}.{thread}.{n}".encode() + b"x" * (n % 300)
        say(f"B append {thread} {n}")
        seq = wal.append(data)
        say(f"D append {thread} {n} {seq}")
        n += 1


def mixed_forever(wal, rnd, rng):
    n = 0
    while True:
        op = rng.choices(["append", "many", "back", "front"], [60, 25, 8, 7])[0]
        last, first = wal.last_seq, wal.first_seq
        if op == "append":
            say(f"B append 0 {n}")
            seq = wal.append(f"{rnd}.0.{n}".encode() + b"y" * rng.randrange(400))
            say(f"D append 0 {n} {seq}")
            n += 1
        elif op == "many":
            k = rng.randrange(1, 60)
            batch = [f"{rnd}.0.{n + j}".encode() + b"z" * rng.randrange(200) for j in range(k)]
            say(f"B many {n} {k}")
            a, b = wal.append_many(batch)
            say(f"D many {n} {k} {a} {b}")
            n += k
        elif op == "back" and last:
            to = rng.randrange(max(first - 1, 0), last + 1)
            say(f"B back {to}")
            wal.truncate_back(to)
            say(f"D back {to}")
        elif op == "front" and last:
            to = rng.randrange(first, last + 2)
            say(f"B front {to}")
            wal.truncate_front(to)
            say(f"D front {to}")


def main():
    path, rnd, mode, threads, segment, seed = sys.argv[1:7]
    wal = WAL(path, segment_size=int(segment), sync="always")
    say(f"O {wal.first_seq} {wal.last_seq} {wal.next_seq}")
    if mode == "append":
        workers = [
            threading.Thread(target=append_forever, args=(wal, rnd, t), daemon=True)
            for t in range(int(threads))
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    else:
        mixed_forever(wal, rnd, random.Random(int(seed)))


if __name__ == "__main__":
    main()
