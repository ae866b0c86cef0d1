"""The guest's request path without the engine: runs the python-3.12 bootstrap (boot.py) under
native CPython and serves it HTTP frames for an app, one request per loop turn as a server sees
them one at a time, then prints the time per request -- and, with --profile, cProfile's table.

Natively the same Python runs several times faster than in the guest, but in about the same
proportions, so the table says which piece of the bootstrap is worth pricing in fuel
(benches/README.md, "Price one piece of the bootstrap in fuel"):

    python3.12 benches/python/profile_guest.py                    # examples/python-hello
    python3.12 benches/python/profile_guest.py --profile --requests 20000
    python3.12 benches/python/profile_guest.py --app examples/python-json-api --entrypoint main:app

The frames come from a file (fd 0, read one request at a time); the bootstrap's frames go to
/dev/null. Use CPython 3.12, as in the guest: eager task start is 3.12's.
"""

import argparse
import cProfile
import importlib.util
import os
import pstats
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default=os.path.join(ROOT, "examples", "python-hello"),
                        help="the app's code directory (default: examples/python-hello)")
    parser.add_argument("--entrypoint", default="main:app")
    parser.add_argument("--path", default="/", help="the request's path (default: /)")
    parser.add_argument("--query", default="name=aleph", help="its query string")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's table")
    parser.add_argument("--top", type=int, default=30, help="rows of the table (default 30)")
    parser.add_argument("--boot", default=os.path.join(ROOT, "runtimes", "python-3.12"),
                        help="the bootstrap's directory (default: runtimes/python-3.12): a copy "
                        "to price a change in it")
    args = parser.parse_args()

    os.environ["ALEPH_WASM_ENTRYPOINT"] = args.entrypoint
    os.environ["ALEPH_WASM_CODE"] = os.path.abspath(args.app)
    spec = importlib.util.spec_from_file_location(
        "aleph_wasm_boot", os.path.join(os.path.abspath(args.boot), "boot.py"))
    boot = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = boot
    report = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # fd 1 carries the bootstrap's frames
    spec.loader.exec_module(boot)
    boot._boot()

    # One request without a body, as the host sends it: HTTP_EMPTY (head, path, text fields, raw
    # path, query, headers); HTTP and an empty BODY for a bootstrap older than AW4.
    text = b"\0".join([b"GET", b"http", b"1.1", b"", b"127.0.0.1", b"localhost"])
    headers = [b"host", b"localhost:8080", b"user-agent", b"wrk", b"accept", b"*/*"]
    path = args.path.encode()
    raw = b"\0".join([path, args.query.encode()] + headers)
    head = boot._HTTP_HEAD.pack(len(path), len(text), len(headers) // 2, 40000, 8080)
    payload = head + path + text + raw
    frames = tempfile.TemporaryFile()
    size = 0
    for id in range(1, args.requests + 1):
        if hasattr(boot, "HTTP_EMPTY"):
            one = boot._frame(boot.HTTP_EMPTY, id, payload)
        else:
            one = boot._frame(boot.HTTP, id, payload) + boot._frame(boot.BODY, id, b"\x00")
        size = len(one)
        frames.write(one)
    frames.seek(0)
    os.dup2(frames.fileno(), 0)
    boot._READ_SIZE = size  # a read takes one request: one request per loop turn

    profile = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profile:
        profile.enable()
    boot.__aleph_wasm__.run("00" * 32, 1)  # serves until the frames end
    if profile:
        profile.disable()
    elapsed = time.perf_counter() - start

    os.dup2(report, 1)
    out = open(1, "w", closefd=False)
    note = " (under cProfile)" if profile else ""
    out.write(f"{args.requests} requests, {elapsed / args.requests * 1e6:.1f} us a request"
              f"{note}\n")
    if profile:
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    out.flush()


if __name__ == "__main__":
    main()
