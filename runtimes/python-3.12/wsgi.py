"""WSGI apps on the ASGI channel: Flask, Django's get_wsgi_application(), any PEP 3333 callable.

boot.py wraps an entrypoint that is a WSGI callable, one taking exactly (environ,
start_response), in ``WsgiApp``, an ASGI 3 app (docs/python-runtime.md, "WSGI"):

  * lifespan: startup and shutdown complete at once (WSGI has neither);
  * http: the request body is read whole into ``wsgi.input``; the WSGI call runs as executor
    work (the runtime's thread model: deferred to the loop's next turn, as another thread, with
    no event loop running); what it returns is collected whole -- ``write()`` calls, then the
    iterable, then its ``close()`` -- and sent as the response, so a streamed WSGI response
    reaches the client in one piece;
  * other scopes (the aleph triggers' events) are refused with a clear error: WSGI has only
    requests.
"""

import asyncio
import inspect
import io
import sys

__all__ = ["is_wsgi", "WsgiApp"]


def is_wsgi(app):
    """True for a WSGI callable: not a coroutine function, and its signature takes exactly two
    positional arguments (an ASGI 3 app takes three, an ASGI 2 app one)."""
    if inspect.isclass(app):
        return False
    call = getattr(app, "__call__", None)
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return False
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return False

    def binds(count):
        try:
            signature.bind(*([None] * count))
        except TypeError:
            return False
        return True
    return binds(2) and not binds(1) and not binds(3)


def _latin1(text):
    """A str as WSGI wants it: the UTF-8 bytes, one character per byte."""
    return text.encode("utf-8").decode("latin-1")


class WsgiApp:
    """An ASGI 3 app serving the WSGI app `app`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            raise TypeError(f"the program is a WSGI app, which serves HTTP requests only: it cannot "
                            f"take {kind!r} events (use an ASGI app for those)")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        environ = self.environ(scope, bytes(body))
        loop = asyncio.get_running_loop()
        status, headers, parts = await loop.run_in_executor(None, self.call, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(parts)})

    @staticmethod
    def environ(scope, body):
        """The PEP 3333 environ of an ASGI http scope and its whole body."""
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "/")
        if root and path.startswith(root):
            path = path[len(root):]
        server = scope.get("server") or ("localhost", 80)
        environ = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": _latin1(root),
            "PATH_INFO": _latin1(path),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1] if server[1] is not None else 80),
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        client = scope.get("client")
        if client:
            environ["REMOTE_ADDR"] = str(client[0])
            environ["REMOTE_PORT"] = str(client[1])
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").upper().replace("-", "_")
            value = value.decode("latin-1")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if body and "CONTENT_LENGTH" not in environ:
            environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    def call(self, environ):
        """Runs the WSGI app on `environ`: (status, headers as bytes pairs, body parts)."""
        started = []
        parts = []

        def start_response(status, headers, exc_info=None):
            if exc_info is not None:
                exc_info = None  # nothing is sent before the app returns: the new status wins
            elif started:
                raise AssertionError("start_response() called again without exc_info")
            code, _, _reason = status.partition(" ")
            if not (len(code) == 3 and code.isdigit()):
                raise ValueError(f"start_response(): status {status!r} does not start with a "
                                 "3-digit code")
            started[:] = [int(code), [(k.encode("latin-1"), v.encode("latin-1"))
                                      for k, v in headers]]
            return parts.append

        result = self.app(environ, start_response)
        try:
            for part in result:
                if part:
                    parts.append(bytes(part))
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the WSGI app returned without calling start_response()")
        return started[0], started[1], parts
