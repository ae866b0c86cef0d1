"""aleph-wasm guest bootstrap for CPython 3.12 on WASI -- channel protocol "AW4".

The protocol is specified in docs/channel.md (frames, kinds, life of an instance); the shared
test vectors are in aw4-vectors.json, checked here by test_wire.py.

The engine runs ``python -i /opt/aleph-wasm/boot.py`` (stdin a pipe, not a tty). This script boots
the program, writes READY (or BOOT_ERROR), then ends; the REPL takes over and blocks reading stdin
with no frame of ours on the stack: the pause point that snapshots capture. The host then sends
one REPL line, ``__aleph_wasm__.run("<64 hex digits>", <1|0>)``: it reseeds ``random``, writes
SERVING and serves frames from fd 0 until stdin ends, concurrently (1) or one request at a time
(0, reproducible executions); then it returns None and the REPL reads end-of-file.

What this file owns, inside the guest:
  * the hand-over: ALEPH_WASM_ENTRYPOINT / _CODE / _PLAIN / _PATHS are read, then deleted from
    os.environ; sys.path = code dir, <code>/packages (if present), the extra paths, the stdlib,
    the time zone database (tzdata.zip: the tzdata package's wheel); the working directory becomes the code dir;
  * the wire: frames as bytes and back (_frame, _pack_fields, _unpack_fields, _FrameReader);
  * the event loop. WASI has no socketpair(), so asyncio's default loop cannot start: _Loop is a
    BaseEventLoop with a selector of its own. While serving, it waits on fd 0 and the next timer
    together (select() on fd 0: WASI poll_oneoff) and turns what arrives into frames; in
    sequential mode it reads fd 0 only while no request is in flight (or one still waits for its
    body or a host reply), else it only sleeps until the next timer (waiting with no timer is a
    deadlock: the requests in flight fail). Outside serving (the app's import, the warm-up) it only
    sleeps. A policy makes get_event_loop()/new_event_loop()/asyncio.run() use it. No threads
    either: threads.py makes Thread.start(), ThreadPoolExecutor and run_in_executor() deferred
    work (docs/python-runtime.md); anyio's worker threads run the call inline. Its network
    methods (create_connection, ...) are hostnet.py's, over host connections;
  * stand-ins (standins.py) for multiprocessing, pwd, grp, fcntl and resource;
  * fd 1, for frames only: sys.stdout/sys.stderr become streams that turn writes into LOG frames
    (tagged with the id of the request whose task wrote them); response frames are buffered and
    written once per loop turn; fd 0 is the channel: the app's sys.stdin is empty (input() raises
    EOFError);
  * the ASGI side: http and the aleph triggers, one task per request; lifespan (one long-lived
    task per instance); a WSGI entrypoint is served through wsgi.py's adapter;
  * guest -> host calls: the module ``_aleph_wasm`` (``await call(name, args) -> bytes``,
    ``call_blocking(name, args)`` for sync code, ``HostCallError``); sockets and ssl over them
    (hostnet.py, installed at boot);
  * the warm-up: after the app's import, the request path runs once without the app, so that its
    first-run costs are in a snapshot rather than in each restored instance's first requests.
"""

import asyncio
import codecs
import contextvars
import importlib
import importlib.machinery
import importlib.util
import inspect
import io
import json
import os
import random
import select
import struct
import sys
import time
import traceback
import types

PROTOCOL = "AW4"
_ENV_KEYS = ("ALEPH_WASM_ENTRYPOINT", "ALEPH_WASM_CODE", "ALEPH_WASM_PLAIN", "ALEPH_WASM_PATHS")
_BYTES = (bytes, bytearray, memoryview)
_LOG_CAP = 64 * 1024  # bytes of UTF-8 text in one LOG frame (and in an ERROR text)
_BODY_PART = 1 << 20  # a response body part larger than this is split into several BODY frames
_READ_SIZE = 1 << 20  # bytes asked of fd 0 at a time
_DEADLOCK = ("deadlock: the app waits for something that can never happen "
             "(no ready callbacks, no timers, no I/O in this sandbox)")

# Frame kinds (docs/channel.md). Host -> guest:
HTTP, BODY, EVENT, CANCEL, REPLY, HTTP_EMPTY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
# Guest -> host:
READY, BOOT_ERROR, LOG, START, RESPONSE_BODY, ERROR, PROTOCOL_ERROR, LIFESPAN, DONE, SERVING, \
    CALL = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B


# --- The wire: frames as bytes and back --------------------------------------------------------

_MAGIC = b"\x1eAW2"
_HEAD = struct.Struct("<4sIBI")  # magic, len (kind + id + payload), kind, id
_BYTE_HEAD = struct.Struct("<4sIBIB")  # the same, then one byte (BODY's `more`, LOG's stream)
_PREFIX = struct.Struct("<4sI")
_KIND_ID = struct.Struct("<BI")
_U32 = struct.Struct("<I")
_HTTP_HEAD = struct.Struct("<IIIHH")  # HTTP: path length, text length, header pairs, ports
_START_HEAD = struct.Struct("<HI")  # START: status, header pairs
_HEAD_SIZE = _HEAD.size  # 13
_MAX_LEN = (16 << 20) + 5  # the largest `len`
_select = select.select  # fd 0's; hostnet.py makes select.select understand host sockets too


