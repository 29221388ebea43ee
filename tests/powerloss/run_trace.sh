#!/bin/sh
# usage: run_trace.sh WORKLOAD OUTDIR [SEED] — runs a workload under the shim into OUTDIR/{root,trace,mark}
set -e
W=$1; OUT=$2; SEED=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$HERE/shim.so" ] || gcc -O1 -shared -fPIC -o "$HERE/shim.so" "$HERE/shim.c" -ldl -lpthread
rm -rf "$OUT"; mkdir -p "$OUT/root"
OUT=$(cd "$OUT" && pwd)
PL_TRACE=$OUT/trace PL_ROOT=$OUT/root PL_MARK=$OUT/mark LD_PRELOAD=$HERE/shim.so \
  ${PY:-python3} "$HERE/workloads.py" "$W" "$OUT/root" "$SEED" > "$OUT/stdout"
