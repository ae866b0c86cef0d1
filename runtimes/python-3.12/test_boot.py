"""Checks for boot.py, playing the host's part of the AW1 channel. Not run by the Rust tests.

    python3 test_boot.py                       # native CPython: `python3 -i boot.py`, one line at a time
    python3 test_boot.py --wasi PYTHON.wasm    # the real WASI interpreter under wasmtime-py
    python3 test_boot.py --packages DIR        # also a Starlette app (DIR holds starlette, anyio, ...)
    python3 test_boot.py -k NAME               # only the scenarios whose name contains NAME
    python3 test_boot.py --no-unbuffered       # without PYTHONUNBUFFERED (C stdin then buffered)

Each scenario writes an app into a temp dir, boots the guest and sends it events; the answers
are the frames up to each "done". Every stdout line must be a frame.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = os.path.join(HERE, "boot.py")
MAGIC = b"\x1eAW1 "


def b64(data):
    return base64.b64encode(data).decode()


def line_for(event):
    return f'__aleph_wasm__.serve("{b64(json.dumps(event).encode())}")\n'.encode()


def parse_frame(line):
    assert line.startswith(MAGIC) and line.endswith(b"\n"), f"not a frame: {line[:120]!r}"
    line[len(MAGIC):-1].decode("ascii")  # ASCII-only
    return json.loads(line[len(MAGIC):-1])


def http(path="/", method="GET", headers=(), chunks=(), query=b""):
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": b64(path.encode()),
        "query_string": b64(query), "root_path": "", "client": ["127.0.0.1", 5555],
        "server": ["localhost", 8080],
        "headers": [[b64(k), b64(v)] for k, v in [(b"host", b"localhost")] + list(headers)],
    }
    return {"type": "http", "scope": scope, "body_chunks": [b64(c) for c in chunks]}


BASE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
LIFESPAN_UP = {"type": "lifespan", "event": "startup"}
LIFESPAN_DOWN = {"type": "lifespan", "event": "shutdown"}


class Native:
    """The guest as a subprocess of native CPython, driven one line at a time."""

    def __init__(self, code, env):
        full = {"PATH": os.environ.get("PATH", ""), **BASE_ENV, **env}
        self.proc = subprocess.Popen([sys.executable, "-i", BOOT], cwd="/", env=full,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.inp, self.out = self.proc.stdin, self.proc.stdout
        self.boot = self._read(("ready", "boot_error"))

    def _read(self, last):
        frames = []
        while True:
            line = self.out.readline()
            assert line, f"guest ended; stderr: {self.proc.stderr.read().decode()[-2000:]}"
            frames.append(parse_frame(line))
            if frames[-1]["t"] in last:
                return frames

    def send(self, event):
        raw = event.pop("_raw", None)
        if raw is not None:
            event["body_stdin"] = len(raw)
        self.inp.write(line_for(event))
        self.inp.flush()
        if not raw:
            return self._read(("done",))
        frames = self._read(("read", "done"))
        assert frames[-1] == {"t": "read", "bytes": len(raw)}, frames[-1]
        self.inp.write(raw)
        self.inp.flush()
        return frames + self._read(("done",))

    def close(self):
        self.inp.close()
        for line in self.out.read().splitlines(keepends=True):
            parse_frame(line)
        self.proc.wait(30)
        return self.proc.stderr.read().decode()


class Wasi(Native):
    """The real CPython WASI build under wasmtime-py, in a helper process (this script with
    --run-wasm) whose guest stdin/stdout are FIFOs: driven one line at a time, like the host."""

    def __init__(self, code, env):
        self.tmp = tempfile.mkdtemp(prefix="aw-wasi-")
        shutil.copy(BOOT, os.path.join(self.tmp, "boot.py"))
        fifo_in, fifo_out = os.path.join(self.tmp, "in"), os.path.join(self.tmp, "out")
        os.mkfifo(fifo_in)
        os.mkfifo(fifo_out)
        env = {k: v.replace(code, "/opt/code") for k, v in {**BASE_ENV, **env}.items()}
        config = {"wasm": ARGS.wasi, "env": env, "stdin": fifo_in, "stdout": fifo_out,
                  "dirs": [[self.tmp, "/opt/aleph-wasm"], [code, "/opt/code"]],
                  "argv": ["python", "-i", "/opt/aleph-wasm/boot.py"]}
        self.proc = subprocess.Popen([sys.executable, __file__, "--run-wasm", json.dumps(config)],
                                     stderr=subprocess.PIPE)
        self.inp = open(fifo_in, "wb", buffering=0)
        self.out = open(fifo_out, "rb")
        self.boot = self._read(("ready", "boot_error"))

    def close(self):
        try:
            return super().close()
        finally:
            self.out.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_wasm(config):
    """The helper process: run the guest under wasmtime-py (compiled modules are cached)."""
    import wasmtime
    engine_config = wasmtime.Config()
    engine_config.cache = True
    engine = wasmtime.Engine(engine_config)
    wasi = wasmtime.WasiConfig()
    wasi.argv = config["argv"]
    wasi.env = list(config["env"].items())
    for host, guest in config["dirs"]:
        wasi.preopen_dir(host, guest)
    wasi.stdin_file = config["stdin"]
    wasi.stdout_file = config["stdout"]
    wasi.inherit_stderr()
    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    module = wasmtime.Module.from_file(engine, config["wasm"])
    try:
        linker.instantiate(store, module).exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit:
        sys.exit(exit.code)


def frames_of(answer, kind):
    return [f for f in answer if f["t"] == kind]


def response(answer):
    """(status, headers dict, body bytes, body frame count) of an answer."""
    start = frames_of(answer, "start")
    assert len(start) == 1, answer
    bodies = frames_of(answer, "body")
    assert bodies and not bodies[-1]["more_body"], answer
    headers = {base64.b64decode(k): base64.b64decode(v) for k, v in start[0]["headers"]}
    return (start[0]["status"], headers, b"".join(base64.b64decode(b["body"]) for b in bodies),
            len(bodies))


def logs(answer, stream):
    return "".join(f["data"] for f in answer if f["t"] == "log" and f["stream"] == stream)


# ------------------------------------------------------------------------------------------
# Scenarios: name -> (files, entrypoint, plain file or None, events, check(boot, answers))
# ------------------------------------------------------------------------------------------

SCENARIOS = {}


def scenario(name, files, entrypoint, events, plain=None, env=None):
    def register(check):
        SCENARIOS[name] = (files, entrypoint, plain, events, check, env or {})
        return check
    return register


HELLO = """
async def app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