class WireError(ValueError):
    """Bytes that are not frames. `frames`: the complete frames read before the fault."""

    def __init__(self, message, frames=()):
        super().__init__(message)
        self.frames = list(frames)


def _frame(kind, id, payload=b""):
    """One frame as bytes."""
    return _HEAD.pack(_MAGIC, len(payload) + 5, kind, id) + payload


def _pack_fields(items):
    """Payload "fields": each item as a u32 LE length and its bytes."""
    parts = []
    for item in items:
        parts.append(_U32.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def _unpack_fields(buf):
    """The items of a "fields" payload, as bytes; WireError if it is not one."""
    items = []
    append, unpack = items.append, _U32.unpack_from
    pos, end = 0, len(buf)
    try:
        while pos < end:
            start = pos + 4
            pos = start + unpack(buf, pos)[0]
            append(buf[start:pos])
    except struct.error:
        raise WireError(f"a field length is cut short ({end - pos} of 4 bytes)") from None
    if pos != end:
        raise WireError(f"the last field overruns the payload by {pos - end} bytes")
    return items


def _http_fields(payload):
    """An HTTP payload's fields: (path, [method, scheme, http_version, root_path, client host,
    server name], [raw_path, query_string, header names and values...], client port, server
    port); WireError if it is not one."""
    try:
        path_len, text_len, pairs, client_port, server_port = _HTTP_HEAD.unpack_from(payload)
    except struct.error:
        raise WireError(f"an HTTP frame's head is cut short ({len(payload)} of 16 bytes)") from None
    text_at = 16 + path_len
    raw_at = text_at + text_len
    if raw_at > len(payload):
        raise WireError(f"an HTTP frame's path and text overrun it by {raw_at - len(payload)} bytes")
    text = payload[text_at:raw_at].decode("utf-8", "replace").split("\0")
    raw = payload[raw_at:].split(b"\0")
    if len(text) != 6 or len(raw) != 2 + 2 * pairs:
        raise WireError(f"an HTTP frame has {len(text)} text fields (not 6) and {len(raw)} byte "
                        f"fields (not 2 + 2 x {pairs})")
    return payload[16:text_at].decode("utf-8", "replace"), text, raw, client_port, server_port


def _json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _utf8_cut(raw, cap):
    """The largest length <= cap at which `raw` (UTF-8) can be cut outside a character."""
    if len(raw) <= cap:
        return len(raw)
    cut = cap
    while cut > 0 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


def _text(text):
    """A text payload: UTF-8, at most 64 KiB."""
    raw = str(text).encode("utf-8", "replace")
    return raw[:_utf8_cut(raw, _LOG_CAP)]


class _FrameReader:
    """Frames out of a byte stream that arrives in chunks of any size: feed(chunk) returns the
    list of the (kind, id, payload) frames completed by it (payload as bytes). Raises WireError
    (with the frames read before it) at bytes that are not a frame header or at a `len` out of
    bounds: the stream cannot be resynchronised after either."""

    def __init__(self):
        self._buf = bytearray()  # an incomplete frame
        self._need = 0  # bytes _buf must hold before anything more can be decoded

    def pending(self):
        return len(self._buf)

    def wanted(self):
        """How many bytes complete the next frame's header, or else the frame: a read of at
        most this many never takes bytes of the frame after it."""
        return self._need - len(self._buf) if self._buf else 8

    def feed(self, data):
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            src = bytes(self._buf)
        else:
            src = data
        frames, pos, end = [], 0, len(src)
        need = 8
        while end - pos >= 8:
            magic, size = _PREFIX.unpack_from(src, pos)
            if magic != _MAGIC:
                raise WireError(f"not a frame: {bytes(src[pos:pos + 16])!r}", frames)
            if not 5 <= size <= _MAX_LEN:
                raise WireError(f"frame length {size} out of bounds (5 to {_MAX_LEN})", frames)
            stop = pos + 8 + size
            if stop > end:
                need = 8 + size
                break
            kind, id = _KIND_ID.unpack_from(src, pos + 8)
            frames.append((kind, id, src[pos + _HEAD_SIZE:stop]))
            pos = stop
        else:
            if pos < end and not _MAGIC.startswith(bytes(src[pos:pos + 4])):
                raise WireError(f"not a frame: {bytes(src[pos:pos + 16])!r}", frames)
        if pos == end:
            if self._buf:
                self._buf = bytearray()
        else:
            self._buf = bytearray(src[pos:])
        self._need = need
        return frames


# --- Output: response frames buffered for one write per loop turn, logs at once ---------------

_out = []  # bytes-like pieces of whole frames, written by _flush_out()
_muted = False  # the warm-up: output is dropped
_rid = contextvars.ContextVar("aleph_wasm_request_id", default=0)


def _write_all(data):
    view = None
    while data:
        written = os.write(1, data)
        if written >= len(data):
            return
        view = memoryview(data) if view is None else view
        view = data = view[written:]


def _flush_out():
    if not _out:
        return
    data = _out[0] if len(_out) == 1 else b"".join(_out)
    _out.clear()
    if not _muted:
        _write_all(data)


def _emit(kind, id, payload=b""):
    """Queues a frame for the next flush."""
    _out.append(_HEAD.pack(_MAGIC, len(payload) + 5, kind, id))
    if payload:
        _out.append(payload)


def _emit_now(kind, id, payload=b""):
    """Writes a frame now, after what is queued."""
    _emit(kind, id, payload)
    _flush_out()


def _emit_body(id, body, more):
    """Queues BODY frames for one body part (bytes), split past 1 MiB."""
    size = len(body)
    if size <= _BODY_PART:
        _out.append(_BYTE_HEAD.pack(_MAGIC, size + 6, RESPONSE_BODY, id, more))
        if size:
            _out.append(body)
        return
    view = memoryview(body)
    for at in range(0, size, _BODY_PART):
        piece = view[at:at + _BODY_PART]
        last = at + _BODY_PART >= size
        _out.append(_BYTE_HEAD.pack(_MAGIC, len(piece) + 6, RESPONSE_BODY, id, more if last else 1))
        _out.append(piece)


def _clean(text):
    """`text` as a str that is valid UTF-8 (lone surrogates become "?"): any JSON parser takes it."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


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
    """Text written here becomes LOG frames, written at once: everything up to the last newline
    (a print() is one frame), the rest on flush(); no frame carries more than 64 KiB of text. A
    frame carries the id of the request whose task wrote it (0 outside any): text left pending by
    one request is flushed before another writes."""

    encoding, errors, line_buffering = "utf-8", "replace", True
    __slots__ = ("_stream", "_parts", "_size", "_id", "buffer", "at_eof")  # slots: faster than
    # the instance dict of an io class

    def __init__(self, stream):
        self._stream = stream  # 1 stdout, 2 stderr
        self._parts, self._size, self._id = [], 0, 0
        self.buffer = _LogBinary(self)
        self.at_eof = False  # the REPL is about to read EOF: its "\n" on stderr is not a log

    @property
    def name(self):
        return "<stdout>" if self._stream == 1 else "<stderr>"

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
        if text.__class__ is not str and not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        parts = self._parts
        id = _rid.get()
        if id != self._id:
            if parts:
                self.flush()
                parts = self._parts
            self._id = id
        if text[-1] == "\n":  # what is pending ends with whole lines (the end of a print())
            if parts:
                parts.append(text)
                text = "".join(parts)
                self._parts, self._size = [], 0
            elif self.at_eof and text == "\n":
                self.at_eof = False
                return 1
            self._send(text)
        elif "\n" in text:
            parts.append(text)
            pending = "".join(parts)
            cut = pending.rfind("\n") + 1
            self._parts, self._size = [pending[cut:]], len(pending) - cut
            self._send(pending[:cut])
        else:
            parts.append(text)
            self._size += len(text)
            if self._size >= _LOG_CAP:
                self.flush()
        return len(text)

    def flush(self):
        if self._parts:
            pending = "".join(self._parts)
            self._parts, self._size = [], 0
            if pending:
                self._send(pending)

    def _send(self, text):
        raw = text.encode("utf-8", "replace")
        if len(raw) <= _LOG_CAP:  # one frame: most lines
            _out.append(_BYTE_HEAD.pack(_MAGIC, len(raw) + 6, LOG, self._id, self._stream))
            _out.append(raw)
            _flush_out()
            return
        while raw:
            cut = _utf8_cut(raw, _LOG_CAP)
            _out.append(_BYTE_HEAD.pack(_MAGIC, cut + 6, LOG, self._id, self._stream))
            _out.append(raw[:cut] if cut < len(raw) else raw)
            raw = raw[cut:]
        _flush_out()


_STDOUT, _STDERR = _LogStream(1), _LogStream(2)


def _flush_logs():
    if _STDOUT._parts:
        _STDOUT.flush()
    if _STDERR._parts:
        _STDERR.flush()


def _log_traceback(exc, header):
    _STDERR.write(header + "\n" + "".join(traceback.format_exception(exc)))


# --- The event loop ----------------------------------------------------------------------------

class _TimerSelector:
    """The selector outside serving: there is no I/O to wait for, only the next timer."""

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError(_DEADLOCK)
        if timeout > 0:
            time.sleep(timeout)
        return []


class _ServeSelector:
    """The selector while serving: flushes the output, then waits for stdin and the next timer
    (concurrent mode), or reads stdin only when the requests in flight may need it (sequential
    mode); returns the frames read, which _Loop._process_events dispatches."""

    def __init__(self, concurrent):
        self.concurrent = concurrent
        self.reader = _FrameReader()
        self.ended = False  # stdin ended (or carried garbage): the requests in flight are cancelled
        self.deadline = 0.0
        self.deferred = []  # frames read by a blocking host call, for the loop's next turn
        self.lost = None  # why stdin ended while a blocking host call read it

    def select(self, timeout=None):
        if _out:
            _flush_out()
        if self.deferred:
            frames, self.deferred = self.deferred, []
            return frames
        if self.lost is not None:
            reason, self.lost = self.lost, None
            self._end(reason)
        if self.ended:
            return self._drain(timeout)
        if self.concurrent:
            if not _select((0,), (), (), timeout)[0]:
                return []
        else:
            if _requests and not any(not r.body_complete for r in _requests.values()):
                # a request is in flight and has its whole body: timers only, unless it awaits
                # a reply, which is read once the ready callbacks have run
                if not _calls:
                    if timeout is None:
                        self._deadlock()
                    elif timeout > 0:
                        time.sleep(timeout)
                    return []
                if timeout == 0:
                    return []
            # one frame, read whole with blocking reads and nothing after it, so what the loop
            # sees in a turn never depends on when the host wrote
            return self._one_frame()
        data = os.read(0, _READ_SIZE)  # stdin is ready
        if not data:
            self._end("as the host closed the channel")
            return []
        frames, lost = self.feed(data)
        if lost is not None:
            self._end(lost)
        return frames

    def _one_frame(self):
        """Sequential mode: the next frame, read with blocking reads that stop at its end."""
        while True:
            data = os.read(0, self.reader.wanted())
            if not data:
                self._end("as the host closed the channel")
                return []
            frames, lost = self.feed(data)
            if lost is not None:
                if _select((0,), (), (), 0)[0]:
                    os.read(0, _READ_SIZE)  # the rest of what is not a frame, as a whole read
                self._end(lost)
                return frames
            if frames:
                return frames

    def feed(self, data):
        """The frames in `data`, and why the channel is lost if it is."""
        try:
            return self.reader.feed(data), None
        except WireError as exc:
            _STDERR.write(f"aleph-wasm: stdin carries something that is not a frame ({exc}); "
                          "serving stops\n")
            return exc.frames, "as the channel broke"

    def wait_reply(self, id):
        """Reads stdin until the REPLY for call `id` (a blocking call); what else arrives waits
        for the loop's next turn. A CANCEL of the request making the call ends the wait: the
        call raises HostCallError("cancelled"), and the request's task is cancelled next turn
        (its late REPLY is ignored)."""
        request = _rid.get()
        while self.lost is None and not self.ended:
            data = os.read(0, _READ_SIZE if self.concurrent else self.reader.wanted())
            if not data:
                self.lost = "as the host closed the channel"
                break
            frames, self.lost = self.feed(data)
            for at, (kind, fid, payload) in enumerate(frames):
                if kind == REPLY and fid == id:
                    self.deferred += frames[at + 1:]
                    return payload
                self.deferred.append((kind, fid, payload))
                if kind == CANCEL and request and fid == request:
                    self.deferred += frames[at + 1:]
                    raise HostCallError("cancelled", f"request {request} was cancelled by the host "
                                        "while this call waited for its answer")
        raise HostCallError("io", "the host closed the channel before answering")

    def _end(self, reason):
        self.ended = True
        self.deadline = time.monotonic() + 1.0  # for the cancelled requests to end
        for request in list(_requests.values()):
            _cancel(request, reason)

    def _drain(self, timeout):
        now = time.monotonic()
        if not _requests or timeout is None or now >= self.deadline:
            for request in list(_requests.values()):  # stuck despite cancellation
                _finish(request)
            _flush_out()
            _loop.stop()
        elif timeout > 0:
            time.sleep(min(timeout, self.deadline - now))
        return []

    def _deadlock(self):
        for request in list(_requests.values()):
            if request.abort is None:
                request.abort = "RuntimeError: " + _DEADLOCK
                _cancel(request, None)
            else:  # still stuck after its cancellation: given up
                _finish(request, request.abort)
        _flush_out()


def _load_beside(file, name):
    """A module of the bootstrap, beside this file (which is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), file)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_net = _load_beside("hostnet.py", "_aleph_wasm_net")
