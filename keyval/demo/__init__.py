"""``keyval demo [cluster|wal]``: what ``make run`` runs (the cluster demo by default)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    which = (argv or ["cluster"])[0]
    if which == "wal":
        from keyval.demo.wal import main as run
    elif which == "cluster":
        from keyval.demo.cluster import main as run
    else:
        print("usage: keyval demo [cluster|wal]")
        return 2
    return run()
