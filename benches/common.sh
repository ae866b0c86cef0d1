# Shared by the shell benches (sourced, not run).

# Stores the python-3.12 runtime in the bench store: its interpreter from a verified copy an
# earlier bench or test run kept, else from its sources by hash (and keeps a copy for the next
# run). Needs ROOT, CACHE and STORE set and `aw` (the binary on STORE); $1 names the bench in
# messages.
store_python_runtime() {
    local sha copy="" c
    sha=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["interpreter"]["sha256"])' \
        "$ROOT/runtimes/python-3.12/runtime.json")
    for c in "$CACHE/interpreter/$sha" "$ROOT/target/tmp/aleph-wasm-test-cache/$sha"; do
        [ -f "$c" ] && { copy="$c"; break; }
    done
    if [ -n "$copy" ]; then
        aw runtime fetch python-3.12 --file "$copy" >/dev/null
    else
        echo "$1: fetching the python-3.12 interpreter by hash" >&2
        aw runtime fetch python-3.12 >/dev/null
        mkdir -p "$CACHE/interpreter"
        cp "$STORE/objects/sha256/${sha:0:2}/$sha" "$CACHE/interpreter/$sha"
    fi
}