@scenario("hello", {"main.py": HELLO}, "main:app",
          [http(), http(), LIFESPAN_UP, http(), LIFESPAN_DOWN])
def _(boot, a):
    assert boot[-1] == {"t": "ready", "asgi_version": "3.0"}, boot
    for answer in (a[0], a[1], a[3]):
        assert response(answer)[:3] == (200, {b"content-type": b"text/plain"}, b"hello")
        assert answer[-1] == {"t": "done"} and len(answer) == 3, answer
    lifespan = frames_of(a[2], "lifespan")[0]
    assert lifespan["result"] == "unsupported" and "AssertionError" in lifespan["message"], a[2]
    assert frames_of(a[4], "lifespan")[0]["result"] == "unsupported", a[4]


STREAM = """
import asyncio, time
async def app(scope, receive, send):
    done = False
    async def listen():
        msg = await receive()
        assert msg["type"] == "http.request"
        msg = await receive()
        print("disconnect", msg["type"], "after complete:", done)
    listener = asyncio.create_task(listen())
    t0 = time.monotonic()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(3):
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
    done = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await listener
    print("elapsed_ok", time.monotonic() - t0 >= 0.03)
"""


@scenario("stream", {"main.py": STREAM}, "main:app", [http(), http()])
def _(boot, a):
    for answer in a:
        status, _, body, parts = response(answer)
        assert (status, body, parts) == (200, b"part0;part1;part2;", 4), answer
        assert logs(answer, "stdout") == "disconnect http.disconnect after complete: True\nelapsed_ok True\n"


