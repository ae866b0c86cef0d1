"""aleph-wasm guest bootstrap for CPython 3.12 on WASI -- channel protocol "AW1".

The engine runs ``python -i /opt/aleph-wasm/boot.py`` (stdin a pipe, not a tty). This script boots
the program, then ends; the REPL takes over and blocks reading stdin with no frame of ours on the
stack: the pause point that snapshots capture. Each event is one REPL line calling
``__aleph_wasm__.serve(...)``, which runs the event loop until the event is handled, then returns.

What this file owns, inside the guest:
  * the hand-over: ALEPH_WASM_ENTRYPOINT / _CODE / _PLAIN / _PATHS are read, then deleted from
    os.environ; sys.path = code dir, <code>/packages (if present), the extra paths, the stdlib;
    the working directory becomes the code dir;
  * the event loop. WASI has no socketpair(), so asyncio's default loop cannot start: _Loop is a
    BaseEventLoop whose "selector" only sleeps until the next timer (waiting with no timer is a
    deadlock and raises), and a policy makes get_event_loop()/new_event_loop()/asyncio.run() use
    it. No threads either: run_in_executor() and anyio's worker threads run the call inline
    (ThreadPoolExecutor, left out of the build, is an inline stand-in), and anyio's asyncio
    backend (which imports ssl) can import on a build without ssl;
  * fd 1, for frames only: sys.stdout/sys.stderr become streams that turn writes into log frames;
    fd 0 is the channel: the app's sys.stdin is empty (input() raises EOFError);
  * the ASGI side: http and the aleph triggers, lifespan (one long-lived task per instance);
  * the warm-up: after the app's import, the event path runs once without the app, so that its
    first-run costs are in a snapshot rather than in each restored instance's first events.

Host -> guest, one line per event, the next only after this one's "done":
  __aleph_wasm__.serve("<base64 of a JSON event>")
  {"type":"http","scope":{...},"body_chunks":[b64,...]}  raw_path, query_string, headers as b64;
      optional "body_stdin": N: N more raw body bytes, which the host writes only after the
      guest's {"t":"read","bytes":N} frame (long REPL lines are slow: a fast path for big bodies)
  {"type":"lifespan","event":"startup"|"shutdown"}
  {"type":"aleph.message","body":{...}}    {"type":"aleph.cron","time":<float>}
  {"type":"reseed","seed":"<hex>"}

Guest -> host on fd 1, one frame a line: b"\\x1eAW1 " + compact ASCII-only JSON + b"\\n".
  after boot: {"t":"ready","asgi_version":"3.0"|"2.0"} or {"t":"boot_error","message","traceback"}
  any time:   {"t":"log","stream":"stdout"|"stderr","data":str}  a line or a flush, <= 64 KiB
  http-like:  {"t":"start","status":int,"headers":[[b64,b64],...]}
              {"t":"body","body":b64,"more_body":bool}  one per send
              {"t":"protocol_error","message"}  at a bad send (the app gets a RuntimeError)
              {"t":"error","message":"ExcType: msg"}  the app raised (traceback in the stderr
                  log; none for the app re-raising our protocol RuntimeError), or returned
                  without a complete response; may follow a complete response (which stands)
  lifespan:   {"t":"lifespan","result":"complete"|"failed"|"unsupported","message":str}
  last, for every event, even after errors: {"t":"done"}
A failure outside the app (bad event, deadlock) answers {"t":"error"} + done instead.
"""

import asyncio
import base64
import codecs
import collections
import concurrent.futures
import contextvars
import importlib
import importlib.machinery
import inspect
import io
import json
import os
import random
import sys
import time
import traceback
import types

PROTOCOL = "AW1"
_MAGIC = b"\x1eAW1 "
_LOG_CAP = 64 * 1024  # bytes of UTF-8 data in one log frame
_ENV_KEYS = ("ALEPH_WASM_ENTRYPOINT", "ALEPH_WASM_CODE", "ALEPH_WASM_PLAIN", "ALEPH_WASM_PATHS")
_BYTES = (bytes, bytearray, memoryview)


# --- Frames and log streams ------------------------------------------------------------------

