"""Checks of boot.py's side of the AW4 channel (docs/channel.md), with the machine's python3:

    python3 runtimes/python-3.12/test_wire.py

1. the shared test vectors (aw4-vectors.json): boot's encoders give each frame's bytes exactly, and
   its incremental reader decodes them, fed in chunks of any size;
2. the real boot.py, run natively as `python3 -i boot.py` with pipes, playing the host: READY, the
   run line, SERVING, then requests (concurrent and sequential), events, cancellation, calls, EOF.
"""

import asyncio
import contextvars
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ next to boot.py
import boot  # noqa: E402  (does not boot: that runs only as __main__)

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# --- 1. Vectors ----------------------------------------------------------------------------------

def encode(v):
    """A vector's decoded form encoded with boot's own functions."""
    kind, id, h = v["kind"], v["id"], bytes.fromhex
    if kind == boot.START:
        request = boot._Request(id, None)
        fields = [h(x) for x in v["fields"]]
        boot._out.clear()
        asyncio.run(request.send({"type": "http.response.start", "status": v["status"],
                                  "headers": list(zip(fields[::2], fields[1::2]))}))
        return b"".join(boot._out)
    if kind == boot.RESPONSE_BODY:
        boot._out.clear()
        boot._emit_body(id, h(v["data"]), v["more"])
        return b"".join(boot._out)
    if kind == boot.LOG:
        written, saved = [], boot._write_all
        boot._write_all = written.append
        try:
            stream = boot._LogStream(v["stream"])
            contextvars_run(id, stream.write, h(v["data"]).decode())
            stream.flush()
        finally:
            boot._write_all = saved
        return b"".join(written)
    if kind == boot.REPLY:
        payload = b"\x01" + h(v["data"]) if v["ok"] else b"\x00" + boot._pack_fields([h(x) for x in v["fields"]])
    elif kind in (boot.HTTP, boot.HTTP_EMPTY):
        payload = http_payload([h(x) for x in v["fields"]])
    elif "fields" in v:
        payload = boot._pack_fields([h(x) for x in v["fields"]])
    elif "more" in v:
        payload = bytes([v["more"]]) + h(v["data"])
    elif "json" in v:
        payload = boot._json(v["json"])
    elif "text" in v:
        payload = boot._text(v["text"])
    else:
        payload = b""
    return boot._frame(kind, id, payload)


def http_payload(fields):
    """The host's HTTP payload for a request head given as the vectors give it: method, scheme,
    http_version, path, raw_path, query_string, root_path, client host, client port, server name,
    server port (ports in ASCII decimal, empty: 0), then header names and values."""
    port = lambda b: int(b) if b else 0  # noqa: E731
    text = b"\0".join([fields[0], fields[1], fields[2], fields[6], fields[7], fields[9]])
    head = struct.pack("<IIIHH", len(fields[3]), len(text), (len(fields) - 11) // 2,
                       port(fields[8]) if fields[7] else 0, port(fields[10]))
    return head + fields[3] + text + b"\0".join([fields[4], fields[5]] + fields[11:])


def contextvars_run(id, fn, *args):
    context = contextvars.copy_context()
    context.run(boot._rid.set, id)
    return context.run(fn, *args)


def read_all(data, sizes):
    reader, frames, at = boot._FrameReader(), [], 0
    for size in sizes:
        frames += reader.feed(data[at:at + size])
        at += size
    assert at >= len(data) and reader.pending() == 0, (at, reader.pending())
    return frames


@test
def vectors():
    spec = json.load(open(os.path.join(HERE, "aw4-vectors.json")))
    assert spec["protocol"] == boot.PROTOCOL == "AW4"
    rng = random.Random(7)
    stream, expected = b"", []
    for v in spec["vectors"]:
        raw = bytes.fromhex(v["hex"])
        assert encode(v) == raw, (v["name"], encode(v).hex(), v["hex"])
        kind, id, payload = raw[8], struct.unpack_from("<I", raw, 9)[0], raw[13:]
        assert (kind, id) == (v["kind"], v["id"]), v["name"]
        if kind in (boot.HTTP, boot.HTTP_EMPTY):
            f = [bytes.fromhex(x) for x in v["fields"]]
            port = lambda b: int(b) if b else 0  # noqa: E731
            assert boot._http_fields(payload) == (
                f[3].decode(), [x.decode() for x in (f[0], f[1], f[2], f[6], f[7], f[9])],
                [f[4], f[5]] + f[11:], port(f[8]) if f[7] else 0, port(f[10])), v["name"]
        elif "fields" in v and kind not in (boot.START, boot.REPLY):
            assert boot._unpack_fields(payload) == [bytes.fromhex(x) for x in v["fields"]], v["name"]
        for sizes in ([1] * len(raw), [len(raw)], [rng.randint(1, 9) for _ in raw]):
            assert read_all(raw, sizes) == [(kind, id, payload)], (v["name"], sizes)
        stream += raw
        expected.append((kind, id, payload))
    for _ in range(20):  # every vector in one stream, cut anywhere
        assert read_all(stream, [rng.randint(1, 300) for _ in stream]) == expected