ECHO = """
import json, os, sys
async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    body, flags = b"", []
    while True:
        msg = await receive()
        body += msg["body"]
        flags.append(msg["more_body"])
        if not msg["more_body"]:
            break
    desc = {k: [type(v).__name__, repr(v)] for k, v in scope.items()}
    desc["headers"] = [[type(scope["headers"]).__name__, type(h).__name__, type(h[0]).__name__, type(h[1]).__name__, repr(h)] for h in scope["headers"]]
    env = sorted(k for k in os.environ if not k.startswith(("PYTHON", "PATH", "LC_", "PWD")))
    out = json.dumps({"body": body.decode(), "flags": flags, "scope": desc, "env": env,
                      "path0": sys.path[:3], "cwd": os.getcwd()}).encode()
    await send({"type": "http.response.start", "status": 201, "headers": [[b"x-a", b"1"], (b"x-b", bytearray(b"2"))]})
    await send({"type": "http.response.body", "body": out})
"""


@scenario("echo", {"main.py": ECHO, "packages/dep.py": "X = 1\n"}, "main:app",
          [http("/p/q", "POST", [(b"content-type", b"text/plain"), (b"x-bin", b"\xff\x00")],
                [b"ab", b"cd", b"ef"], b"a=1&b=%20"), http("/", "GET")],
          env={"MY_VAR": "hello", "ALEPH_WASM_PATHS": "/nonexistent:/also"})
def _(boot, a):
    status, headers, body, _ = response(a[0])
    assert status == 201 and headers == {b"x-a": b"1", b"x-b": b"2"}, headers
    out = json.loads(body)
    assert out["body"] == "abcdef" and out["flags"] == [True, True, False], out
    s = out["scope"]
    assert s["type"] == ["str", "'http'"] and s["method"] == ["str", "'POST'"]
    assert s["raw_path"] == ["bytes", "b'/p/q'"] and s["query_string"] == ["bytes", "b'a=1&b=%20'"]
    assert s["client"] == ["tuple", "('127.0.0.1', 5555)"] and s["server"] == ["tuple", "('localhost', 8080)"]
    assert s["asgi"][0] == "dict" and "'3.0'" in s["asgi"][1] and s["state"] == ["dict", "{}"], s
    assert s["path"] == ["str", "'/p/q'"] and s["http_version"] == ["str", "'1.1'"]
    assert s["scheme"] == ["str", "'http'"] and s["root_path"] == ["str", "''"]
    assert s["headers"] == [["list", "tuple", "bytes", "bytes", repr((b"host", b"localhost"))],
                            ["list", "tuple", "bytes", "bytes", repr((b"content-type", b"text/plain"))],
                            ["list", "tuple", "bytes", "bytes", repr((b"x-bin", b"\xff\x00"))]], s["headers"]
    assert out["env"] == ["MY_VAR"], out["env"]
    code = out["path0"][0]
    assert out["path0"] == [code, code + "/packages", "/nonexistent"] and out["cwd"] == code, out
    assert json.loads(response(a[1])[2])["flags"] == [False]


RAISE = """
async def app(scope, receive, send):
    if scope["path"] == "/late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    raise ValueError("boom")
"""


@scenario("raise", {"main.py": RAISE}, "main:app", [http("/"), http("/late"), http("/")])
def _(boot, a):
    for answer in (a[0], a[2]):
        assert [f["t"] for f in answer] == ["log", "error", "done"], answer
        assert answer[1]["message"] == "ValueError: boom"
        err = logs(answer, "stderr")
        assert "Traceback (most recent call last)" in err and 'raise ValueError("boom")' in err, err
    assert response(a[1])[2] == b"ok" and frames_of(a[1], "error")[0]["message"] == "ValueError: boom"


SEED = """
async def application(scope, receive, send):
    await send({'output': 'hola!'})
"""


@scenario("seed-plain-protocol-error", {"main.py": SEED}, "application", [http(), http()], plain="main.py")
def _(boot, a):
    assert boot[-1]["t"] == "ready", boot
    for answer in a:
        kinds = [f["t"] for f in answer]
        assert kinds == ["protocol_error", "log", "done"], answer
        assert "'output'" in answer[0]["message"] and "None" in answer[0]["message"], answer[0]
        assert "RuntimeError" in logs(answer, "stderr")


BAD_SENDS = """
async def app(scope, receive, send):
    p = scope["path"]
    try:
        if p == "/body-first":
            await send({"type": "http.response.body", "body": b"x"})
        elif p == "/twice":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.start", "status": 200})
        elif p == "/str-body":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": "text"})
        elif p == "/str-header":
            await send({"type": "http.response.start", "status": 200, "headers": [("a", "b")]})
        elif p == "/not-dict":
            await send(["nope"])
        elif p == "/no-start":
            return
        elif p == "/unfinished":
            await send({"type": "http.response.start", "status": 204, "trailers": True})
            await send({"type": "http.response.body", "body": b"", "more_body": True, "extra": 1})
            return
    except RuntimeError as e:
        print("caught:", e)
        if p in ("/body-first", "/str-header", "/not-dict"):
            await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"recovered"})
"""


