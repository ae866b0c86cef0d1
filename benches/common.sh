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