def _clean(text):
    """`text` as a str that is valid UTF-8 (lone surrogates become "?"): any JSON parser takes it."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


def _emit(frame):
    data = memoryview(_MAGIC + json.dumps(frame, separators=(",", ":")).encode("ascii") + b"\n")
    while data:
        data = data[os.write(1, data):]


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _describe(exc):
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return _clean(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class _LogBinary(io.BufferedIOBase):
    """``sys.stdout.buffer``: bytes are decoded as UTF-8 into the text log stream."""

    def __init__(self, text):
        self._text, self._decoder = text, codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self):
        return True

    def flush(self):
        self._text.flush()

    def write(self, data):
        self._text.write(self._decoder.decode(bytes(data)))
        return len(data)


class _LogStream(io.TextIOBase):
    """Text written here becomes log frames: everything up to the last newline at once (a print()
    is one frame), the rest on flush(); no frame carries more than 64 KiB of data."""

    encoding, errors, line_buffering = "utf-8", "replace", True

    def __init__(self, stream):
        self._stream = stream
        self._parts, self._size = [], 0
        self.buffer = _LogBinary(self)

    @property
    def name(self):
        return f"<{self._stream}>"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation(f"{self.name} has no file descriptor")

    def reconfigure(self, **_options):
        pass

    def close(self):  # these streams live as long as the instance
        self.flush()

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._parts.append(text)
            self._size += len(text)
            if "\n" in text:
                pending = "".join(self._parts)
                cut = pending.rfind("\n") + 1
                self._parts, self._size = [pending[cut:]], len(pending) - cut
                self._send(pending[:cut])
            elif self._size >= _LOG_CAP:
                self.flush()
        return len(text)

    def flush(self):
        pending = "".join(self._parts)
        self._parts, self._size = [], 0
        if pending:
            self._send(pending)

    def _send(self, text):
        raw = text.encode("utf-8", "replace")
        while raw:
            cut = min(len(raw), _LOG_CAP)
            while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # never inside a UTF-8 sequence
                cut -= 1
            _emit({"t": "log", "stream": self._stream, "data": raw[:cut].decode("utf-8")})
            raw = raw[cut:]


_STDOUT, _STDERR = _LogStream("stdout"), _LogStream("stderr")


def _flush_logs():
    for stream in (_STDOUT, _STDERR):
        stream.flush()


def _log_traceback(exc, header):
    _STDERR.write(header + "\n" + "".join(traceback.format_exception(exc)))


# --- The event loop: timers only (no selector, no self-pipe), no threads ---------------------

class _TimerSelector:
    """Stands in for the selector: there is no I/O to wait for, only the next timer."""

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("deadlock: the app waits for something that can never happen "
                               "(no ready callbacks, no timers, no I/O in this sandbox)")
        if timeout > 0:
            time.sleep(timeout)
        return []


class _InlineExecutor(concurrent.futures.Executor):
    """The loop's default executor: WASI has no threads, so run_in_executor(None, ...) and
    asyncio.to_thread() run the call at once, blocking the loop. Where the build lacks
    concurrent.futures.thread, it also stands in as ThreadPoolExecutor (see _fill_gaps)."""

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        if initializer is not None:
            initializer(*initargs)

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _Loop(asyncio.BaseEventLoop):
    """Callbacks, tasks and timers. run_until_complete() can be called again and again; between
    calls nothing runs and pending tasks stay suspended."""

    def __init__(self):
        super().__init__()
        self._selector = _TimerSelector()
        self._default_executor = _InlineExecutor()  # set_default_executor() insists on threads

    def time(self):
        return time.monotonic()

    def _process_events(self, event_list):
        pass

    def _write_to_self(self):
        pass  # only another thread would need to wake the loop; there is none

    async def shutdown_default_executor(self, timeout=None):
        self._executor_shutdown_called = True  # the base version joins a thread


class _Policy(asyncio.AbstractEventLoopPolicy):
    """get_event_loop() is the instance loop unless the app set another (asyncio.run() leaves
    none set: the instance loop comes back); new loops are _Loops."""

    def __init__(self):
        self._current = None

    def get_event_loop(self):
        if self._current is None:
            self._current = _loop
        return self._current

    def set_event_loop(self, loop):
        self._current = loop

    def new_event_loop(self):
        return _Loop()


# --- anyio (under Starlette, FastAPI) on a Python without threads or ssl ---------------------

async def _run_sync_inline(func, *args):
    await asyncio.sleep(0)  # a checkpoint, as anyio's own version makes
    return contextvars.copy_context().run(func, *args)


def _adapt_anyio():
    """anyio runs sync code (sync endpoints, Starlette's default 404 handler, ...) in worker
    threads: run it inline instead. Done once anyio is imported (after the app's import, else at
    the next event); importing its asyncio backend now also spares the first request that cost."""
    global _anyio_adapted
    if _anyio_adapted or "anyio" not in sys.modules:
        return
    _anyio_adapted = True
    try:
        backend = importlib.import_module("anyio._backends._asyncio")
    except Exception:
        return
    if hasattr(backend, "AsyncIOBackend"):  # anyio 4: (cls, func, args, abandon_on_cancel, limiter)
        backend.AsyncIOBackend.run_sync_in_worker_thread = classmethod(
            lambda cls, func, args, *_, **__: _run_sync_inline(func, *args))
    elif hasattr(backend, "run_sync_in_worker_thread"):  # anyio 3: (func, *args, cancellable, limiter)
        backend.run_sync_in_worker_thread = lambda func, *args, **_: _run_sync_inline(func, *args)


def _ssl_placeholder():
    """A stand-in "ssl" module: class names (SSLContext, SSLError, ...) are inert classes, so
    imports, annotations, isinstance() and except clauses work; anything else raises."""
    module = types.ModuleType("ssl", "placeholder: this Python has no ssl module")

    def __getattr__(name):
        if name[:1].isupper() and not name.isupper():
            setattr(module, name, type(name, (Exception,), {"__module__": "ssl"}))
            return getattr(module, name)
        raise AttributeError(f"ssl.{name}: this Python has no ssl module (no TLS in the sandbox)")

    module.__getattr__ = __getattr__
    return module


class _AnyioSSLFinder:
    """Installed when ssl is missing. anyio's asyncio backend imports its socket and TLS modules,
    which `import ssl` but use it only for TLS: those two modules execute with the placeholder
    as sys.modules["ssl"], removed right after; every other importer still gets ImportError."""

    names = ("anyio._core._sockets", "anyio.streams.tls")

    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name in self.names else None
        if spec is not None and spec.loader is not None:
            spec.loader = _SSLPlaceholderLoader(spec.loader)
        return spec


class _SSLPlaceholderLoader:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # create_module, get_source, ...: the real loader's
        return getattr(self._loader, name)

    def exec_module(self, module):
        placeholder = _ssl_placeholder()
        sys.modules.setdefault("ssl", placeholder)
        try:
            self._loader.exec_module(module)
        finally:
            if sys.modules.get("ssl") is placeholder:
                del sys.modules["ssl"]


def _fill_gaps():
    """Stand-ins for what the WASI build leaves out but common packages import."""
    try:
        importlib.import_module("ssl")
    except ImportError:
        sys.meta_path.insert(0, _AnyioSSLFinder())
    try:
        importlib.import_module("concurrent.futures.thread")
    except ImportError:  # anyio 3 and others import ThreadPoolExecutor at import time
        stand_in = types.ModuleType("concurrent.futures.thread", "inline stand-in: no threads")
        stand_in.ThreadPoolExecutor = _InlineExecutor
        stand_in.BrokenThreadPool = type("BrokenThreadPool", (concurrent.futures.BrokenExecutor,), {})
        sys.modules[stand_in.__name__] = concurrent.futures.thread = stand_in


# --- The app: import, ASGI version, invocation -----------------------------------------------

_app = None
_asgi_version = "3.0"
_loop = None
_anyio_adapted = False
_aborting = False  # set while a stuck call is being cancelled: its errors are not reported


def _load_app(entrypoint, code, plain, paths):
    here = os.path.dirname(os.path.abspath(__file__))
    front = [code] if code else []
    if code and os.path.isdir(os.path.join(code, "packages")):
        front.append(os.path.join(code, "packages"))
    front += [p for p in (paths or "").split(":") if p]
    sys.path[:] = front + [p for p in sys.path if p not in (here, "")]
    if code:
        try:
            os.chdir(code)  # relative paths in the app resolve against its code
        except OSError:
            pass
    if plain:  # one file, executed as its own module; the entrypoint names an attribute
        path = os.path.join(code or ".", plain)
        target = types.ModuleType("__aleph_main__")
        target.__file__ = path
        sys.modules[target.__name__] = target
        with open(path, "rb") as source:
            exec(compile(source.read(), path, "exec"), target.__dict__)
        attr = entrypoint.rpartition(":")[2]
    else:
        name, _, attr = entrypoint.partition(":")
        if not name or not attr:
            raise ValueError(f"entrypoint {entrypoint!r} is not of the form 'module:attribute'")
        target = importlib.import_module(name)
    if not attr:
        raise ValueError("no entrypoint attribute given")
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"entrypoint {entrypoint!r} is not callable ({type(target).__name__})")
    return target


def _is_asgi2(app):
    """ASGI 2 ("double callable"): app(scope) returns a coroutine function of (receive, send).
    Told by the signature: it takes one positional argument but not three."""
    if not inspect.isclass(app) and (inspect.iscoroutinefunction(app) or
                                     inspect.iscoroutinefunction(getattr(app, "__call__", None))):
        return False
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return False
    for args in ((None,), (None, None, None)):
        try:
            signature.bind(*args)
        except TypeError:
            return len(args) == 3
    return False


async def _invoke(scope, receive, send):
    if _asgi_version == "2.0":
        await _app(scope)(receive, send)
    else:
        await _app(scope, receive, send)


def _asgi_info(spec_version):
    return {"version": _asgi_version, "spec_version": spec_version}


# --- One call for an http-like event ---------------------------------------------------------

class _Exchange:
    """receive/send for one call: the request body, then (once the response is complete)
    http.disconnect; sent messages are checked and become "start"/"body" frames."""

    def __init__(self, chunks):
        self.done = asyncio.get_running_loop().create_future()
        self.inbox = collections.deque(
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks or [b""]))
        self.started = self.finished = self.trailers = False
        self.protocol_errors = []

    async def receive(self):
        if self.inbox:
            return self.inbox.popleft()
        if not self.done.done():
            await asyncio.shield(self.done)  # a cancelled listener must not cancel `done`
        return {"type": "http.disconnect"}

    def _fail(self, message):
        _emit({"t": "protocol_error", "message": _clean(message)})
        self.protocol_errors.append(RuntimeError(message))
        raise self.protocol_errors[-1]

    async def send(self, message):
        if not isinstance(message, dict):
            self._fail(f"an ASGI message must be a dict, not {type(message).__name__}: {message!r:.200}")
        kind = message.get("type")
        if kind == "http.response.start":
            if self.started:
                self._fail("http.response.start sent twice")
            status = message.get("status")
            if type(status) is not int or not 100 <= status <= 999:
                self._fail(f"http.response.start needs an integer 'status', not {status!r:.100}")
            headers = []
            try:
                for name, value in message.get("headers") or ():
                    if not (isinstance(name, _BYTES) and isinstance(value, _BYTES)):
                        raise TypeError
                    headers.append([_b64(name), _b64(value)])
            except (TypeError, ValueError):
                self._fail("http.response.start 'headers' must be [name, value] pairs of bytes")
            self.started, self.trailers = True, bool(message.get("trailers", False))
            _emit({"t": "start", "status": status, "headers": headers})
        elif kind == "http.response.body":
            if not self.started:
                self._fail("http.response.body sent before http.response.start")
            if self.finished:
                self._fail("http.response.body sent after the response was complete")
            body = message.get("body", b"")
            if not isinstance(body, _BYTES):
                self._fail(f"http.response.body 'body' must be bytes, not {type(body).__name__}")
            more = bool(message.get("more_body", False))
            _emit({"t": "body", "body": _b64(body), "more_body": more})
            if not more:
                self.finished = True
                self.done.set_result(None)
        elif kind == "http.response.trailers" and self.trailers:
            pass  # accepted and dropped: trailers do not reach the host
        else:
            self._fail(f"unexpected ASGI message {kind!r} ({message!r:.200}); expected "
                       "'http.response.start' or 'http.response.body'")


async def _call(scope, chunks):
    exchange = _Exchange(chunks)
    try:
        await _invoke(scope, exchange.receive, exchange.send)
    except BaseException as exc:
        if _aborting:
            _log_traceback(exc, "Request aborted:")
        elif any(exc is e for e in exchange.protocol_errors):
            _log_traceback(exc, "ASGI protocol error:")
        else:
            _log_traceback(exc, "Exception in ASGI application:")
            _emit({"t": "error", "message": _describe(exc)})
    else:
        if not exchange.finished:
            _emit({"t": "error", "message": "ASGI callable returned without " + (
                "completing the response" if exchange.started else "starting a response")})
    finally:
        if not exchange.done.done():
            exchange.done.set_result(None)


def _http_scope(raw):
    scope = dict(raw)
    for key in ("raw_path", "query_string"):
        if isinstance(scope.get(key), str):
            scope[key] = base64.b64decode(scope[key])
    scope["headers"] = [(base64.b64decode(name), base64.b64decode(value))
                        for name, value in scope.get("headers") or ()]
    for key in ("client", "server"):
        if isinstance(scope.get(key), list):
            scope[key] = tuple(scope[key])
    if _asgi_version == "2.0" and isinstance(scope.get("asgi"), dict):
        scope["asgi"] = dict(scope["asgi"], version="2.0")
    scope["state"] = dict(_lifespan.state)
    return scope


def _read_stdin_body(size):
    """The fast path for a big body: emit a "read" frame, then read exactly `size` raw bytes
    from fd 0. The host writes them only after that frame, so no stdin buffer of the REPL can
    have taken any, and none is left over for it."""
    _emit({"t": "read", "bytes": size})
    parts, left = [], size
    while left:
        data = os.read(0, min(left, 1 << 20))
        if not data:
            raise EOFError(f"stdin ended with {left} of {size} body bytes unread")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


# --- Lifespan: one long-lived task, suspended in the stopped loop between events --------------

class _Lifespan:
    def __init__(self):
        self.state = {}  # the ASGI state extension: a shallow copy goes into every call's scope
        self.task = self.queue = self.waiter = None
        self.expect = None  # "startup" | "shutdown" while a result is awaited
        self.sent = False
        self.outcome = None  # (result, message) once the task has ended

    def _resolve(self, result, message):
        self.expect = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((result, _clean(message or "")))

    async def _receive(self):
        return await self.queue.get()

    async def _send(self, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if self.expect and kind in (f"lifespan.{self.expect}.complete", f"lifespan.{self.expect}.failed"):
            self.sent = True
            self._resolve(kind.rpartition(".")[2], message.get("message", ""))
        else:
            # Not a lifespan message: an app that ignores the scope type (like the seed's
            # example) does not speak lifespan. Like ASGI servers in "auto" mode, treat it as
            # unsupported; its protocol error then surfaces on the first real request.
            raise RuntimeError(f"unexpected lifespan message {message!r:.200}")

    async def _main(self):
        scope = {"type": "lifespan", "asgi": _asgi_info("2.0"), "state": self.state}
        try:
            await _invoke(scope, self._receive, self._send)
        except BaseException as exc:
            if not self.sent:  # raised before saying anything: no lifespan support
                self.outcome = ("unsupported", _describe(exc))
            else:
                _log_traceback(exc, "Exception in ASGI lifespan:")
                self.outcome = ("failed", _describe(exc))
        else:
            self.outcome = (("unsupported", "the app returned without completing lifespan startup")
                            if self.expect == "startup" else ("complete", ""))
        self._resolve(*self.outcome)

    async def startup(self):
        if self.task is not None:
            return ("failed", "lifespan startup was already requested")
        self.queue = asyncio.Queue()
        self.queue.put_nowait({"type": "lifespan.startup"})
        self.expect, self.waiter = "startup", asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._main())
        return await self.waiter

    async def shutdown(self):
        if self.task is None:
            return ("unsupported", "lifespan startup was never requested")
        if self.outcome is not None:  # unsupported, failed, or the app already returned
            return self.outcome
        self.queue.put_nowait({"type": "lifespan.shutdown"})
        self.expect, self.waiter = "shutdown", asyncio.get_running_loop().create_future()
        result = await self.waiter
        for _ in range(10):  # let the app return after reporting
            if self.task.done():
                break
            await asyncio.sleep(0)
        return result


_lifespan = _Lifespan()


# --- serve(): one event in; frames out, "done" last ------------------------------------------

def _run(coro):
    """Run the loop until `coro` is done; other tasks (lifespan, background) stay pending."""
    global _aborting
    task = _loop.create_task(coro)
    try:
        return _loop.run_until_complete(task)
    except BaseException:
        if not task.done():  # e.g. a deadlock: cancel the call so that it does not linger
            _aborting = True
            task.cancel()
            try:
                _loop.run_until_complete(task)
            except BaseException:
                pass
            finally:
                _aborting = False
        raise


def _handle(event):
    _adapt_anyio()
    kind = event.get("type")
    if _app is None and kind != "reseed":
        raise RuntimeError("the program did not boot")
    if kind == "http":
        chunks = [base64.b64decode(c) for c in event.get("body_chunks") or ()]
        if event.get("body_stdin"):
            raw = _read_stdin_body(int(event["body_stdin"]))
            step = int(event.get("chunk_size") or 65536)
            chunks.extend(raw[i:i + step] for i in range(0, len(raw), step))
        _run(_call(_http_scope(event["scope"]), chunks))
    elif kind in ("aleph.message", "aleph.cron"):
        scope = {"type": kind, "asgi": _asgi_info("2.3"), "state": dict(_lifespan.state)}
        if kind == "aleph.message":
            scope["body"] = event.get("body")
        else:
            scope["time"] = event.get("time")
        _run(_call(scope, []))
    elif kind == "lifespan":
        phase = event.get("event")
        if phase not in ("startup", "shutdown"):
            raise ValueError(f"unknown lifespan event {phase!r}")
        result, message = _run(getattr(_lifespan, phase)())
        _emit({"t": "lifespan", "result": result, "message": message})
    elif kind == "reseed":
        random.seed(bytes.fromhex(event["seed"]))
    else:
        raise ValueError(f"unknown event type {kind!r}")


class _Guest:
    """What the host's REPL lines call: ``__aleph_wasm__.serve("<base64 of a JSON event>")``."""

    protocol = PROTOCOL

    def serve(self, b64):
        try:
            _handle(json.loads(base64.b64decode(b64)))
        except BaseException as exc:
            try:
                _flush_logs()
                _emit({"t": "error", "message": _describe(exc)})
            except BaseException:
                pass
        finally:
            try:
                _flush_logs()
                _emit({"t": "done"})
            except BaseException:
                pass
        return None  # the REPL would print any other value


# --- Warm-up: the event path once at boot, without the app -----------------------------------

def _warm_up():
    """Runs the event path once, without the app and without output, before the pause point:
    an event line compiled as the REPL compiles it, decoded, made into a scope; a call's exchange,
    a queue, a sleep on the loop. Their first-run costs (allocator pools, specialised bytecode,
    the loop's first turns) are then paid at boot -- and so are in a snapshot -- instead of by
    each instance's first events. Skipped when the app's import left work on the loop, which
    must first run at the lifespan startup, as it would without the warm-up."""
    try:
        if _loop._ready or _loop._scheduled or asyncio.all_tasks(_loop):
            return
        event = {"type": "http", "scope": {"type": "http", "raw_path": "Lw==", "query_string": "",
                                           "headers": [["aG9zdA==", "eA=="]]}}
        encoded = _b64(json.dumps(event).encode())
        compile(f'__aleph_wasm__.serve("{encoded}")', "<stdin>", "single")
        scope = _http_scope(json.loads(base64.b64decode(encoded))["scope"])
        for _ in range(2):
            _run(_probe(scope))
    except Exception as exc:  # an optimisation only: the app may have patched asyncio
        _STDERR.write(f"aleph-wasm: boot warm-up skipped: {_describe(exc)}\n")


async def _probe(scope):
    exchange = _Exchange([b""])
    await exchange.receive()
    queue = asyncio.Queue()
    queue.put_nowait(scope)
    await queue.get()
    await asyncio.sleep(0)
    exchange.done.set_result(None)
    await exchange.receive()


# --- Boot ------------------------------------------------------------------------------------

def _boot():
    global _app, _asgi_version, _loop
    settings = {key: os.environ.pop(key, None) for key in _ENV_KEYS}
    sys.ps1 = sys.ps2 = ""
    sys.displayhook = lambda value: None
    sys.stdout = sys.__stdout__ = _STDOUT
    sys.stderr = sys.__stderr__ = _STDERR
    sys.stdin = sys.__stdin__ = io.StringIO()  # fd 0 is the channel: the app reads EOF
    try:
        _fill_gaps()
        asyncio.set_event_loop_policy(_Policy())
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
        app = _load_app(settings["ALEPH_WASM_ENTRYPOINT"] or "", settings["ALEPH_WASM_CODE"],
                        settings["ALEPH_WASM_PLAIN"], settings["ALEPH_WASM_PATHS"])
        _asgi_version = "2.0" if _is_asgi2(app) else "3.0"
        _app = app
        _adapt_anyio()
        _warm_up()
    except BaseException as exc:
        _flush_logs()
        _emit({"t": "boot_error", "message": _describe(exc),
               "traceback": _clean("".join(traceback.format_exception(exc)))})
        return
    _flush_logs()
    _emit({"t": "ready", "asgi_version": _asgi_version})


__aleph_wasm__ = _Guest()
_boot()