@scenario("bad-sends", {"main.py": BAD_SENDS}, "main:app",
          [http(p) for p in ("/body-first", "/twice", "/str-body", "/str-header", "/not-dict", "/no-start", "/unfinished")])
def _(boot, a):
    for answer in a[:5]:
        assert len(frames_of(answer, "protocol_error")) == 1 and not frames_of(answer, "error"), answer
        assert "caught:" in logs(answer, "stdout") and response(answer)[2] == b"recovered", answer
    assert frames_of(a[5], "error")[0]["message"].endswith("without starting a response")
    assert frames_of(a[6], "start")[0]["status"] == 204
    assert frames_of(a[6], "error")[0]["message"].endswith("without completing the response")


LIFESPAN = """
import asyncio
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await asyncio.sleep(0.01)
                scope["state"]["db"] = "connected"
                scope["state"]["hits"] = []
                print("started")
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                print("bye")
                await send({"type": "lifespan.shutdown.complete"})
                return
    state = scope["state"]
    state["hits"].append(1)
    state["db"] = "changed in request"  # a copy: the next request still sees "connected"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": repr(sorted(state.items())).encode()})
"""


@scenario("lifespan-state", {"main.py": LIFESPAN}, "main:app",
          [LIFESPAN_UP, http(), http(), LIFESPAN_DOWN, LIFESPAN_DOWN])
def _(boot, a):
    assert frames_of(a[0], "lifespan") == [{"t": "lifespan", "result": "complete", "message": ""}], a[0]
    assert logs(a[0], "stdout") == "started\n"
    assert response(a[1])[2] == b"[('db', 'changed in request'), ('hits', [1])]"
    assert response(a[2])[2] == b"[('db', 'changed in request'), ('hits', [1, 1])]"
    assert frames_of(a[3], "lifespan")[0]["result"] == "complete" and logs(a[3], "stdout") == "bye\n"
    assert frames_of(a[4], "lifespan")[0]["result"] == "complete", a[4]


LIFESPAN_FAIL = """
async def app(scope, receive, send):
    msg = await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})
    raise RuntimeError("startup went wrong")
"""


@scenario("lifespan-failed", {"main.py": LIFESPAN_FAIL}, "main:app", [LIFESPAN_UP, LIFESPAN_DOWN])
def _(boot, a):
    assert frames_of(a[0], "lifespan") == [{"t": "lifespan", "result": "failed", "message": "no database"}], a[0]
    assert "startup went wrong" in logs(a[0], "stderr")
    assert frames_of(a[1], "lifespan")[0]["result"] == "failed"


ASYNCIO = """
import asyncio, time
at_import = asyncio.run(asyncio.sleep(0, result="ran at import"))
legacy_loop = asyncio.get_event_loop()
background = []

async def tick():
    while True:
        background.append(1)
        await asyncio.sleep(0.005)

async def app(scope, receive, send):
    loop = asyncio.get_running_loop()
    out = {"at_import": at_import, "same_loop": legacy_loop is loop and asyncio.get_event_loop() is loop,
           "loop": type(loop).__name__}
    t0, m0 = loop.time(), time.monotonic()
    out["monotonic"] = abs(t0 - m0) < 0.01
    out["gather"] = await asyncio.gather(asyncio.sleep(0.02, "a"), asyncio.sleep(0.01, "b"))
    try:
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    except asyncio.TimeoutError:
        out["wait_for"] = "timeout"
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        out["timeout"] = "timeout"
    ev, q, lock = asyncio.Event(), asyncio.Queue(), asyncio.Lock()
    async def producer():
        async with lock:
            for i in range(3):
                await q.put(i)
                await asyncio.sleep(0.001)
        ev.set()
    asyncio.create_task(producer())
    await ev.wait()
    out["queue"] = [q.get_nowait() for _ in range(q.qsize())]
    async with lock:
        out["lock"] = True
    out["executor"] = await loop.run_in_executor(None, sum, [1, 2, 3])
    out["to_thread"] = await asyncio.to_thread(sum, [1, 2])
    later = loop.create_future()
    loop.call_later(0.01, later.set_result, "call_later")
    out["call_later"] = await later
    if scope["path"] == "/start-bg":
        asyncio.create_task(tick())
        await asyncio.sleep(0.02)
    out["background"] = len(background)
    out["elapsed"] = loop.time() - t0
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": repr(out).encode()})
"""


