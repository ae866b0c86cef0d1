"""Native CPython baseline for the ASGI latency bench.

Usage:
  native_asgi.py first CODE_DIR MODULE:ATTR   -> import the app, serve one request, print its
                                                 latency (the caller times the whole process)
  native_asgi.py warm CODE_DIR MODULE:ATTR N  -> serve N requests in one process, print one
                                                 latency in microseconds per line
It drives the app the way a minimal ASGI server does: a complete HTTP scope, one body event,
the response assembled in memory.
"""
import asyncio
import importlib
import sys
import time


def load(code_dir, entry):
    sys.path.insert(0, code_dir)
    module, _, attr = entry.partition(":")
    app = importlib.import_module(module)
    for part in attr.split("."):
        app = getattr(app, part)
    return app


SCOPE = {
    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
    "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
    "root_path": "", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
    "server": ("localhost", 80),
}


async def one(app):
    sent = []
    done = asyncio.Event()

    async def receive():
        if not sent:
            sent.append(None)
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    out = []

    async def send(message):
        out.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(dict(SCOPE), receive, send)
    return out


def main():
    mode, code_dir, entry = sys.argv[1:4]
    app = load(code_dir, entry)
    loop = asyncio.new_event_loop()
    if mode == "first":
        loop.run_until_complete(one(app))
        return
    n = int(sys.argv[4])
    for _ in range(n):
        t = time.perf_counter()
        loop.run_until_complete(one(app))
        print(int((time.perf_counter() - t) * 1e6))


main()
