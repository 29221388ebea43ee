"""The ``keyval`` command. Each subcommand lives in its own module; this file only dispatches.

keyval demo          what `make run` runs: the WAL under load and through a SIGKILL
keyval bench DIR     is this disk fit for keyval (fsync percentiles, durable appends/s)
keyval fsck PATH     the integrity checker (same as python -m keyval.fsck)
keyval inspect DIR   a Raft node's data directory: hard state, log, snapshots, segments
keyval serve --id N --peers 1=HOST:PORT,... --data DIR     run one node of a cluster
keyval put|get|append|delete KEY [VALUE] --peers ...      one request to a cluster
keyval status --peers ...                                  each node's role, term, indexes
"""

from __future__ import annotations

import os
import sys

COMMANDS = {
    "demo": ("keyval.demo", "a cluster survives SIGKILL of every node (`demo wal`: the log)"),
    "bench": ("keyval.diskcheck", "is this disk fit for keyval: fsync latency, appends/s"),
    "fsck": ("keyval.fsck", "check a WAL directory, database file or node directory"),
    "inspect": ("keyval.raft.inspect", "a node's hard state, log range, snapshots, segments"),
    "serve": ("keyval.kv.serve", "run one node of a cluster"),
    "put": ("keyval.kv.ctl", "set KEY to VALUE"),
    "get": ("keyval.kv.ctl", "print KEY's value (exit 1 when missing)"),
    "append": ("keyval.kv.ctl", "append VALUE to KEY's value"),
    "delete": ("keyval.kv.ctl", "delete KEY (exit 1 when missing)"),
    "status": ("keyval.kv.ctl", "each node's role, term, leader, commit and applied index"),
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

    module_name = COMMANDS[name][0]
    module = importlib.import_module(module_name)
    try:
        if module_name == "keyval.kv.ctl":
            return module.main(name, rest)
        return module.main(rest)
    except BrokenPipeError:
        # The reader left early (`keyval inspect DIR | head`): no traceback for that. Stdout
        # goes to /dev/null so that the interpreter's last flush does not raise it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