_threads = _load_beside("threads.py", "_aleph_wasm_threads")
_standins = _load_beside("standins.py", "_aleph_wasm_standins")
_wsgi = _load_beside("wsgi.py", "_aleph_wasm_wsgi")


class _Loop(_net.LoopMethods, asyncio.BaseEventLoop):
    """Callbacks, tasks and timers; while serving (the instance loop only), the frames read from
    stdin too. run_until_complete() can be called again and again; between calls nothing runs
    and pending tasks stay suspended."""

    def __init__(self):
        super().__init__()
        self._selector = _TimerSelector()
        self._default_executor = _threads.ThreadPoolExecutor()  # set_default_executor() insists on threads

    def time(self):
        return time.monotonic()

    def _process_events(self, event_list):
        for kind, id, payload in event_list:  # frames, from _ServeSelector
            _dispatch(kind, id, payload)
        _start_pending()

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


# --- anyio (under Starlette, FastAPI, httpx) on a Python without threads ----------------------

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
    _net._adapt_anyio_tls()


def _fill_gaps():
    """What the WASI build leaves out but common packages use: sockets and ssl through the host
    (hostnet.py); threads as deferred work (threads.py); stand-ins for multiprocessing, pwd, grp,
    fcntl and resource (standins.py)."""
    _net.install(call, call_blocking, HostCallError, lambda handle: _call_soon(
        "net.close", struct.pack("<I", handle)))
    _threads.install(lambda: _loop)
    _standins.install()


