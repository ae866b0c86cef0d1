# Shared by the shell benches (sourced, not run).

# Stores a Python runtime in the bench store (`python-3.12` unless $2 names another shipped one,
# e.g. `python-3.11-pydantic`): its interpreter from a verified copy an earlier bench or test run
# kept, else from its sources by hash (and keeps a copy for the next run). An interpreter built
# from registry sources (its manifest lists no download) is built by its build script, as the
# tests do: about 4 minutes, as root. Needs ROOT, CACHE and STORE set and `aw` (the binary on
# STORE); $1 names the bench in messages.
store_python_runtime() {
    local runtime=${2:-python-3.12} manifest sha build copy="" c work
    manifest="$ROOT/runtimes/$runtime/runtime.json"
    [ -f "$manifest" ] || { echo "$1: no runtime $runtime (runtimes/*/runtime.json)" >&2; return 2; }
    read -r sha build < <(python3 -c 'import json,sys; i=json.load(open(sys.argv[1]))["interpreter"]
print(i["sha256"], "build" if "build" in i and not i.get("sources") else "fetch")' "$manifest")
    for c in "$CACHE/interpreter/$sha" "$ROOT/target/tmp/aleph-wasm-test-cache/$sha"; do
        [ -f "$c" ] && { copy="$c"; break; }
    done
    if [ -z "$copy" ] && [ "$build" = build ]; then
        work="$ROOT/target/tmp/aleph-wasm-test-cache/build-$runtime"
        echo "$1: building the $runtime interpreter from its sources (log: $work.log)" >&2
        WORK="$work" bash "$ROOT/runtimes/build/$runtime/build.sh" >"$work.log" 2>&1 ||
            { tail -n 20 "$work.log" >&2; return 1; }
        echo "$sha  $work/out/python.wasm" | sha256sum -c --quiet ||
            { echo "$1: the built $runtime interpreter is not the pinned one ($sha)" >&2; return 1; }
        copy="$work/out/python.wasm"
    fi
    if [ -n "$copy" ]; then
        aw runtime fetch "$runtime" --file "$copy" >/dev/null
    else
        echo "$1: fetching the $runtime interpreter by hash" >&2
        aw runtime fetch "$runtime" >/dev/null
    fi
    if [ ! -f "$CACHE/interpreter/$sha" ]; then
        mkdir -p "$CACHE/interpreter"
        cp "$STORE/objects/sha256/${sha:0:2}/$sha" "$CACHE/interpreter/$sha"
    fi
}

# A free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The servers a bench started: their PIDs go into PIDS, and they are stopped when it exits.
PIDS=()
stop_servers() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_servers EXIT

# uvicorn ($UVICORN_REQ) from PyPI in the venv $VENV, installed the first time; $1 names the bench.
ensure_uvicorn() {
    if [ ! -x "$VENV/bin/uvicorn" ]; then
        echo "$1: installing $UVICORN_REQ into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$UVICORN_REQ"
    fi
}