@scenario("asyncio", {"main.py": ASYNCIO}, "main:app", [http("/start-bg"), http("/")])
def _(boot, a):
    import ast
    first, second = (ast.literal_eval(response(x)[2].decode()) for x in a)
    for out in (first, second):
        assert out["at_import"] == "ran at import" and out["same_loop"] and out["loop"] == "_Loop", out
        assert out["monotonic"] and out["gather"] == ["a", "b"] and out["wait_for"] == "timeout"
        assert out["timeout"] == "timeout" and out["queue"] == [0, 1, 2] and out["lock"]
        assert out["executor"] == 6 and out["to_thread"] == 3 and out["call_later"] == "call_later", out
        assert 0.05 < out["elapsed"] < 2, out
    assert first["background"] >= 2 and second["background"] > first["background"], (first, second)


PRINTS = """
import sys, logging
logging.basicConfig(level=logging.INFO)
print("printed at import")
async def app(scope, receive, send):
    print("one line")
    print("\\x1eAW1 {\\"t\\":\\"done\\"}")
    print("x" * 200000)
    print("h\\u00e9llo \\u2603 \\U0001F600 \\udcff")
    sys.stdout.buffer.write("bytes \\u00e9\\n".encode())
    print("to dunder", file=sys.__stdout__)
    try:
        input()
    except EOFError:
        print("stdin: EOF")
    logging.getLogger("app").info("logged")
    sys.stderr.write("no newline")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
    print("tail without newline", end="")
    print(sys.stdout.isatty(), sys.stdout.encoding)
"""


@scenario("prints", {"main.py": PRINTS}, "main:app", [http()])
def _(boot, a):
    assert boot[0] == {"t": "log", "stream": "stdout", "data": "printed at import\n"}, boot
    answer = a[0]
    out = logs(answer, "stdout")
    expected = ('one line\n\x1eAW1 {"t":"done"}\n' + "x" * 200000 + "\nh\u00e9llo \u2603 \U0001F600 ?\n"
                "bytes \u00e9\nto dunder\nstdin: EOF\ntail without newlineFalse utf-8\n")
    assert out == expected, out[:200]
    for f in frames_of(answer, "log"):
        assert len(f["data"].encode()) <= 65536
    assert frames_of(answer, "log")[0]["data"] == "one line\n"
    assert logs(answer, "stderr") == "INFO:app:logged\nno newline", logs(answer, "stderr")
    assert response(answer)[2] == b"ok" and answer[-1]["t"] == "done"


ASGI2 = """
class App:
    def __init__(self, scope):
        self.scope = scope
    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.scope["asgi"]["version"].encode()})

def factory(scope):
    async def instance(receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"factory"})
    return instance
"""


@scenario("asgi2-class", {"main.py": ASGI2}, "main:App", [LIFESPAN_UP, http(), LIFESPAN_DOWN])
def _(boot, a):
    assert boot[-1] == {"t": "ready", "asgi_version": "2.0"}, boot
    assert frames_of(a[0], "lifespan")[0]["result"] == "complete"
    assert response(a[1])[2] == b"2.0"
    assert frames_of(a[2], "lifespan")[0]["result"] == "complete"


@scenario("asgi2-function", {"main.py": ASGI2}, "main:factory", [http()])
def _(boot, a):
    assert boot[-1] == {"t": "ready", "asgi_version": "2.0"} and response(a[0])[2] == b"factory"


PLAIN = """
import random
if __name__ == "__main__":
    raise SystemExit("must not run as __main__")
class Handler:
    async def __call__(self, scope, receive, send):
        body = f"{__name__} {scope['type']} {scope.get('body') or scope.get('time') or ''} {random.random()}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})
class NS:
    app = Handler()
"""