# --- The app: import, ASGI version, invocation -----------------------------------------------

_app = None
_asgi_version = "3.0"
_loop = None
_anyio_adapted = False


def _load_app(entrypoint, code, plain, paths):
    here = os.path.dirname(os.path.abspath(__file__))
    front = [code] if code else []
    if code and os.path.isdir(os.path.join(code, "packages")):
        front.append(os.path.join(code, "packages"))
    front += [p for p in (paths or "").split(":") if p]
    # The IANA time zone database (the tzdata package, a zip), behind the program's own: zoneinfo
    # finds no system copy under WASI.
    back = [os.path.join(here, "tzdata.zip")]
    sys.path[:] = front + [p for p in sys.path if p not in (here, "", *back)] + back
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



# --- Requests: one task each, receive/send per request --------------------------------------

_requests = {}  # id -> _Request: the HTTP requests and events in flight (no DONE sent yet)


class _Request:
    """One HTTP request or event in flight: its task, the receive/send of its ASGI call (the
    request body from BODY frames, then, once the response is complete, http.disconnect; sent
    messages are checked and become START/BODY frames), and how it ends."""

    __slots__ = ("id", "scope", "task", "inbox", "waiters", "body_complete", "done", "started",
                 "finished", "trailers", "protocol_errors", "running", "cancelled", "abort",
                 "closed")

    def __init__(self, id, scope, body_complete=False):
        self.id, self.scope, self.task = id, scope, None
        self.inbox = []
        self.waiters = None  # futures of receive() calls waiting for body
        self.body_complete = body_complete  # the last BODY frame (more = 0) has arrived
        self.done = None  # a future set when the response is complete (made when awaited)
        self.started = self.finished = self.trailers = False
        self.protocol_errors = None
        self.running = False  # the task has started
        self.cancelled = None  # why the host gave up on it
        self.abort = None  # the ERROR text it fails with once cancelled (a deadlock)
        self.closed = False  # DONE sent

    def feed(self, body, more):
        if self.body_complete:
            return  # a BODY after the last one: nothing listens for it
        self.inbox.append({"type": "http.request", "body": body, "more_body": more})
        self.body_complete = not more
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _complete(self):
        self.finished = True
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def receive(self):
        while not self.inbox:
            if self.body_complete:
                if not self.finished:
                    if self.done is None:
                        self.done = _loop.create_future()
                    await asyncio.shield(self.done)  # a cancelled listener must not cancel `done`
                return {"type": "http.disconnect"}
            waiter = _loop.create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            await waiter
        return self.inbox.pop(0)

    def _fail(self, message):
        _emit(PROTOCOL_ERROR, self.id, _text(_clean(message)))
        error = RuntimeError(message)
        if self.protocol_errors is None:
            self.protocol_errors = []
        self.protocol_errors.append(error)
        raise error

    async def send(self, message):
        if type(message) is not dict and not isinstance(message, dict):
            self._fail(f"an ASGI message must be a dict, not {type(message).__name__}: {message!r:.200}")
        kind = message.get("type")
        if kind == "http.response.body":
            if not self.started:
                self._fail("http.response.body sent before http.response.start")
            if self.finished:
                self._fail("http.response.body sent after the response was complete")
            body = message.get("body", b"")
            if type(body) is not bytes:
                if not isinstance(body, _BYTES):
                    self._fail(f"http.response.body 'body' must be bytes, not {type(body).__name__}")
                body = bytes(body)  # a copy: the app may change its buffer before the write
            more = bool(message.get("more_body", False))
            _emit_body(self.id, body, more)
            if not more:
                self._complete()
        elif kind == "http.response.start":
            if self.started:
                self._fail("http.response.start sent twice")
            status = message.get("status")
            if type(status) is not int or not 100 <= status <= 999:
                self._fail(f"http.response.start needs an integer 'status', not {status!r:.100}")
            try:  # join() copies: the app may change a buffer it sent
                headers = message.get("headers") or ()
                items = [item for name, value in headers for item in (name, value)]
                joined = b"\0".join(items)
            except (TypeError, ValueError):
                self._fail("http.response.start 'headers' must be [name, value] pairs of bytes")
            if items and joined.count(0) != len(items) - 1:
                self._fail("http.response.start 'headers' hold a NUL byte, which HTTP forbids")
            self.started, self.trailers = True, bool(message.get("trailers", False))
            _emit(START, self.id, _START_HEAD.pack(status, len(items) >> 1) + joined)
        elif kind == "http.response.trailers" and self.trailers:
            pass  # accepted and dropped: trailers do not reach the host
        else:
            self._fail(f"unexpected ASGI message {kind!r} ({message!r:.200}); expected "
                       "'http.response.start' or 'http.response.body'")