@test
def start_headers():
    """START carries the headers joined by NUL: buffers are copied as they were sent; anything
    but pairs of bytes, or a NUL inside one, is the app's protocol error."""
    def start(headers):
        request = boot._Request(5, None)
        boot._out.clear()
        try:
            asyncio.run(request.send({"type": "http.response.start", "status": 200,
                                      "headers": headers}))
        except RuntimeError as exc:
            return str(exc)
        finally:
            boot._out.clear()
        return None

    buf = bytearray(b"v1")
    request = boot._Request(5, None)
    boot._out.clear()
    asyncio.run(request.send({"type": "http.response.start", "status": 200,
                              "headers": [(b"a", buf), [memoryview(b"b"), b""]]}))
    buf[:] = b"xx"  # changed after the send: the frame keeps what was sent
    payload = b"".join(boot._out)[13:]
    boot._out.clear()
    assert payload == struct.pack("<HI", 200, 2) + b"a\0v1\0b\0", payload
    assert start([]) is None
    for bad, fault in (([("a", b"1")], "must be [name, value] pairs of bytes"),
                       ([(b"a", b"1", b"2")], "must be [name, value] pairs of bytes"),
                       ([(b"a",)], "must be [name, value] pairs of bytes"),
                       ([(b"a", b"1\x002")], "hold a NUL byte")):
        assert fault in (start(bad) or ""), (bad, start(bad))


@test
def log_lines():
    """print() and write() become LOG frames: a line as one frame, written at once, under the id
    of the request that wrote it; text left without a newline goes out, under its own id, when
    another request writes or on flush; a long text is cut into frames of at most 64 KiB."""
    written, saved = [], boot._write_all
    boot._write_all = written.append
    boot._out.clear()
    try:
        stream = boot._LogStream(1)

        def frames():
            out = read_all(b"".join(written), [1 << 30])
            written.clear()
            return [(kind, id, payload[1:].decode()) for kind, id, payload in out]

        contextvars_run(1, lambda: print("a", 2, file=stream))
        assert frames() == [(boot.LOG, 1, "a 2\n")]
        contextvars_run(1, stream.write, "no newline")
        assert frames() == []
        contextvars_run(2, stream.write, "x\ny\nz")
        assert frames() == [(boot.LOG, 1, "no newline"), (boot.LOG, 2, "x\ny\n")]
        contextvars_run(2, stream.write, "\n")
        assert frames() == [(boot.LOG, 2, "z\n")]
        contextvars_run(3, stream.write, "\n")
        assert frames() == [(boot.LOG, 3, "\n")]
        contextvars_run(3, stream.write, "é" * 40000 + "\n")
        cut = frames()
        assert [len(text.encode()) for _, _, text in cut] == [65536, 80001 - 65536], cut
        assert "".join(text for _, _, text in cut) == "é" * 40000 + "\n"
        try:
            stream.write(b"bytes")
        except TypeError as exc:
            assert "must be str, not bytes" in str(exc), exc
        else:
            raise AssertionError("write(bytes) was taken")
    finally:
        boot._write_all = saved