@scenario("plain-dotted", {"app.py": PLAIN}, "NS.app",
          [http(), {"type": "reseed", "seed": "00ff"}, http(), {"type": "reseed", "seed": "00ff"}, http(),
           {"type": "aleph.message", "body": {"item_hash": "abc"}}, {"type": "aleph.cron", "time": 1700000000.5}],
          plain="app.py")
def _(boot, a):
    assert boot[-1] == {"t": "ready", "asgi_version": "3.0"}, boot
    assert response(a[0])[2].startswith(b"__aleph_main__ http ")
    assert a[1] == [{"t": "done"}] and a[3] == [{"t": "done"}]
    assert response(a[2])[2] == response(a[4])[2] != response(a[0])[2]
    assert response(a[5])[2].startswith(b"__aleph_main__ aleph.message {'item_hash': 'abc'} ")
    assert response(a[6])[2].startswith(b"__aleph_main__ aleph.cron 1700000000.5 ")


@scenario("boot-error", {"main.py": "import does_not_exist\n"}, "main:app", [http()])
def _(boot, a):
    assert boot[-1]["t"] == "boot_error", boot
    assert boot[-1]["message"] == "ModuleNotFoundError: No module named 'does_not_exist'"
    assert "Traceback" in boot[-1]["traceback"] and "import does_not_exist" in boot[-1]["traceback"]
    assert [f["t"] for f in a[0]] == ["error", "done"]


@scenario("boot-missing-attr", {"main.py": "x = 1\n"}, "main:nope", [])
def _(boot, a):
    assert boot[-1]["t"] == "boot_error" and "AttributeError" in boot[-1]["message"], boot


DEADLOCK = """
async def app(scope, receive, send):
    if scope["path"] == "/stuck":
        await receive()
        await receive()  # waits for a disconnect that only a response would bring
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"fine"})
"""


@scenario("deadlock", {"main.py": DEADLOCK}, "main:app",
          [http("/stuck"), http("/"), {"type": "nonsense"}, http("/")])
def _(boot, a):
    errors = frames_of(a[0], "error")
    assert len(errors) == 1 and errors[0]["message"].startswith("RuntimeError: deadlock"), a[0]
    assert "Request aborted" in logs(a[0], "stderr") and a[0][-1]["t"] == "done"
    assert response(a[1])[2] == b"fine" and response(a[3])[2] == b"fine"
    assert frames_of(a[2], "error")[0]["message"] == "ValueError: unknown event type 'nonsense'"


BIG = """
import hashlib
async def app(scope, receive, send):
    h, more = hashlib.sha256(), True
    while more:
        msg = await receive()
        h.update(msg["body"])
        more = msg["more_body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": h.hexdigest().encode() + b"\\n" + b"z" * 1000000})
"""

BIG_CHUNKS = [bytes([i]) * 300000 for i in range(4)]


@scenario("big", {"main.py": BIG}, "main:app",
          [http("/", "POST", chunks=BIG_CHUNKS[:1]), dict(http("/", "POST", chunks=BIG_CHUNKS[:1]), _raw=b"".join(BIG_CHUNKS) * 4),
           dict(http("/", "POST"), _raw=b""), dict(http("/", "POST"), _raw=b"x")])
def _(boot, a):
    import hashlib
    tail = b"\n" + b"z" * 1000000
    assert response(a[0])[2] == hashlib.sha256(BIG_CHUNKS[0]).hexdigest().encode() + tail
    assert frames_of(a[1], "read") == [{"t": "read", "bytes": 4800000}], a[1][:2]
    assert response(a[1])[2] == hashlib.sha256(BIG_CHUNKS[0] + b"".join(BIG_CHUNKS) * 4).hexdigest().encode() + tail
    assert response(a[2])[2] == hashlib.sha256(b"").hexdigest().encode() + tail and not frames_of(a[2], "read")
    assert response(a[3])[2] == hashlib.sha256(b"x").hexdigest().encode() + tail


