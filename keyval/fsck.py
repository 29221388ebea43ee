"""``python -m keyval.fsck PATH [--repair] [--json]``: check any keyval file or directory.

PATH may be a WAL directory, a ``keyval.db`` file, or a Raft node's data directory. Every
problem is reported with its file and byte offset. ``--repair`` fixes only what can be fixed
without losing an acknowledged write (a torn WAL tail, an interrupted truncation) and refuses
to touch anything else.

Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected,
8 operational error (cannot read, in use, not a keyval path), 16 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from keyval.errors import CorruptionError, KeyvalError

EXIT_CLEAN = 0
EXIT_CORRECTED = 1
EXIT_UNCORRECTED = 4
EXIT_OPERATIONAL = 8
EXIT_USAGE = 16


@dataclass
class Report:
    path: str
    kind: str
    problems: list[CorruptionError] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_OPERATIONAL
        if any(not p.repairable for p in self.problems) or (self.problems and not self.repairs):
            return EXIT_UNCORRECTED
        return EXIT_CORRECTED if self.repairs else EXIT_CLEAN

    def to_dict(self) -> dict:
        status = {0: "clean", 1: "repaired", 4: "errors", 8: "failed"}[self.exit_code]
        return {
            "path": self.path,
            "kind": self.kind,
            "status": status,
            "exit_code": self.exit_code,
            "problems": [dict(p.to_dict(), repairable=p.repairable) for p in self.problems],
            "repairs": self.repairs,
            "error": self.error,
        }


def _db_checker():
    """keyval.db's checker, if this installation has the page store."""
    try:
        from keyval.db import check
    except ImportError:
        return None
    return check


def kind_of(path: str) -> str | None:
    """What keyval thing lives at ``path``: "server" (a ``keyval serve`` data directory),
    "node" (a Raft node's directory), "wal", "db", or None."""
    from keyval.raft.check import SERVER_NODE_SUBDIR, is_node_dir
    from keyval.wal.check import is_wal_dir

    if is_node_dir(os.path.join(path, SERVER_NODE_SUBDIR)) and os.path.isfile(
        os.path.join(path, "kv.db")
    ):
        return "server"
    if is_node_dir(path):
        return "node"
    if is_wal_dir(path):
        return "wal"
    db = _db_checker()
    if db is not None and os.path.isfile(path) and db.is_db_file(path):
        return "db"
    return None


def check_path(path: str, repair: bool = False) -> Report:
    """Checks (and with ``repair`` mends) the keyval file or directory at ``path``."""
    kind = kind_of(path)
    report = Report(path=path, kind=kind or "unknown")
    try:
        if kind == "wal":
            from keyval.wal.check import check_dir, repair_dir

            report.problems = check_dir(path)
            if repair and report.problems and all(p.repairable for p in report.problems):
                report.repairs = repair_dir(path)
        elif kind == "db":
            report.problems = _db_checker().check_file(path)
        elif kind == "server":
            from keyval.raft.check import SERVER_NODE_SUBDIR

            # kv.db is checked as the database it must be, not by its looks: one whose meta
            # pages are gone is corrupt, not "not a keyval file".
            kv = Report(path=os.path.join(path, "kv.db"), kind="db")
            kv.problems = _db_checker().check_file(kv.path)
            for part in (check_path(os.path.join(path, SERVER_NODE_SUBDIR), repair), kv):
                if part.error:
                    raise KeyvalError(part.error)
                report.problems += part.problems
                report.repairs += part.repairs
        elif kind == "node":
            from keyval.raft.check import check_node_dir

            report.problems = check_node_dir(path)
            if repair and report.problems and all(p.repairable for p in report.problems):
                from keyval.raft.storage import WAL_DIR, RaftStorage
                from keyval.wal.check import segment_options

                # Opening repairs: cuts torn tails, drops .tmp files.
                RaftStorage(path, **segment_options(os.path.join(path, WAL_DIR))).close()
                report.repairs = [f"repaired: {p}" for p in report.problems]
        elif not os.path.exists(path):
            report.error = f"{path}: no such file or directory"
        else:
            report.error = f"{path}: not a keyval WAL directory or database file"
    except (KeyvalError, OSError) as exc:
        report.error = str(exc)
    except Exception as exc:  # a bug here must not exit 1, which says "errors corrected"
        report.error = f"{path}: fsck failed: {type(exc).__name__}: {exc}"
    return report


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # fsck(8): usage errors exit 16, not argparse's 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m keyval.fsck", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="WAL directory, database file, or node data directory")
    parser.add_argument("--repair", action="store_true", help="fix what is safe to fix")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = check_path(args.path, repair=args.repair)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return report.exit_code
    if report.error:
        print(f"fsck: {report.error}", file=sys.stderr)
        return report.exit_code
    for problem in report.problems:
        tag = "repairable" if problem.repairable else "CORRUPT"
        print(f"{tag}: {problem}")
    for line in report.repairs:
        print(line)
    summary = {
        EXIT_CLEAN: "clean",
        EXIT_CORRECTED: f"{len(report.repairs)} problem(s) repaired",
        EXIT_UNCORRECTED: f"{len(report.problems)} problem(s) left"
        + ("" if args.repair else " (run with --repair to fix the repairable ones)"),
    }[report.exit_code]
    print(f"{report.path} ({report.kind}): {summary}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
