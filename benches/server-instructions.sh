#!/usr/bin/env bash
# Where a request's CPU goes, in machine instructions: `aleph-wasm serve` and uvicorn, each run
# under callgrind (Debian's `valgrind`) serving examples/python-hello, are sent the same
# keep-alive `GET /?name=load` requests one at a time (benches/python/sequential_client.py):
# a warm-up, then callgrind's counters are zeroed, then the measured requests, then a dump.
# Prints each server's instructions per request by the object they ran in -- for aleph-wasm the
# guest's compiled Wasm (callgrind's `???`: code wasmtime wrote to anonymous memory), the
# engine's binary and libc; for uvicorn libpython, its C helpers and libc -- and the ratios.
#
# Counts, unlike timings, barely move between runs or with other load on the machine, so this
# says how far the guest alone is from the native server's whole request, and what a change
# would have to remove. The kernel's share (system calls, wake-ups) is not counted: see
# serve-load.sh's CPU per request for that. One request at a time: under load both servers do
# a little less work per request (more requests per event-loop turn).
#
# Usage: benches/server-instructions.sh [--runtime NAME] [--requests N] [--warmup N]
#   --runtime   python-3.12 (default) or python-3.11-pydantic (built from its sources the first
#               time, as in serve-load.sh)
#   --requests  measured requests (default 2000); --warmup before them (default 300)
# Needs: valgrind (apt-get install -y valgrind), python3 with venv and pip (uvicorn from PyPI,
# into serve-load.sh's venv). About 2 minutes once the release binary is built.
set -euo pipefail

RUNTIME=python-3.12
REQUESTS=2000
WARMUP=300
while [ $# -gt 0 ]; do
    case "$1" in
        --runtime) RUNTIME="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "server-instructions: unknown argument $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
WORK="$ROOT/target/server-instructions"
CACHE="$ROOT/target/aleph-wasm-bench-cache"
VENV="$ROOT/target/serve-load/venv"
UVICORN_REQ="uvicorn[standard]==0.35.0"
APP_DIR="$ROOT/examples/python-hello"
CLIENT="$ROOT/benches/python/sequential_client.py"
OBJECTS="$ROOT/benches/python/callgrind_objects.py"

command -v valgrind >/dev/null ||
    { echo "server-instructions: needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }

echo "server-instructions: building the release binary" >&2
(cd "$ROOT" && cargo build --release -q -p aleph-wasm)
BIN="$ROOT/target/release/aleph-wasm"
rm -rf "$WORK"
mkdir -p "$WORK" "$CACHE/interpreter" "$CACHE/modules"
STORE="$WORK/store"
aw() { "$BIN" --store "$STORE" --module-cache "$CACHE/modules" "$@"; }
store_python_runtime server-instructions "$RUNTIME"
ensure_uvicorn server-instructions
PROGRAM=$(aw program create "$APP_DIR" --entrypoint main:app --runtime "$RUNTIME" 2>/dev/null | tail -n1)
aw --snapshots wait run "$PROGRAM" --request 'GET /?name=load' >/dev/null # the snapshot, built now

# Runs COMMAND (a server on PORT) under callgrind, sends it PATH's requests and prints its
# instructions per measured request by object, keeping the table in $WORK/NAME.txt.
measure() { # NAME PORT PATH COMMAND...
    local name=$1 port=$2 path=$3 pid
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$name" --dump-instr=no \
        "$@" >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do # start-up under valgrind takes seconds
        curl -fs -o /dev/null --max-time 300 "http://127.0.0.1:$port$path" && break
        sleep 0.5
    done
    echo "server-instructions: $name: $WARMUP requests of warm-up, then $REQUESTS measured" >&2
    python3 "$CLIENT" 127.0.0.1 "$port" "$path" "$WARMUP"
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$CLIENT" 127.0.0.1 "$port" "$path" "$REQUESTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 1 100); do [ -s "$WORK/callgrind.$name.1" ] && break; sleep 0.2; done
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; unset 'PIDS[-1]'
    python3 "$OBJECTS" "$WORK/callgrind.$name.1" "$REQUESTS" >"$WORK/$name.txt"
}

PORT=$(free_port)
measure aleph-wasm "$PORT" "/vm/$PROGRAM/?name=load" \
    "$BIN" --store "$STORE" --module-cache "$CACHE/modules" serve --listen "127.0.0.1:$PORT"
PORT=$(free_port)
measure uvicorn "$PORT" "/?name=load" \
    "$VENV/bin/uvicorn" main:app --app-dir "$APP_DIR" --host 127.0.0.1 --port "$PORT" --no-access-log

per_request() { awk '$NF == "all" { gsub(",", "", $2); print $2 }' "$1"; }
guest() { awk '$NF == "???" { gsub(",", "", $2); print $2 }' "$1"; }
A=$(per_request "$WORK/aleph-wasm.txt")
N=$(per_request "$WORK/uvicorn.txt")
G=$(guest "$WORK/aleph-wasm.txt")
echo "server-instructions: examples/python-hello, GET /?name=load, $REQUESTS keep-alive requests one at a time"
echo "aleph-wasm serve, runtime $RUNTIME (??? = the guest's compiled Wasm):"
cat "$WORK/aleph-wasm.txt"
echo "uvicorn $("$VENV/bin/python" -c 'import uvicorn; print(uvicorn.__version__)'), CPython $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'):"
cat "$WORK/uvicorn.txt"
awk -v a="$A" -v n="$N" -v g="${G:-0}" 'BEGIN {
    printf "instructions per request, aleph-wasm / uvicorn: %.2fx (the guest alone %.2fx, the host alone %.2fx)\n",
        a / n, g / n, (a - g) / n }'