def _finish(request, error=None):
    """The request's last frames: ERROR if given, then DONE; it leaves the table."""
    if request.closed:
        return
    request.closed = True
    if not request.finished:
        request._complete()
    _flush_logs()
    if error is not None:
        _emit(ERROR, request.id, _text(error))
    _emit(DONE, request.id)
    if _requests.get(request.id) is request:
        del _requests[request.id]


def _cancel(request, reason):
    """Cancels the request's task (reason: why the host gave up on it; None for an abort)."""
    if reason is not None and request.cancelled is None:
        request.cancelled = reason
    if request.running:
        request.task.cancel()
    # else: its task sees the flag when it starts


def _ended_early(request, exc):
    """Reports how the request's task ended on `exc` (None: before it started), unless the
    host gave it up."""
    if request.closed:  # given up while stuck: its ERROR and DONE are out
        return
    if request.abort is not None:
        if exc is not None:
            _log_traceback(exc, "Request aborted:")
        _emit(ERROR, request.id, _text(request.abort))
    elif request.cancelled is not None:
        _STDERR.write(f"request {request.id} cancelled {request.cancelled}\n")
    elif request.protocol_errors and any(exc is e for e in request.protocol_errors):
        _log_traceback(exc, "ASGI protocol error:")
    else:
        _log_traceback(exc, "Exception in ASGI application:")
        _emit(ERROR, request.id, _text(_describe(exc)))


