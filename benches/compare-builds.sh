#!/usr/bin/env bash
# Compare builds of aleph-wasm on the hello app: alternating servers, and the guest's fuel.
#
# Each binary gets a store of its own with the python-3.12 runtime it embeds (or the runtime
# directory given with --runtime, stored with `runtime add`) and examples/python-hello. Then, for
# each round, each binary in turn: a fresh `serve`, 3 s of warm-up, `wrk -t2 -c64` for the
# duration (req/s, and the server's CPU time per request), then `wrk -t1 -c1` for 3 s (after a
# second's pause and one of warm-up, so requests wrk left in flight have ended): one
# request at a time, whose fuel per request (the change in aleph_wasm_fuel_consumed_total over
# the change in aleph_wasm_executions_total{outcome="ok"}, from /metrics) is the guest's work
# per request, the same on every run of the same build. One instance can be 20 % faster or
# slower than another of the same build for its whole life, so compare the medians of several
# rounds, never one run.
#
# Usage: benches/compare-builds.sh [--rounds N] [--duration S] [--runtime DIR] BINARY...
#   e.g. git worktree add /tmp/base main~1 && (cd /tmp/base && cargo build --release)
#        benches/compare-builds.sh --rounds 5 /tmp/base/target/release/aleph-wasm target/release/aleph-wasm
set -euo pipefail

ROUNDS=5
DURATION=8
RUNTIME_DIR=""
BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --runtime) RUNTIME_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "compare-builds: unknown argument $1" >&2; exit 2 ;;
        *) BINS+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
    esac
done
[ ${#BINS[@]} -gt 0 ] || { echo "compare-builds: name at least one binary" >&2; exit 2; }
command -v wrk >/dev/null || { echo "compare-builds: wrk is not installed (apt-get install wrk)" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
WORK="$ROOT/target/compare-builds"
CACHE="$ROOT/target/aleph-wasm-bench-cache"
QUERY="/?name=load"
rm -rf "$WORK"
mkdir -p "$WORK" "$CACHE/interpreter" "$CACHE/modules"

SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; true' EXIT

PROGRAMS=()
for i in "${!BINS[@]}"; do
    BIN="${BINS[$i]}"
    STORE="$WORK/store-$i"
    aw() { "$BIN" --store "$STORE" --module-cache "$CACHE/modules" "$@"; }
    store_python_runtime compare-builds
    RUNTIME=()
    if [ -n "$RUNTIME_DIR" ]; then
        RUNTIME=(--runtime "$(aw runtime add "$RUNTIME_DIR" | tail -n1)")
    fi
    P=$(aw program create "$ROOT/examples/python-hello" --entrypoint main:app "${RUNTIME[@]}" \
        2>/dev/null | tail -n1)
    aw --snapshots wait run "$P" --request "GET $QUERY" >/dev/null
    PROGRAMS+=("$P")
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# fuel consumed and requests served, from /metrics
counters() {
    curl -fs "$1/metrics" | awk '/^aleph_wasm_fuel_consumed_total/ {f += $2}
        /^aleph_wasm_executions_total\{outcome="ok"\}/ {e += $2} END {printf "%.0f %.0f\n", f, e}'
}

TCK=$(getconf CLK_TCK)
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for i in "${!BINS[@]}"; do
        BIN="${BINS[$i]}"
        PORT=$(free_port)
        BASE="http://127.0.0.1:$PORT"
        URL="$BASE/vm/${PROGRAMS[$i]}$QUERY"
        "$BIN" --store "$WORK/store-$i" --module-cache "$CACHE/modules" serve \
            --listen "127.0.0.1:$PORT" >"$WORK/serve-$i-$round.log" 2>&1 &
        SERVER=$!
        for _ in $(seq 120); do curl -fs -o /dev/null "$URL" && break; sleep 0.5; done
        wrk -t2 -c64 -d3s "$URL" >/dev/null
        c1=$(cpu_ticks "$SERVER")
        out=$(wrk -t2 -c64 -d"${DURATION}s" "$URL")
        c2=$(cpu_ticks "$SERVER")
        # The requests wrk left in flight end (cancelled, their fuel counted) before the count.
        sleep 1
        wrk -t1 -c1 -d1s "$URL" >/dev/null
        read -r f1 e1 < <(counters "$BASE")
        wrk -t1 -c1 -d3s "$URL" >/dev/null
        read -r f2 e2 < <(counters "$BASE")
        kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
        SERVER=""
        if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
            echo "compare-builds: errors under load for ${BINS[$i]}:" >&2
            echo "$out" >&2
            exit 1
        fi
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        n=$(echo "$out" | awk '/requests in/ {print $1}')
        awk -v b="$i" -v r="$round" -v rps="$rps" -v c="$((c2 - c1))" -v t="$TCK" -v n="$n" \
            -v f="$((f2 - f1))" -v e="$((e2 - e1))" 'BEGIN {
                printf "%s %s %.1f %.4f %.0f\n", b, r, rps, c * 1000 / t / n, f / e }' >>"$RESULTS"
        tail -n1 "$RESULTS" | awk -v name="${BINS[$i]}" '{
            printf "round %s  %s: %s req/s, %s ms CPU/request, %s fuel/request\n", $2, name, $3, $4, $5 }'
    done
done

echo
echo "medians over $ROUNDS rounds (wrk -t2 -c64 -d${DURATION}s; fuel: wrk -t1 -c1):"
for i in "${!BINS[@]}"; do
    awk -v b="$i" '$1 == b' "$RESULTS" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin]
med = lambda k: statistics.median(float(r[k]) for r in rows)
print(f"  {sys.argv[1]}: {med(2):.0f} req/s, {med(3):.3f} ms CPU/request, {med(4):.0f} fuel/request")
' "${BINS[$i]}"
done
