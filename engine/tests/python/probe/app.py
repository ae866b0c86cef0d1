"""The probe: one raw ASGI app whose routes exercise the runtime for engine/tests/python.rs.

Every route answers JSON. Module-level state (``INSTANCE``, ``COUNT``) tells the tests which
instance served a request and how many requests it served. When ``/state`` is mounted (a
persistent volume), lifespan startup and shutdown append a line to ``/state/lifespan.log``.
"""

import asyncio
import hashlib
import json
import os
import sys
import time

INSTANCE = os.urandom(8).hex()
if os.environ.get("PROBE_ABORT_AT_IMPORT"):
    os.abort()  # the interpreter crashes (a wasm trap) while the app loads
COUNT = 0
STARTED = False  # set by lifespan startup
LOG = "/state/lifespan.log"


def _mark(event):
    if os.path.isdir("/state"):
        with open(LOG, "a") as f:
            f.write(f"{event} {INSTANCE}\n")


async def _lifespan(scope, receive, send):
    global STARTED
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            STARTED = True
            scope["state"]["greeting"] = "from lifespan"
            _mark("startup")
            print("lifespan startup", INSTANCE)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _mark("shutdown")
            print("lifespan shutdown", INSTANCE, file=sys.stderr)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _json(send, value, status=200):
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _b(value):
    """bytes → a tagged str (so the test can check the type as well as the value)."""
    return {"bytes": value.decode("latin-1")} if isinstance(value, bytes) else {"other": repr(value)}


async def scope_route(scope, receive, send):
    out = {k: v for k, v in scope.items() if k not in ("state", "raw_path", "query_string", "headers")}
    out["raw_path"] = _b(scope["raw_path"])
    out["query_string"] = _b(scope["query_string"])
    out["headers"] = [[_b(k), _b(v)] for k, v in scope["headers"]]
    out["headers_are_tuples"] = all(isinstance(h, (tuple, list)) and len(h) == 2 for h in scope["headers"])
    out["client_type"] = type(scope.get("client")).__name__
    out["server_type"] = type(scope.get("server")).__name__
    out["state"] = dict(scope.get("state", {}))
    out["started"] = STARTED
    await _json(send, out)


async def body_route(scope, receive, send):
    events, digest, total = [], hashlib.sha256(), 0
    while True:
        message = await receive()
        events.append({"type": message["type"], "size": len(message.get("body", b"")),
                       "more_body": message.get("more_body", False)})
        digest.update(message.get("body", b""))
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await _json(send, {"events": events, "total": total, "sha256": digest.hexdigest()})


async def stream_route(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(5):
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": f"part {i}\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"end\n", "more_body": False})


async def disconnect_route(scope, receive, send):
    # The body (empty) first; then a listener that must not see anything until the response
    # is complete, and then sees http.disconnect.
    first = await receive()
    listener = asyncio.ensure_future(receive())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await asyncio.sleep(0.02)
    early = listener.done()
    await send({"type": "http.response.body", "body": b"b", "more_body": False})
    late = await asyncio.wait_for(listener, 1)
    again = await asyncio.wait_for(receive(), 1)
    print(f"first={first['type']} early={early} late={late['type']} again={again['type']}")


async def asyncio_route(scope, receive, send):
    out = {}
    t0 = time.monotonic()
    await asyncio.sleep(0.05)
    out["slept"] = time.monotonic() - t0

    async def work(n, delay):
        await asyncio.sleep(delay)
        return n * n

    out["gather"] = await asyncio.gather(work(1, 0.03), work(2, 0.01), work(3, 0.02))
    task = asyncio.create_task(work(4, 0.01))
    out["task"] = await task
    try:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.05)
        out["wait_for"] = "no timeout"
    except asyncio.TimeoutError:
        out["wait_for"] = "TimeoutError"
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
        out["timeout_cm"] = "no timeout"
    except TimeoutError:
        out["timeout_cm"] = "TimeoutError"
    out["wait_for_ok"] = await asyncio.wait_for(work(5, 0.01), timeout=1)
    async with asyncio.TaskGroup() as tg:
        a, b = tg.create_task(work(6, 0.02)), tg.create_task(work(7, 0.01))
    out["taskgroup"] = [a.result(), b.result()]
    queue = asyncio.Queue()

    async def producer():
        for i in range(3):
            await asyncio.sleep(0.005)
            await queue.put(i)

    prod = asyncio.create_task(producer())
    out["queue"] = [await queue.get() for _ in range(3)]
    await prod
    cancelled = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    cancelled.cancel()
    try:
        await cancelled
    except asyncio.CancelledError:
        out["cancelled"] = True
    out["to_thread"] = await asyncio.to_thread(lambda: "inline")
    out["elapsed"] = time.monotonic() - t0
    await _json(send, out)