async def _serve_app(request):
    """The task of an HTTP request or an aleph event: the app's call, then DONE."""
    request.running = True
    _rid.set(request.id)
    try:
        if request.cancelled is not None or request.abort is not None:
            return _ended_early(request, None)  # given up before it started
        if _asgi_version == "3.0":
            await _app(request.scope, request.receive, request.send)
        else:
            await _app(request.scope)(request.receive, request.send)
    except BaseException as exc:
        _ended_early(request, exc)
    else:
        if not request.finished and not request.closed:
            _emit(ERROR, request.id, b"ASGI callable returned without " + (
                b"completing the response" if request.started else b"starting a response"))
    finally:
        _finish(request)


async def _serve_lifespan(request, phase):
    request.running = True
    _rid.set(request.id)
    try:
        if request.cancelled is not None or request.abort is not None:
            return _ended_early(request, None)  # given up before it started
        result, message = await _lifespan.run(phase, request.id)
        _emit(LIFESPAN, request.id, _json({"result": result, "message": message}))
    except BaseException as exc:
        if request.abort is None and request.cancelled is None:
            _emit(ERROR, request.id, _text(_describe(exc)))
        else:
            _ended_early(request, exc)
    finally:
        _finish(request)


# --- Dispatch: one frame from the host ----------------------------------------------------------

def _reject(id, message):
    """A frame for `id` that cannot be served: ERROR + DONE (the request fails if in flight)."""
    request = _requests.get(id)
    if request is not None:
        if request.abort is None:
            request.abort = message
        _cancel(request, None)
    elif id:
        _emit(ERROR, id, _text(message))
        _emit(DONE, id)
    else:
        _STDERR.write(f"aleph-wasm: ignored a frame for id 0: {message}\n")


_pending = []  # requests whose frames arrived in this batch, their tasks not yet started
_EAGER = sys.version_info >= (3, 12)  # asyncio.Task(eager_start=True)


def _start(request, serve, *args):
    """Registers the request; its task starts once the batch of frames it came in is dispatched,
    so that a request whose body came in the same read finds it there."""
    if request.id in _requests:
        raise ValueError(f"request id {request.id} is already in flight")
    _requests[request.id] = request
    _pending.append((request, serve(request, *args)))


def _start_pending():
    """Starts the tasks of the requests of the last batch. With eager start (3.12), a task runs
    at once, up to its first real wait: an app that answers without waiting is served in this
    turn, with no scheduling round trip through the loop."""
    while _pending:
        request, coro = _pending.pop(0)
        if _EAGER:
            request.task = asyncio.Task(coro, loop=_loop, eager_start=True)
        else:
            request.task = _loop.create_task(coro)


def _on_http(id, payload, empty=False):
    """An HTTP request: its scope; its body comes in BODY frames, or (HTTP_EMPTY) is empty."""
    if not _anyio_adapted and "anyio" in sys.modules:
        _adapt_anyio()
    if _app is None:
        raise RuntimeError("the program did not boot")
    path, (method, scheme, version, root_path, client, server), raw, client_port, server_port = \
        _http_fields(payload)
    headers = iter(raw)
    raw_path = next(headers)
    scope = {
        "type": "http",
        "asgi": {"version": _asgi_version, "spec_version": "2.3"},
        "http_version": version,
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": next(headers),
        "root_path": root_path,
        "headers": list(zip(headers, headers)),
        "client": (client, client_port) if client else None,
        "server": (server, server_port) if server else None,
        "state": dict(_lifespan.state),
    }
    request = _Request(id, scope)
    if empty:
        request.feed(b"", False)
    _start(request, _serve_app)


def _on_http_empty(id, payload):
    _on_http(id, payload, True)


def _on_body(id, payload):
    request = _requests.get(id)
    if request is None:
        return  # the body of a request that has ended (or was refused): nothing listens for it
    if not payload or payload[0] > 1:
        raise WireError("a BODY frame starts with its `more` byte, 0 or 1")
    request.feed(payload[1:], payload[0] == 1)


def _on_event(id, payload):
    _adapt_anyio()
    event = json.loads(payload)
    kind = event.get("type") if isinstance(event, dict) else None
    if _app is None:
        raise RuntimeError("the program did not boot")
    if kind == "lifespan":
        phase = event.get("event")
        if phase not in ("startup", "shutdown"):
            raise ValueError(f"unknown lifespan event {phase!r}")
        _start(_Request(id, None, body_complete=True), _serve_lifespan, phase)
    elif kind in ("aleph.message", "aleph.cron"):
        scope = {"type": kind, "asgi": _asgi_info("2.3"), "state": dict(_lifespan.state)}
        if kind == "aleph.message":
            scope["body"] = event.get("body")
        else:
            scope["time"] = event.get("time")
        request = _Request(id, scope)
        request.feed(b"", False)
        _start(request, _serve_app)
    else:
        raise ValueError(f"unknown event type {kind!r}")