@test
def wire_faults():
    for data, fault in ((b"\x1eAW1 {}\n", "not a frame"), (b"hello world", "not a frame"),
                        (b"\x1eAW2" + struct.pack("<I", (16 << 20) + 6), "out of bounds"),
                        (b"\x1eAW2" + struct.pack("<I", 4) + b"\x01abc", "out of bounds")):
        try:
            boot._FrameReader().feed(data)
        except boot.WireError as exc:
            assert fault in str(exc), (data, exc)
        else:
            raise AssertionError(f"no error for {data!r}")
    try:  # the frames before the fault are kept
        boot._FrameReader().feed(boot._frame(boot.CANCEL, 3) + b"xx")
    except boot.WireError as exc:
        assert exc.frames == [(boot.CANCEL, 3, b"")], exc.frames
    for bad in (b"\x05\x00\x00\x00ab", b"\x01\x00"):
        try:
            boot._unpack_fields(bad)
            raise AssertionError(bad)
        except boot.WireError:
            pass
    good = [b"GET", b"http", b"1.1", b"/", b"/", b"", b"", b"", b"", b"n", b"80", b"a", b"b"]
    nul_in = lambda i: good[:i] + [good[i] + b"\0x"] + good[i + 1:]  # noqa: E731
    for bad, fault in ((http_payload(good)[:15], "cut short (15 of 16 bytes)"),
                       (http_payload(good)[:20], "overrun it by"),
                       (http_payload(nul_in(0)), "7 text fields (not 6) and 4 byte fields"),
                       (http_payload(nul_in(11)), "6 text fields (not 6) and 5 byte fields"),
                       (http_payload(good + [b"c", b"d"])[:-4], "2 + 2 x 2")):
        try:
            boot._http_fields(bad)
        except boot.WireError as exc:
            assert fault in str(exc), (bad, exc)
        else:
            raise AssertionError(f"no error for {bad!r}")
    assert boot._http_fields(http_payload(nul_in(3)))[0] == "/\0x"  # the path may hold NUL


# --- 2. The real guest ---------------------------------------------------------------------------

APP = """
import asyncio, sys
from _aleph_wasm import call, HostCallError
active = peak = 0
blocking_failures = []

async def respond(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})

async def app(scope, receive, send):
    global active, peak
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            print(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hi"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return await respond(send, repr((scope["type"], scope.get("time"), scope.get("body"))).encode())
    body, parts = b"", 0
    while True:
        message = await receive()
        body, parts = body + message["body"], parts + 1
        if not message["more_body"]:
            break
    path = scope["path"]
    if path == "/hello":
        print("hello from", scope["query_string"].decode())
        await respond(send, b"hello", headers=[(b"content-type", b"text/plain")])
    elif path == "/scope":
        keys = ("method", "scheme", "http_version", "path", "raw_path", "query_string", "root_path",
                "client", "server", "headers", "asgi", "state")
        await respond(send, repr({k: scope[k] for k in keys}).encode())
    elif path == "/sleep":
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.2)
        active -= 1
        await respond(send, str(peak).encode())
    elif path == "/echo":
        await respond(send, body, headers=[(b"x-parts", str(parts).encode())])
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/raise":
        raise ValueError("boom")
    elif path == "/bad":
        await send({"type": "http.response.nope"})
    elif path == "/forever":
        await asyncio.sleep(3600)
    elif path == "/call":
        try:
            result = await call(scope["query_string"].decode(), body)
        except HostCallError as exc:
            result = f"{type(exc).__name__} {exc.kind} {exc.message}".encode()
        await respond(send, result)
    elif path == "/stuck":
        await receive()  # a disconnect comes only after the response: never
    elif path == "/blocking":  # sync code: the instance waits for the answer
        from _aleph_wasm import call_blocking
        await respond(send, call_blocking("ping", body))
    elif path == "/blocking_cancelled":  # a blocking call the host never answers
        from _aleph_wasm import call_blocking
        try:
            call_blocking("ping", body)
        except HostCallError as exc:
            blocking_failures.append(f"{exc.kind}: {exc.message}")
        await asyncio.sleep(3600)
    elif path == "/blocking_failures":
        await respond(send, "|".join(blocking_failures).encode())
    elif path == "/urlopen":  # the stdlib's client over host sockets; the host refuses
        import urllib.request
        try:
            urllib.request.urlopen("https://example.org/", timeout=5)
        except Exception as exc:
            await respond(send, f"{type(exc).__name__}: {exc}".encode())
"""

SEED = "00" * 32


def http_frames(id, path, query=b"", body_parts=None, headers=((b"host", b"localhost"),)):
    """A request's frames as the host sends them: HTTP and its BODY parts, or without
    `body_parts` one HTTP_EMPTY frame."""
    fields = [b"GET", b"http", b"1.1", path.encode(), path.encode(), query, b"", b"127.0.0.1", b"5555",
              b"localhost", b"8080"] + [x for pair in headers for x in pair]
    if body_parts is None:
        return boot._frame(boot.HTTP_EMPTY, id, http_payload(fields))
    frames = boot._frame(boot.HTTP, id, http_payload(fields))
    for i, part in enumerate(body_parts):
        frames += boot._frame(boot.BODY, id, bytes([i < len(body_parts) - 1]) + part)
    return frames


