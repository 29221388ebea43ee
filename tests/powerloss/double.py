"""Double crash: states a first power loss leaves in the `wal` workload are reopened under
the shim (recovery writes, then appends and a cut), and every point of that second trace is
checked too. usage: double.py FIRST_TRACE_DIR OUT_DIR [--states N] [--seed S]"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check  # noqa: E402
import pltrace as tr  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("out")
    ap.add_argument("--states", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--meta", default="posix")
    ap.add_argument("--random", type=int, default=2)
    a = ap.parse_args()
    ops = tr.parse(os.path.join(a.first, "trace"))
    rng = random.Random(a.seed)
    # crash points inside the interesting parts: any op but markers, sampled
    points = [i for i, op in enumerate(ops) if op.kind != "M" and i > 0]
    total = {}
    bad = 0
    for k in range(a.states):
        crash = rng.choice(points)
        mode = rng.choice(["strict", "all", "random", "random"])
        state = tr.build(ops, crash, mode, rng, a.meta)
        if "wal" not in state:
            continue
        out = os.path.join(a.out, f"s{k}")
        shutil.rmtree(out, ignore_errors=True)
        root = os.path.join(out, "root")
        tr.materialize(state, root)
        shutil.copytree(root, os.path.join(out, "initial"))
        inos = {}
        for dp, dns, fns in os.walk(root):
            for n in dns:
                inos[os.path.relpath(os.path.join(dp, n), root)] = "dir"
            for n in fns:
                full = os.path.join(dp, n)
                inos[os.path.relpath(full, root)] = os.stat(full).st_ino
        with open(os.path.join(out, "initial.json"), "w") as f:
            json.dump(inos, f)
        pre = os.path.join(out, "pre.jsonl")
        with open(pre, "w") as f:
            for _, m in check.markers(ops, crash):
                f.write(json.dumps(m) + "\n")
        env = dict(
            os.environ,
            PL_TRACE=os.path.join(out, "trace"),
            PL_ROOT=os.path.abspath(root),
            PL_MARK=os.path.abspath(os.path.join(out, "mark")),
            PL_PRE=pre,
            LD_PRELOAD=os.path.join(HERE, "shim.so"),
        )
        r = subprocess.run(
            [sys.executable, os.path.join(HERE, "workloads.py"), "wal_reopen", root, str(k)],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print(
                f"s{k} (first crash at op {crash}, {mode}): reopen failed: "
                f"{r.stderr.strip().splitlines()[-1]}"
            )
            bad += 1
            continue
        summary, findings, _ = check.run(out, "wal_reopen", a.random, k, a.meta)
        for key, v in findings.items():
            if key[0] == "FSCK" and "gave 8" in v[3]:
                continue
            bad += 1
            print(
                f"s{k} (first crash at op {crash}, {mode}): [{key[0]}/{key[1]}] x{v[2]} "
                f"at op {v[0]}: {v[3]}"
            )
        for part in summary.split("{")[1].rstrip("}").split(", "):
            name, n = part.split(": ")
            total[name] = total.get(name, 0) + int(n)
    print(f"double crash: {a.states} first states, second-crash states {total}, {bad} findings")


if __name__ == "__main__":
    main()