def _on_cancel(id, payload):
    request = _requests.get(id)
    if request is None:
        return  # it has ended already: its DONE is out or on its way
    if request.cancelled is None:
        _cancel(request, "by the host")
    else:  # cancelled before and still running (the app ignores cancellation): given up
        _finish(request)


def _on_reply(id, payload):
    future = _calls.pop(id, None)
    if future is None or future.done():
        return  # the caller has gone (cancelled), or nobody waits for this answer
    try:
        future.set_result(_reply_result(payload))
    except HostCallError as error:
        future.set_exception(error)


_HANDLERS = {HTTP: _on_http, HTTP_EMPTY: _on_http_empty, BODY: _on_body, EVENT: _on_event,
             CANCEL: _on_cancel, REPLY: _on_reply}


def _dispatch(kind, id, payload):
    handler = _HANDLERS.get(kind)
    try:
        if handler is None:
            raise WireError(f"unknown frame kind 0x{kind:02x}")
        handler(id, payload)
    except Exception as exc:
        if kind == REPLY:  # a call id, not a request's: nobody to tell
            _STDERR.write(f"aleph-wasm: bad REPLY for call {id}: {_describe(exc)}\n")
        else:
            _reject(id, _describe(exc))


# --- Guest -> host calls -------------------------------------------------------------------------

_calls = {}  # call id -> the future of its REPLY (None: read by a blocking call, or ignored)
_next_call = 0


def _new_call(name, args, waiter):
    """Queues a CALL frame and returns its id; `waiter` (a future or None) gets the REPLY."""
    global _next_call
    if not isinstance(name, str):
        raise TypeError(f"the name of a host call must be a str, not {type(name).__name__}")
    if not isinstance(args, _BYTES):
        raise TypeError(f"the arguments of a host call must be bytes, not {type(args).__name__}")
    while True:
        _next_call = _next_call % 0xFFFFFFFF + 1
        if _next_call not in _calls:
            break
    id = _next_call
    _calls[id] = waiter
    _emit(CALL, id, _pack_fields((name.encode(), bytes(args))))
    return id


def _reply_result(payload):
    """The result bytes of a REPLY payload; HostCallError if it reports a failure."""
    if payload[:1] == b"\x01":
        return payload[1:]
    try:
        if payload[:1] != b"\x00":
            raise WireError("a REPLY frame starts with its `ok` byte, 0 or 1")
        kind, message = _unpack_fields(payload[1:])
        error = HostCallError(kind.decode("utf-8", "replace"), message.decode("utf-8", "replace"))
    except ValueError as exc:
        error = HostCallError("malformed_reply", f"the host's REPLY could not be read: {exc}")
    raise error


def _serving_now():
    if _serving is None:
        raise RuntimeError("host calls are only possible while the instance serves requests "
                           "(not while the program is imported)")
    return _serving


def call_blocking(name, args=b""):
    """Calls the host function `name` and waits for its answer, blocking the instance: for sync
    code (a plain socket). Returns the result bytes or raises HostCallError."""
    serving = _serving_now()
    id = _new_call(name, args, None)
    try:
        _flush_out()
        return _reply_result(serving.wait_reply(id))
    finally:
        _calls.pop(id, None)


def _call_soon(name, args=b""):
    """Sends a call whose answer nobody waits for (closing a connection)."""
    if _serving is not None:
        _new_call(name, args, None)


class HostCallError(RuntimeError):
    """A host call failed: `kind` (e.g. "unknown_call") and `message`, as the host said."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


async def call(name, args=b""):
    """Calls the host function `name` with `args` (bytes) and returns its result (bytes); raises
    HostCallError when the host answers with a failure. Other requests go on meanwhile."""
    _serving_now()
    if asyncio.get_running_loop() is not _loop:
        raise RuntimeError("host calls are only possible on the instance's loop while it serves")
    future = _loop.create_future()
    id = _new_call(name, args, future)
    try:
        return await future
    finally:
        if _calls.get(id) is future:
            del _calls[id]


def _calls_module():
    module = types.ModuleType("_aleph_wasm", "Calls from the program to its host (aleph-wasm).")
    module.call, module.call_blocking, module.HostCallError = call, call_blocking, HostCallError
    HostCallError.__module__ = call.__module__ = call_blocking.__module__ = "_aleph_wasm"
    return module


# --- Lifespan: one long-lived task, suspended while no lifespan event is in flight ------------

class _Lifespan:
    def __init__(self):
        self.state = {}  # the ASGI state extension: a shallow copy goes into every call's scope
        self.task = self.queue = self.waiter = None
        self.expect = None  # "startup" | "shutdown" while a result is awaited
        self.sent = False
        self.outcome = None  # (result, message) once the task has ended
        self.event_id = 0  # the lifespan event being served: the app's logs carry its id

    def _resolve(self, result, message):
        self.expect = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((result, _clean(message or "")))

    async def _receive(self):
        message = await self.queue.get()
        _rid.set(self.event_id)
        return message

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

    async def run(self, phase, event_id):
        self.event_id = event_id
        return await (self.startup() if phase == "startup" else self.shutdown())

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


# --- run(): serving until stdin ends -------------------------------------------------------------

_serving = None  # the _ServeSelector while run() serves


class _Guest:
    """What the host's REPL line calls: ``__aleph_wasm__.run("<64 hex digits>", <1|0>)``."""

    protocol = PROTOCOL

    def run(self, seed_hex, mode):
        """Reseeds `random`, writes SERVING, serves frames from stdin until it ends (concurrently
        if `mode`, else one request at a time), and returns None (the REPL then reads EOF)."""
        global _serving
        if _serving is not None:
            raise RuntimeError("the instance is already serving")
        _STDERR.at_eof = False
        try:
            random.seed(bytes.fromhex(seed_hex))
            _serving = _ServeSelector(bool(mode))
            _flush_logs()
            _emit_now(SERVING, 0, _json({"protocol": PROTOCOL, "concurrent": bool(mode)}))
            _adapt_anyio()
            idle, _loop._selector = _loop._selector, _serving
            try:
                _loop.run_forever()
            finally:
                _loop._selector = idle
                _serving = None
            _flush_logs()
            _flush_out()
            _STDERR.at_eof = True
        except SystemExit:
            raise
        except BaseException as exc:
            # Not the end of stdin: the REPL must not read what follows as Python. The process ends.
            try:
                _log_traceback(exc, "aleph-wasm: serving failed:")
                _flush_out()
            except BaseException:
                pass
            raise SystemExit(1)
        return None  # the REPL would print any other value


