import sys

import pltrace as trace

ops = trace.parse(sys.argv[1])
inos = {}
for op in ops:
    if op.kind == "C":
        inos[op.a] = op.b
    if op.kind == "R":
        for k, v in list(inos.items()):
            if v == op.a:
                inos[k] = op.b + "(<-" + op.a.split("/")[-1] + ")"
for i, op in enumerate(ops):
    if op.kind == "W":
        print(i, "W", inos.get(op.a, op.a), op.b, op.c)
    elif op.kind in "STX":
        print(i, op.kind, inos.get(op.a, op.a), op.b if op.kind == "T" else "")
    elif op.kind == "M":
        print(i, "M", {k: (v if len(str(v)) < 40 else "...") for k, v in op.a.items()})
    else:
        print(i, op.kind, op.a, op.b or "")