class Guest:
    """boot.py under native python3, driven through its pipes as the host drives it."""

    def __init__(self, code, mode=1, files=None):
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "ALEPH_WASM_CODE": code, "ALEPH_WASM_ENTRYPOINT": "main:app", "ALEPH_WASM_PATHS": ""}
        self.proc = subprocess.Popen([sys.executable, "-i", os.path.join(HERE, "boot.py")], cwd="/",
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        self.reader, self.backlog, self.calls, self.held = boot._FrameReader(), [], [], []
        self.boot_logs = []  # what the app's import printed
        while (frame := self.next())[0] == boot.LOG:
            self.boot_logs.append(frame)
        self.boot = frame
        if self.boot[0] == boot.READY:
            self.send(f'__aleph_wasm__.run("{SEED}", {mode})\n'.encode())
            serving = self.next()
            assert serving[:2] == (boot.SERVING, 0), serving
            assert json.loads(serving[2]) == {"protocol": "AW4", "concurrent": bool(mode)}, serving

    def send(self, data):
        self.proc.stdin.write(data)

    def next(self, timeout=10.0):
        """The next frame the guest writes (None at its end)."""
        deadline = time.monotonic() + timeout
        while not self.backlog:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.proc.stdout], [], [], left)[0], "the guest is silent"
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not data:
                return None
            self.backlog += self.reader.feed(data)
        return self.backlog.pop(0)

    def answers(self, ids):
        """Frames per id until DONE for each of `ids` (LOG frames included); CALLs answered."""
        got, open_ids = {id: [] for id in ids}, set(ids)
        while open_ids:
            frame = self.next()
            assert frame is not None, f"the guest ended: {self.proc.stderr.read()!r}"
            kind, id, payload = frame
            if kind == boot.CALL:
                name, args = boot._unpack_fields(payload)
                self.calls.append((id, name))
                if self.hold_calls:
                    self.held.append((id, name, args))
                    continue
                self.send(boot._frame(boot.REPLY, id, self.reply(name, args)))
                continue
            got.setdefault(id, []).append(frame)
            if kind == boot.DONE:
                open_ids.discard(id)
        return got

    hold_calls = False  # CALLs are kept in `held` instead of answered

    @staticmethod
    def reply(name, args):
        if name == b"ping":
            return b"\x01" + args
        if name.startswith(b"net."):
            return b"\x00" + boot._pack_fields([b"permission", b"content.environment.internet is false"])
        return b"\x00" + boot._pack_fields([b"unknown_call", b"no function " + name])

    def request(self, path, **kw):
        self.send(http_frames(77, path, **kw))
        return self.answers([77])[77]

    def close(self):
        self.proc.stdin.close()
        rest = []
        while (frame := self.next()) is not None:
            rest.append(frame)
        assert self.proc.wait(10) == 0
        stderr = self.proc.stderr.read()
        assert stderr == b"", stderr  # fd 2 is never written: everything is a frame on fd 1
        return rest


def response(frames):
    """(status, headers, body, BODY frame count) of one request's frames, which end with DONE."""
    kinds = [f[0] for f in frames if f[0] != boot.LOG]
    assert kinds[0] == boot.START and kinds[-1] == boot.DONE and boot.ERROR not in kinds, frames
    start = next(f[2] for f in frames if f[0] == boot.START)
    status, pairs = struct.unpack_from("<HI", start)
    fields = start[6:].split(b"\0") if pairs else []
    assert len(fields) == 2 * pairs, (start, pairs)
    bodies = [f[2] for f in frames if f[0] == boot.RESPONSE_BODY]
    assert bodies[-1][0] == 0 and all(b[0] == 1 for b in bodies[:-1]), bodies
    return (status, list(zip(fields[::2], fields[1::2])),
            b"".join(b[1:] for b in bodies), len(bodies))


def of_kind(frames, kind):
    return [f[2] for f in frames if f[0] == kind]


def logs(frames, stream):
    return "".join(p[1:].decode() for p in of_kind(frames, boot.LOG) if p[0] == stream)


CODE_DIRS = []


def code_dir(source):
    code = tempfile.mkdtemp(prefix="aw2-test-")
    CODE_DIRS.append(code)
    with open(os.path.join(code, "main.py"), "w") as f:
        f.write(textwrap.dedent(source))
    return code


