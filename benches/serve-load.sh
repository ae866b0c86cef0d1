#!/usr/bin/env bash
# Load bench: `aleph-wasm serve` against native CPython + uvicorn on the same ASGI app, same
# load generator, same machine, one run.
#
# For each vcpus value (default "1 2"):
#   1. aleph-wasm: the release binary serves examples/python-hello (a PROGRAM message with
#      resources.vcpus = N, warm instances kept; its snapshot built beforehand, so no background
#      build runs during the measurement) on a loopback port;
#   2. native: the same app under uvicorn with N worker processes, in a venv under target/;
#   both get a warm-up (then a pause, so requests cut off by its end drain), then
#   `wrk -t2 -c64 -d30s --latency` on `GET /?name=load`. A run with any non-2xx answer or socket
#   error fails the bench. Throughput (req/s), p50 and p99 latency, and the server's CPU time
#   per request (all its processes and threads) are printed side by side with the aleph-wasm /
#   native ratios. Other load on the machine skews both sides: the 1-minute load average before
#   each run is printed too.
#
# `--app django` runs examples/python-django instead (Django from PyPI, pinned by the example's
# requirements.txt, vendored into a copy under target/ for aleph-wasm and installed into the venv
# for uvicorn; its database migrated before the measurement on both sides) and asks for its
# notes page, `GET /`: a sync view, an ORM query on sqlite, a template with a CSRF token.
#
# `--runtime python-3.11-pydantic` runs the aleph-wasm side on that runtime (CPython 3.11 built
# from registry sources, `runtimes/build/`) instead of python-3.12 (the prebuilt interpreter);
# both share one bootstrap. The native side is the venv's CPython either way (printed).
#
# Usage: benches/serve-load.sh [--app hello|django] [--runtime NAME] [--duration SECONDS]
#                              [--connections N] [--vcpus "1 2"]
# Needs: wrk (Debian: apt-get install wrk), python3 with venv and pip (uvicorn comes from PyPI).
set -euo pipefail

DURATION=30
CONNECTIONS=64
VCPUS_LIST="1 2"
APP=hello
RUNTIME=python-3.12
while [ $# -gt 0 ]; do
    case "$1" in
        --app) APP="$2"; shift 2 ;;
        --runtime) RUNTIME="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --vcpus) VCPUS_LIST="$2"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "serve-load: unknown argument $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNTIME_PY=$(sed -E 's/^python-([0-9]+\.[0-9]+).*/\1/' <<<"$RUNTIME") # what vendored packages target
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
WORK="$ROOT/target/serve-load"
CACHE="$ROOT/target/aleph-wasm-bench-cache"
VENV="$WORK/venv"
THREADS=2
UVICORN_REQ="uvicorn[standard]==0.35.0"
case "$APP" in
    hello)
        APP_DIR="$ROOT/examples/python-hello"
        ENTRYPOINT="main:app"
        PATH_QUERY="/?name=load"
        CREATE_ARGS=()
        ;;
    django)
        APP_DIR="$WORK/django-app" # the example with its packages (made below)
        ENTRYPOINT="site_config.asgi:application"
        PATH_QUERY="/"
        CREATE_ARGS=(--volume persistent:notes-db:/var/lib/notes:16 --memory 256 --seconds 30)
        export NOTES_DATA_DIR="$WORK/django-native" # uvicorn's database (aleph-wasm's is in the volume)
        ;;
    *) echo "serve-load: --app is hello or django, not $APP" >&2; exit 2 ;;
esac

command -v wrk >/dev/null || { echo "serve-load: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "serve-load: curl is not installed" >&2; exit 2; }

echo "serve-load: building the release binary" >&2
(cd "$ROOT" && cargo build --release -q -p aleph-wasm)
BIN="$ROOT/target/release/aleph-wasm"

rm -rf "$WORK/store" "$WORK/logs"
mkdir -p "$WORK/logs" "$CACHE/interpreter" "$CACHE/modules"
STORE="$WORK/store"
aw() { "$BIN" --store "$STORE" --module-cache "$CACHE/modules" "$@"; }

# The interpreter by hash: a verified copy kept by an earlier bench or test run, else its sources.
store_python_runtime serve-load "$RUNTIME"

# The native side: uvicorn from PyPI in a venv of its own.
ensure_uvicorn serve-load
if [ "$APP" = django ]; then
    REQS="$ROOT/examples/python-django/requirements.txt"
    echo "serve-load: Django from PyPI ($(tr '\n' ' ' <"$REQS")) for both sides" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    rm -rf "$APP_DIR" "$NOTES_DATA_DIR"
    cp -r "$ROOT/examples/python-django" "$APP_DIR"
    python3 -m pip install -q --disable-pip-version-check --target "$APP_DIR/packages" \
        --only-binary=:all: --platform any --python-version "$RUNTIME_PY" --implementation py --abi none \
        -r "$REQS"
    mkdir -p "$NOTES_DATA_DIR"
    (cd "$APP_DIR" && "$VENV/bin/python" manage.py migrate -v0)
fi
PY_VERSION=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')
UVICORN_VERSION=$("$VENV/bin/python" -c 'import uvicorn; print(uvicorn.__version__)')

wait_ready() { # URL LOGFILE
    for _ in $(seq 1 600); do
        if curl -fs -o /dev/null --max-time 60 "$1"; then return 0; fi
        sleep 0.1
    done
    echo "serve-load: $1 never answered; log:" >&2
    cat "$2" >&2
    return 1
}

# CPU clock ticks used so far by PID and its direct children (threads included).
cpu_ticks() { # PID
    local total=0 p t
    for p in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        # Fields 14 and 15 of /proc/PID/stat (12 and 13 after the parenthesised name): utime, stime.
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || true)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# Runs wrk on URL against server PID; prints
# "req/s p50_ms p99_ms non2xx socket_errors cpu_ms_per_request load_average".
load() { # URL NAME PID
    local out="$WORK/logs/wrk-$2.txt" before after requests
    wrk -t"$THREADS" -c"$CONNECTIONS" -d5s "$1" >/dev/null # warm-up: instances boot, caches fill
    sleep 3
    local loadavg
    loadavg=$(cut -d' ' -f1 /proc/loadavg)
    before=$(cpu_ticks "$3")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency "$1" >"$out"
    after=$(cpu_ticks "$3")
    requests=$(awk '/requests in/ { print $1 }' "$out")
    awk -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" -v la="$loadavg" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        /Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %.2f %.2f %d %d %.3f %s\n", rps, p50, p99, non2xx, sock, ticks * 1000 / hz / n, la }
    ' "$out"
}