async def env_route(scope, receive, send):
    await _json(send, dict(os.environ))


def _try(action):
    try:
        result = action()
        return f"ok: {result!r:.80}"
    except BaseException as exc:
        return type(exc).__name__


async def files_route(scope, receive, send):
    def read(path):
        with open(path) as f:
            return f.read(100)

    def write(path):
        with open(path, "w") as f:
            return f.write("x")

    out = {
        "/etc/passwd": _try(lambda: read("/etc/passwd")),
        "../../../../etc/passwd": _try(lambda: read("../../../../etc/passwd")),
        "/opt/code/../../etc/passwd": _try(lambda: read("/opt/code/../../etc/passwd")),
        "/proc/self/environ": _try(lambda: read("/proc/self/environ")),
        "listdir /etc": _try(lambda: os.listdir("/etc")),
        "write /opt/code/x": _try(lambda: write("/opt/code/x")),
        "write /tmp/x": _try(lambda: write("/tmp/x")),
        "own code": _try(lambda: read("app.py")[:10]),
        "cwd": os.getcwd(),
    }
    await _json(send, out)


async def count_route(scope, receive, send):
    global COUNT
    COUNT += 1
    await _json(send, {"instance": INSTANCE, "count": COUNT, "started": STARTED})


async def sleep_route(scope, receive, send):
    global COUNT
    COUNT += 1
    await asyncio.sleep(float(scope["query_string"] or b"0.3"))
    await _json(send, {"instance": INSTANCE, "count": COUNT})


async def tally_route(scope, receive, send):
    """A read-modify-write of /state/tally that holds the instance for 20 ms in between (a
    blocking sleep): two instances at once would lose updates."""
    try:
        with open("/state/tally") as f:
            n = int(f.read() or 0)
    except FileNotFoundError:
        n = 0
    time.sleep(0.02)
    with open("/state/tally", "w") as f:
        f.write(str(n + 1))
    await _json(send, {"instance": INSTANCE, "count": n + 1})


async def loop_route(scope, receive, send):
    while True:
        pass


async def bomb_route(scope, receive, send):
    hoard = []
    while True:
        hoard.append(bytearray(1 << 20))


async def exit_route(scope, receive, send):
    os._exit(3)


async def abort_route(scope, receive, send):
    os.abort()


async def bad_send_route(scope, receive, send):
    await send({"output": "hola!"})  # not an ASGI message (the seed's inline program does this)


async def raise_route(scope, receive, send):
    print("about to fail")
    raise ValueError("probe failure: secret-detail-42")


ROUTES = {
    "/scope": scope_route, "/body": body_route, "/stream": stream_route,
    "/disconnect": disconnect_route, "/asyncio": asyncio_route, "/env": env_route,
    "/files": files_route, "/count": count_route, "/sleep": sleep_route, "/tally": tally_route, "/loop": loop_route,
    "/bomb": bomb_route, "/exit": exit_route, "/abort": abort_route, "/raise": raise_route,
    "/bad-send": bad_send_route,
}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(scope, receive, send)
    route = ROUTES.get(scope["path"])
    if route is None:
        return await _json(send, {"error": "no route", "path": scope["path"]}, 404)
    await route(scope, receive, send)