@test
def concurrent_guest():
    g = Guest(code_dir(APP))
    assert json.loads(g.boot[2]) == {"asgi_version": "3.0"}, g.boot
    hello = g.request("/hello", query=b"q=1")
    assert response(hello)[:3] == (200, [(b"content-type", b"text/plain")], b"hello"), hello
    assert of_kind(hello, boot.LOG) == [b"\x01hello from q=1\n"] and hello[0][0] == boot.LOG, hello

    g.send(boot._frame(boot.EVENT, 5, boot._json({"type": "lifespan", "event": "startup"})))
    startup = g.answers([5])[5]
    assert [json.loads(p) for p in of_kind(startup, boot.LIFESPAN)] == [{"result": "complete", "message": ""}]
    assert logs(startup, 1) == "lifespan.startup\n" and startup[-1][0] == boot.DONE, startup

    _, _, body, _ = response(g.request("/scope", query=b"a=%20"))
    scope = eval(body.decode())
    assert scope == {"method": "GET", "scheme": "http", "http_version": "1.1", "path": "/scope",
                     "raw_path": b"/scope", "query_string": b"a=%20", "root_path": "",
                     "client": ("127.0.0.1", 5555), "server": ("localhost", 8080),
                     "headers": [(b"host", b"localhost")], "asgi": {"version": "3.0", "spec_version": "2.3"},
                     "state": {"greeting": "hi"}}, scope

    started = time.monotonic()  # 20 requests in flight together
    g.send(b"".join(http_frames(100 + i, "/sleep") for i in range(20)))
    answers = g.answers(range(100, 120))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert max(int(response(a)[2]) for a in answers.values()) > 1, answers

    status, headers, body, _ = response(g.request("/echo", body_parts=[b"ab", b"", b"cd", b"e"]))
    assert body == b"abcde" and headers == [(b"x-parts", b"4")], (body, headers)
    for parts in (None, [b""]):  # no body: one HTTP_EMPTY frame, or HTTP and an empty BODY
        status, headers, body, _ = response(g.request("/echo", body_parts=parts))
        assert (body, headers) == (b"", [(b"x-parts", b"1")]), (parts, body, headers)
    every_byte = bytes(range(256)) * 5000  # > 1 MiB: split into several BODY frames back
    status, _, body, parts = response(g.request("/echo", body_parts=[every_byte[:1000], every_byte[1000:]]))
    assert body == every_byte and parts == 2, parts

    assert response(g.request("/stream"))[2:] == (b"part0;part1;part2;", 4)

    failed = g.request("/raise")
    assert of_kind(failed, boot.ERROR) == [b"ValueError: boom"] and failed[-1][0] == boot.DONE, failed
    assert 'raise ValueError("boom")' in logs(failed, 2), failed
    bad = g.request("/bad")
    assert [f[0] for f in bad if f[0] != boot.LOG] == [boot.PROTOCOL_ERROR, boot.DONE], bad
    assert b"'http.response.nope'" in of_kind(bad, boot.PROTOCOL_ERROR)[0]

    g.send(http_frames(200, "/forever"))  # cancel one sleeping request while another answers
    g.send(http_frames(201, "/sleep"))
    time.sleep(0.05)
    g.send(boot._frame(boot.CANCEL, 200))
    answers = g.answers([200, 201])
    assert [f[0] for f in answers[200]] == [boot.LOG, boot.DONE], answers[200]
    assert logs(answers[200], 2) == "request 200 cancelled by the host\n"
    assert response(answers[201])[0] == 200
    g.send(boot._frame(boot.CANCEL, 200))  # an id no longer in flight: ignored

    assert response(g.request("/call", body_parts=[b"\x00abc"], query=b"ping"))[2] == b"\x00abc"
    assert response(g.request("/call", query=b"nope"))[2] == b"HostCallError unknown_call no function nope"
    assert [name for _, name in g.calls] == [b"ping", b"nope"] and g.calls[0][0] != g.calls[1][0]

    # A blocking call: frames that arrive before its REPLY wait for the loop's next turn.
    g.hold_calls = True
    g.send(http_frames(400, "/blocking", body_parts=[b"sync"]))
    while not g.held:
        frame = g.next()
        assert frame[0] == boot.CALL, frame
        g.held.append((frame[1],) + tuple(boot._unpack_fields(frame[2])))
    g.send(http_frames(401, "/hello") + boot._frame(boot.REPLY, g.held[0][0], b"\x01sync"))
    g.hold_calls = False
    both = g.answers([400, 401])
    assert response(both[400])[2] == b"sync" and response(both[401])[2] == b"hello", both
    # A blocking call whose request is cancelled: the call fails at once, then the task ends.
    g.hold_calls, g.held = True, []
    g.send(http_frames(402, "/blocking_cancelled", body_parts=[b"never"]))
    while not g.held:
        frame = g.next()
        assert frame[0] == boot.CALL, frame
        g.held.append((frame[1],) + tuple(boot._unpack_fields(frame[2])))
    g.send(boot._frame(boot.CANCEL, 402))
    cancelled = g.answers([402])[402]
    assert [f[0] for f in cancelled] == [boot.LOG, boot.DONE], cancelled
    g.send(boot._frame(boot.REPLY, g.held[0][0], b"\x01late"))  # the late answer is ignored
    g.hold_calls = False
    failures = response(g.request("/blocking_failures"))[2]
    assert failures == b"cancelled: request 402 was cancelled by the host while this call waited " \
                       b"for its answer", failures
    refused = response(g.request("/urlopen"))[2]
    assert refused == b"URLError: <urlopen error [Errno 13] content.environment.internet is false>", refused

    g.send(boot._frame(boot.EVENT, 6, boot._json({"type": "aleph.cron", "time": 1700000000.5})))
    assert response(g.answers([6])[6])[2] == b"('aleph.cron', 1700000000.5, None)"
    g.send(boot._frame(boot.EVENT, 7, b'{"type":"nonsense"}') + boot._frame(0x42, 8, b""))
    odd = g.answers([7, 8])
    assert of_kind(odd[7], boot.ERROR) == [b"ValueError: unknown event type 'nonsense'"], odd
    assert of_kind(odd[8], boot.ERROR) == [b"WireError: unknown frame kind 0x42"], odd

    g.send(boot._frame(boot.EVENT, 9, boot._json({"type": "lifespan", "event": "shutdown"})))
    shutdown = g.answers([9])[9]
    assert json.loads(of_kind(shutdown, boot.LIFESPAN)[0])["result"] == "complete"
    assert logs(shutdown, 1) == "lifespan.shutdown\n", shutdown

    g.send(http_frames(300, "/forever"))  # EOF: the request in flight is cancelled, then the end
    time.sleep(0.05)
    rest = g.close()
    assert [(f[0], f[1]) for f in rest] == [(boot.LOG, 300), (boot.DONE, 300)], rest


