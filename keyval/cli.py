"""The ``keyval`` command. Each subcommand lives in its own module; this file only dispatches.

    keyval demo          what `make run` runs: the WAL under load and through a SIGKILL
    keyval bench DIR     is this disk fit for keyval (fsync percentiles, durable appends/s)
    keyval fsck PATH     the integrity checker (same as python -m keyval.fsck)
    keyval inspect DIR   a Raft node's data directory: hard state, log, snapshots, segments

The cluster commands (serve, put, get, append, delete, status) arrive with the replicated
service.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("keyval.demo", "the WAL under load and through a crash (what `make run` runs)"),
    "bench": ("keyval.diskcheck", "is this disk fit for keyval: fsync latency, appends/s"),
    "fsck": ("keyval.fsck", "check a WAL directory, database file or node directory"),
    "inspect": ("keyval.raft.inspect", "a node's hard state, log range, snapshots, segments"),
}


def usage() -> str:
    lines = ["usage: keyval COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"keyval: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) if name != "demo" else module.main()


if __name__ == "__main__":
    sys.exit(main())
