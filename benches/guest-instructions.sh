#!/usr/bin/env bash
# The bootstrap's request path in machine instructions per request, under native CPython:
# benches/python/profile_guest.py run under callgrind (Debian's `valgrind`) for 1 000 and for
# 3 000 requests; the difference over 2 000 is the cost of one request, start-up excluded.
# Counts, unlike timings, repeat to a few instructions from run to run, so a change to boot.py
# can be priced before any build of the engine: run it on a copy with --boot.
#
# Usage: benches/guest-instructions.sh [--python PYTHON] [profile_guest.py options...]
#   e.g. benches/guest-instructions.sh                      # examples/python-hello, GET /?name=aleph
#        benches/guest-instructions.sh --path /nope         # the app answers 404 at once
#        benches/guest-instructions.sh --boot /tmp/boot-copy
#        benches/guest-instructions.sh --python python3.11  # python-3.11-pydantic's CPython
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=python3.12
if [ "${1:-}" = "--python" ]; then
    PYTHON="$2"
    shift 2
fi
command -v valgrind >/dev/null || { echo "guest-instructions: needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
count() {
    local n=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PYTHON" \
        "$ROOT/benches/python/profile_guest.py" --requests "$n" "$@" 2>&1 |
        awk '/Collected :/ {print $4}'
}
a=$(count 1000 "$@")
b=$(count 3000 "$@")
[ -n "$a" ] && [ -n "$b" ] || { echo "guest-instructions: callgrind gave no count" >&2; exit 1; }
echo "$PYTHON $*: $(( (b - a) / 2000 )) instructions per request"