@test
def sequential_guest():
    g = Guest(code_dir(APP), mode=0)
    assert response(g.request("/hello"))[2] == b"hello"
    g.send(http_frames(10, "/echo", body_parts=[b"x" * 100, b"y"])[:-30])  # the body arrives late
    time.sleep(0.1)
    g.send(http_frames(10, "/echo", body_parts=[b"x" * 100, b"y"])[-30:])
    assert response(g.answers([10])[10])[2] == b"x" * 100 + b"y"
    assert response(g.request("/sleep"))[2] == b"1"
    assert response(g.request("/call", query=b"ping", body_parts=[b"seq"]))[2] == b"seq"
    stuck = g.request("/stuck")
    assert of_kind(stuck, boot.ERROR) == [b"RuntimeError: " + boot._DEADLOCK.encode()], stuck
    assert "Request aborted" in logs(stuck, 2) and stuck[-1][0] == boot.DONE
    assert response(g.request("/hello"))[2] == b"hello"
    g.send(b"GET / HTTP/1.1\r\n\r\n")  # garbage: explained on stderr, then the end
    rest = g.close()
    assert len(rest) == 1 and rest[0][:2] == (boot.LOG, 0) and b"not a frame" in rest[0][2], rest
    assert rest[0][2].startswith(b"\x02aleph-wasm: stdin carries something that is not a frame")


@test
def boot_error():
    g = Guest(code_dir("import does_not_exist\n"))
    assert g.boot[0] == boot.BOOT_ERROR, g.boot
    error = json.loads(g.boot[2])
    assert error["message"] == "ModuleNotFoundError: No module named 'does_not_exist'", error
    assert "import does_not_exist" in error["traceback"]
    assert g.close() == []


def main():
    passed = failed = 0
    for fn in TESTS:
        started = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"ok    {fn.__name__} ({time.monotonic() - started:.2f}s)")
        except Exception:
            failed += 1
            print(f"FAIL  {fn.__name__}\n{traceback.format_exc()[-3000:]}")
    for code in CODE_DIRS:
        shutil.rmtree(code, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
