"""A plain WSGI app (PEP 3333, no framework): GET /environ answers what the app saw, POST /echo
echoes the body, GET /stream answers through write() and an iterable with close(), GET /closed
counts the close() calls, GET /broken never calls start_response()."""

import json
import threading

CLOSED = 0


class Parts:
    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        global CLOSED
        CLOSED += 1


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        write = start_response("201 Created", [("Content-Type", "text/plain"), ("X-Parts", "3")])
        write(b"one,")
        return Parts([b"two,", b"", b"three"])
    if path == "/closed":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"closed": CLOSED}).encode()]
    if path == "/broken":
        return [b"no status"]
    body = environ["wsgi.input"].read()
    if path == "/echo":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
            "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_TWICE", "wsgi.url_scheme",
            "wsgi.multithread"]
    seen = {k: environ.get(k) for k in keys}
    seen["thread"] = threading.current_thread().name
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]