RESULTS=()
FAILED=0
for V in $VCPUS_LIST; do
    # aleph-wasm: the hello program with resources.vcpus = V.
    PROGRAM=$(aw program create "$APP_DIR" --entrypoint "$ENTRYPOINT" --vcpus "$V" --runtime "$RUNTIME" \
        "${CREATE_ARGS[@]}" | tail -n1)
    # The program's snapshot is built now, into the shared module cache, so that no build (the
    # node makes them in the background) runs during the measurement.
    aw --snapshots wait run "$PROGRAM" --request "GET $PATH_QUERY" >/dev/null
    PORT=$(free_port)
    LOG="$WORK/logs/aleph-wasm-$APP-vcpus$V.log"
    # Started directly (not through `aw`), so $! is the server itself.
    "$BIN" --store "$STORE" --module-cache "$CACHE/modules" serve --listen "127.0.0.1:$PORT" \
        >"$LOG" 2>&1 &
    PIDS+=($!)
    URL="http://127.0.0.1:$PORT/vm/$PROGRAM$PATH_QUERY"
    wait_ready "$URL" "$LOG"
    echo "serve-load: aleph-wasm, vcpus $V: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s" >&2
    read -r A_RPS A_P50 A_P99 A_NON2XX A_SOCK A_CPU A_LOAD < <(load "$URL" "aleph-wasm-$APP-vcpus$V" "${PIDS[-1]}")
    curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/logs/metrics-$APP-vcpus$V.txt" || true
    kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'

    # Native: uvicorn with V worker processes.
    PORT=$(free_port)
    LOG="$WORK/logs/uvicorn-$APP-workers$V.log"
    "$VENV/bin/uvicorn" "$ENTRYPOINT" --app-dir "$APP_DIR" --host 127.0.0.1 --port "$PORT" \
        --workers "$V" --no-access-log --log-level warning >"$LOG" 2>&1 &
    PIDS+=($!)
    URL="http://127.0.0.1:$PORT$PATH_QUERY"
    wait_ready "$URL" "$LOG"
    echo "serve-load: uvicorn, $V worker(s): wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s" >&2
    read -r N_RPS N_P50 N_P99 N_NON2XX N_SOCK N_CPU N_LOAD < <(load "$URL" "uvicorn-$APP-workers$V" "${PIDS[-1]}")
    kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'

    for e in "$A_NON2XX" "$A_SOCK" "$N_NON2XX" "$N_SOCK"; do
        [ "$e" = 0 ] || FAILED=1
    done
    RESULTS+=("$V $A_RPS $A_P50 $A_P99 $A_NON2XX $A_SOCK $A_CPU $A_LOAD $N_RPS $N_P50 $N_P99 $N_NON2XX $N_SOCK $N_CPU $N_LOAD")
done

echo
echo "serve-load: examples/python-$APP, GET $PATH_QUERY, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $(nproc) cores"
echo "aleph-wasm: release build, runtime $RUNTIME, warm instances kept (idle timeout 300 s), resources.vcpus = N"
echo "native:     CPython $PY_VERSION, uvicorn $UVICORN_VERSION ($UVICORN_REQ), N worker processes"
printf '%-24s %9s %8s %8s %8s %8s %11s %6s\n' "" "req/s" "p50 ms" "p99 ms" "non-2xx" "sock err" "CPU ms/req" "load"
for r in "${RESULTS[@]}"; do
    read -r V A_RPS A_P50 A_P99 A_NON2XX A_SOCK A_CPU A_LOAD N_RPS N_P50 N_P99 N_NON2XX N_SOCK N_CPU N_LOAD <<<"$r"
    printf '%-24s %9.1f %8.2f %8.2f %8d %8d %11.3f %6s\n' "aleph-wasm (vcpus $V)" "$A_RPS" "$A_P50" "$A_P99" "$A_NON2XX" "$A_SOCK" "$A_CPU" "$A_LOAD"
    printf '%-24s %9.1f %8.2f %8.2f %8d %8d %11.3f %6s\n' "uvicorn ($V worker(s))" "$N_RPS" "$N_P50" "$N_P99" "$N_NON2XX" "$N_SOCK" "$N_CPU" "$N_LOAD"
    awk -v a="$A_RPS" -v n="$N_RPS" -v ap="$A_P99" -v np="$N_P99" -v ac="$A_CPU" -v nc="$N_CPU" -v v="$V" 'BEGIN {
        printf "%-24s throughput %.2fx, p99 %.2fx, CPU per request %.2fx (aleph-wasm / native)\n", "ratio (N = " v ")", a / n, ap / np, ac / nc
    }'
done
if [ "$FAILED" != 0 ]; then
    echo "serve-load: FAILED: some requests were not answered 2xx (see $WORK/logs/)" >&2
    exit 1
fi
echo "serve-load: zero errors"