STARLETTE = """
import asyncio, contextlib
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse, PlainTextResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    print("starlette startup")
    yield {"greeting": "hi from lifespan"}
    print("starlette shutdown")

async def home(request):
    return JSONResponse({"greeting": request.state.greeting, "q": request.query_params.get("q")})

async def user(request):
    return PlainTextResponse(f"user {request.path_params['uid']}")

async def echo(request):
    return JSONResponse({"len": len(await request.body()), "ct": request.headers.get("content-type")})

async def stream(request):
    async def gen():
        for i in range(3):
            yield f"chunk{i}\\n"
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")

async def boom(request):
    raise KeyError("nope")

def sync_endpoint(request):  # run_in_threadpool: inline, as WASI has no threads
    return PlainTextResponse("sync " + request.url.path)

app = Starlette(routes=[Route("/", home), Route("/users/{uid:int}", user), Route("/echo", echo, methods=["POST"]),
                        Route("/stream", stream), Route("/boom", boom),
                        Route("/sync", sync_endpoint)], lifespan=lifespan)
"""


@scenario("starlette", {"main.py": STARLETTE}, "main:app",
          [LIFESPAN_UP, http("/", query=b"q=1"), http("/users/42"), http("/echo", "POST", [(b"content-type", b"x/y")], [b"12", b"345"]),
           http("/stream"), http("/missing"), http("/boom"), http("/sync"), LIFESPAN_DOWN])
def _(boot, a):
    assert frames_of(a[0], "lifespan")[0]["result"] == "complete" and "starlette startup" in logs(a[0], "stdout")
    status, headers, body, _ = response(a[1])
    assert status == 200 and json.loads(body) == {"greeting": "hi from lifespan", "q": "1"}, body
    assert headers[b"content-type"] == b"application/json"
    assert response(a[2])[:3:2] == (200, b"user 42")
    assert json.loads(response(a[3])[2]) == {"len": 5, "ct": "x/y"}
    status, _, body, parts = response(a[4])
    assert body == b"chunk0\nchunk1\nchunk2\n" and parts >= 4, a[4]
    assert response(a[5])[0] == 404
    assert response(a[6])[0] == 500 and frames_of(a[6], "error")[0]["message"] == "KeyError: 'nope'"
    assert response(a[7])[:3:2] == (200, b"sync /sync")
    assert frames_of(a[8], "lifespan")[0]["result"] == "complete" and "starlette shutdown" in logs(a[8], "stdout")


def run(name, wasi):
    files, entrypoint, plain, events, check, extra_env = SCENARIOS[name]
    code = tempfile.mkdtemp(prefix="aw-code-")
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(code, path)), exist_ok=True)
        with open(os.path.join(code, path), "w") as f:
            f.write(textwrap.dedent(text))
    if name == "starlette":
        shutil.copytree(ARGS.packages, os.path.join(code, "packages"))
    env = {"ALEPH_WASM_ENTRYPOINT": entrypoint, "ALEPH_WASM_CODE": code, "ALEPH_WASM_PATHS": ""}
    if plain:
        env["ALEPH_WASM_PLAIN"] = plain
    env.update(extra_env)
    try:
        guest = (Wasi if wasi else Native)(code, env)
        boot = guest.boot
        answers = [guest.send(dict(event)) for event in events]
        stderr = guest.close()
        assert len(answers) == len(events), (len(answers), answers)
        assert all(x[-1] == {"t": "done"} for x in answers)
        assert stderr.strip() == "", stderr
        check(boot, answers)
    finally:
        shutil.rmtree(code, ignore_errors=True)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--wasi", metavar="PYTHON_WASM")
    parser.add_argument("--packages", metavar="DIR")
    parser.add_argument("-k", default="")
    parser.add_argument("--no-unbuffered", action="store_true",
                        help="leave PYTHONUNBUFFERED out of the guest's environment")
    parser.add_argument("--run-wasm", help=argparse.SUPPRESS)
    ARGS = parser.parse_args()
    if ARGS.run_wasm:
        return run_wasm(json.loads(ARGS.run_wasm))
    if ARGS.no_unbuffered:
        del BASE_ENV["PYTHONUNBUFFERED"]
    passed = failed = 0
    for name in SCENARIOS:
        if ARGS.k not in name or (name == "starlette" and not ARGS.packages):
            continue
        started = time.monotonic()
        try:
            run(name, bool(ARGS.wasi))
            passed += 1
            print(f"ok    {name} ({time.monotonic() - started:.2f}s)")
        except Exception:
            failed += 1
            import traceback
            text = traceback.format_exc()
            print(f"FAIL  {name}\n{text if len(text) < 4000 else text[:2000] + ' ... ' + text[-1500:]}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
