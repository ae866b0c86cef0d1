#!/usr/bin/env bash
# One-shot bench: the whole process of `aleph-wasm run` (start, answer, retirement, exit) for
# an app restored from its snapshot, against the same run booting CPython cold, same machine,
# one run, the two taking turns.
#
# Apps: examples/python-hello, and the Starlette app of the tests (engine/tests/python/starlette,
# Starlette and its dependencies installed from PyPI into its packages/). Each gets its snapshot
# built once (`--snapshots wait`), then RUNS whole-process runs of `GET /` with
# `--snapshots wait` (restored) and `--snapshots off` (cold) taking turns. Prints the median and
# p90 wall time of each and the ratio.
#
# Usage: benches/run-start.sh [--runs N]
set -euo pipefail

RUNS=21
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-start: unknown argument $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
WORK="$ROOT/target/run-start"
CACHE="$ROOT/target/aleph-wasm-bench-cache"
STORE="$WORK/store"

echo "run-start: building the release binary" >&2
(cd "$ROOT" && cargo build --release -q -p aleph-wasm)
BIN="$ROOT/target/release/aleph-wasm"
aw() { "$BIN" --store "$STORE" --module-cache "$CACHE/modules" "$@"; }

rm -rf "$STORE"
mkdir -p "$WORK" "$CACHE/interpreter" "$CACHE/modules"
# The interpreter by hash: a verified copy kept by an earlier bench or test run, else its sources.
store_python_runtime run-start

STARLETTE="$WORK/starlette"
if [ ! -d "$STARLETTE/packages/starlette" ]; then
    echo "run-start: installing Starlette from PyPI into $STARLETTE/packages" >&2
    rm -rf "$STARLETTE" && mkdir -p "$STARLETTE"
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$STARLETTE/packages" \
        starlette==0.37.2 anyio==4.4.0 sniffio==1.3.1 idna==3.7
fi
cp "$ROOT/engine/tests/python/starlette/main.py" "$STARLETTE/main.py"

# Milliseconds of one whole-process run.
once() { # PROGRAM MODE
    local start end
    start=$(date +%s%N)
    aw --snapshots "$2" run "$1" --request 'GET /' >/dev/null
    end=$(date +%s%N)
    echo $(( (end - start) / 1000 ))
}

stats() { # microsecond samples on stdin -> "median p90" in ms
    sort -n | awk '{ a[NR] = $1 } END { printf "%.1f %.1f\n", a[int((NR + 1) / 2)] / 1000, a[int(NR * 0.9 + 0.5)] / 1000 }'
}

printf '\nrun-start: whole-process `aleph-wasm run`, GET /, %s runs each, %s cores, load %s\n' \
    "$RUNS" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-12s %22s %22s %10s\n' app "restored median / p90" "cold median / p90" ratio
for app in hello starlette; do
    case "$app" in
        hello) DIR="$ROOT/examples/python-hello" ;;
        starlette) DIR="$STARLETTE" ;;
    esac
    PROGRAM=$(aw program create "$DIR" --entrypoint main:app | tail -n1)
    aw --snapshots wait run "$PROGRAM" --request 'GET /' >/dev/null # builds the snapshot
    aw --snapshots off run "$PROGRAM" --request 'GET /' >/dev/null  # compiles the interpreter
    RESTORED=() COLD=()
    for _ in $(seq 1 "$RUNS"); do
        RESTORED+=("$(once "$PROGRAM" wait)")
        COLD+=("$(once "$PROGRAM" off)")
    done
    read -r RM RP < <(printf '%s\n' "${RESTORED[@]}" | stats)
    read -r CM CP < <(printf '%s\n' "${COLD[@]}" | stats)
    printf '%-12s %22s %22s %9.3fx\n' "$app" "$RM / $RP ms" "$CM / $CP ms" \
        "$(awk -v a="$RM" -v b="$CM" 'BEGIN { print a / b }')"
done