# --- Warm-up: the request path once at boot, without the app -----------------------------------

async def _warm_app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x")]})
    await send({"type": "http.response.body", "body": b"x", "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    await receive()


async def _probe(empty):
    text = b"\0".join([b"GET", b"http", b"1.1", b"", b"127.0.0.1", b"localhost"])
    raw = b"\0".join([b"/", b"", b"host", b"localhost"])
    head = _HTTP_HEAD.pack(1, len(text), 1, 1, 80) + b"/" + text + raw
    data = _frame(HTTP_EMPTY, 1, head) if empty else _frame(HTTP, 1, head) + _frame(BODY, 1, b"\x00")
    reader = _FrameReader()
    frames = reader.feed(data[:7]) + reader.feed(data[7:])
    for frame in frames:
        _dispatch(*frame)
    request = _requests.get(1)
    _start_pending()
    if not request.task.done():
        await request.task
    queue = asyncio.Queue()
    queue.put_nowait(frames)
    await queue.get()
    await asyncio.sleep(0)


def _warm_up():
    """Runs the request path, without the app and without output, before the pause point: an
    HTTP frame and its BODY, and an HTTP_EMPTY frame, each read, dispatched, made into a scope
    and a task, twice; the exchange, its frames encoded (and dropped), a queue, a sleep on the
    loop. Their first-run costs (allocator
    pools, specialised bytecode, the loop's first turns) are then paid at boot -- and so are in a
    snapshot -- instead of by each instance's first requests. Skipped when the app's import left
    work on the loop, which must first run once serving, as it would without the warm-up."""
    global _app, _asgi_version, _muted
    if _loop._ready or _loop._scheduled or asyncio.all_tasks(_loop):
        return
    saved = _app, _asgi_version
    _flush_out()
    _muted = True
    try:
        _app, _asgi_version = _warm_app, "3.0"
        for empty in (False, True, False, True):
            _loop.run_until_complete(_probe(empty))
    except Exception as exc:  # an optimisation only: the app may have patched asyncio
        failure = exc
    else:
        failure = None
    finally:
        _app, _asgi_version = saved
        _requests.clear()
        _out.clear()
        _muted = False
    if failure is not None:
        _STDERR.write(f"aleph-wasm: boot warm-up skipped: {_describe(failure)}\n")


# --- Boot ----------------------------------------------------------------------------------------

def _boot():
    global _app, _asgi_version, _loop
    settings = {key: os.environ.pop(key, None) for key in _ENV_KEYS}
    sys.ps1 = sys.ps2 = ""
    sys.displayhook = lambda value: None
    sys.stdout = sys.__stdout__ = _STDOUT
    sys.stderr = sys.__stderr__ = _STDERR
    sys.stdin = sys.__stdin__ = io.StringIO()  # fd 0 is the channel: the app reads EOF
    sys.modules["_aleph_wasm"] = _calls_module()
    try:
        _fill_gaps()
        asyncio.set_event_loop_policy(_Policy())
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
        app = _load_app(settings["ALEPH_WASM_ENTRYPOINT"] or "", settings["ALEPH_WASM_CODE"],
                        settings["ALEPH_WASM_PLAIN"], settings["ALEPH_WASM_PATHS"])
        if _wsgi.is_wsgi(app):
            app = _wsgi.WsgiApp(app)
        _asgi_version = "2.0" if _is_asgi2(app) else "3.0"
        _app = app
        _adapt_anyio()
        _flush_logs()
        _warm_up()
    except BaseException as exc:
        _flush_logs()
        _emit_now(BOOT_ERROR, 0, _json({"message": _describe(exc),
                                        "traceback": _clean("".join(traceback.format_exception(exc)))}))
        _STDERR.at_eof = True  # unless the host still sends the run line
        return
    _flush_logs()
    _emit_now(READY, 0, _json({"asgi_version": _asgi_version}))


__aleph_wasm__ = _Guest()
if __name__ == "__main__":
    _boot()
