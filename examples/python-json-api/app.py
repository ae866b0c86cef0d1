"""A small JSON API on raw ASGI with a hand-written router and a sqlite3 database kept on a
persistent volume. Standard library only.

    p=$(aleph-wasm program create examples/python-json-api --entrypoint app:app \
          --volume persistent:api-db:/var/lib/api:16 --seconds 5 | tail -n1)
    echo '{"name": "apple", "qty": 3}' > /tmp/item.json
    aleph-wasm run "$p" --request 'POST /items' --header 'content-type: application/json' --body /tmp/item.json
    aleph-wasm run "$p" --request 'GET /items?min_qty=2'

Routes:
    GET    /                     what this is
    GET    /items                list items; ?min_qty=N filters, ?limit=N caps (default 100)
    POST   /items                create from {"name": str, "qty": int >= 0}; 201 + the item
    GET    /items/{id}           one item, or 404
    PATCH  /items/{id}           change name and/or qty
    DELETE /items/{id}           204, or 404
Errors are JSON too: {"error": "..."} with 400, 404, 405, 411/413 or 415.

The database lives in API_DB_DIR (default /var/lib/api, the volume's mount). It is opened at
lifespan startup, once per instance, and closed at shutdown; every write is committed before
the response is sent, so a later instance (or a later run) sees it.
"""

import json
import os
import re
import sqlite3
from urllib.parse import parse_qs

DB_DIR = os.environ.get("API_DB_DIR", "/var/lib/api")
MAX_BODY = 64 * 1024

_db = None


def db():
    global _db
    if _db is None:
        _db = sqlite3.connect(os.path.join(DB_DIR, "api.sqlite3"))
        _db.row_factory = sqlite3.Row
        _db.execute(
            "CREATE TABLE IF NOT EXISTS items ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " name TEXT NOT NULL,"
            " qty INTEGER NOT NULL CHECK (qty >= 0))"
        )
        _db.commit()
    return _db


class HTTPError(Exception):
    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)


# --- Routing ---------------------------------------------------------------------------------

ROUTES = []  # (method, pattern, compiled pattern, handler)


def route(method, pattern):
    """Registers a handler; `{name}` in the pattern matches one path segment of digits."""
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[0-9]+)", pattern) + "$")

    def register(handler):
        ROUTES.append((method, pattern, regex, handler))
        return handler

    return register


def dispatch(method, path):
    allowed = []
    for route_method, _, regex, handler in ROUTES:
        match = regex.match(path)
        if match:
            if route_method == method:
                return handler, {k: int(v) for k, v in match.groupdict().items()}
            allowed.append(route_method)
    if allowed:
        raise HTTPError(405, f"method {method} not allowed",
                        [(b"allow", ", ".join(allowed).encode())])
    raise HTTPError(404, f"no route for {path}")


# --- Request helpers -------------------------------------------------------------------------

class Request:
    def __init__(self, scope, body):
        self.method = scope["method"]
        self.path = scope["path"]
        self.query = parse_qs(scope["query_string"].decode("latin-1"))
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.body = body

    def int_param(self, name, default):
        values = self.query.get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise HTTPError(400, f"query parameter {name!r} must be an integer") from None

    def json(self):
        ctype = self.headers.get("content-type", "application/json").split(";")[0].strip()
        if ctype != "application/json":
            raise HTTPError(415, "the body must be application/json")
        try:
            value = json.loads(self.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return value


async def read_body(receive):
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def as_item(row):
    return {"id": row["id"], "name": row["name"], "qty": row["qty"]}


def validated(data, partial=False):
    out = {}
    unknown = set(data) - {"name", "qty"}
    if unknown:
        raise HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    if "name" in data or not partial:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HTTPError(400, "'name' must be a non-empty string")
        out["name"] = name.strip()
    if "qty" in data or not partial:
        qty = data.get("qty", 0)
        if type(qty) is not int or qty < 0:
            raise HTTPError(400, "'qty' must be an integer >= 0")
        out["qty"] = qty
    return out


def fetch_item(item_id):
    row = db().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise HTTPError(404, f"item {item_id} not found")
    return row


# --- Handlers: (request, **path params) -> (status, JSON value or None) ----------------------

@route("GET", "/")
def index(request):
    count = db().execute("SELECT COUNT(*) FROM items").fetchone()[0]
    return 200, {"service": "json-api", "items": count,
                 "routes": [f"{method} {pattern}" for method, pattern, _, _ in ROUTES]}


@route("GET", "/items")
def list_items(request):
    min_qty = request.int_param("min_qty", 0)
    limit = max(0, min(request.int_param("limit", 100), 1000))
    rows = db().execute("SELECT * FROM items WHERE qty >= ? ORDER BY id LIMIT ?",
                        (min_qty, limit)).fetchall()
    return 200, {"items": [as_item(r) for r in rows]}


@route("POST", "/items")
def create_item(request):
    item = validated(request.json())
    with db():  # commits, or rolls back on an exception
        cursor = db().execute("INSERT INTO items (name, qty) VALUES (?, ?)",
                              (item["name"], item["qty"]))
    return 201, as_item(fetch_item(cursor.lastrowid))


@route("GET", "/items/{item_id}")
def get_item(request, item_id):
    return 200, as_item(fetch_item(item_id))


@route("PATCH", "/items/{item_id}")
def update_item(request, item_id):
    changes = validated(request.json(), partial=True)
    fetch_item(item_id)
    if changes:
        assignments = ", ".join(f"{field} = ?" for field in changes)  # fields are validated
        with db():
            db().execute(f"UPDATE items SET {assignments} WHERE id = ?",
                         (*changes.values(), item_id))
    return 200, as_item(fetch_item(item_id))


@route("DELETE", "/items/{item_id}")
def delete_item(request, item_id):
    fetch_item(item_id)
    with db():
        db().execute("DELETE FROM items WHERE id = ?", (item_id,))
    return 204, None


# --- ASGI ------------------------------------------------------------------------------------

async def send_json(send, status, value, extra_headers=()):
    body = b"" if value is None else json.dumps(value).encode()
    headers = [(b"content-length", str(len(body)).encode()), *extra_headers]
    if value is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send):
    global _db
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                db()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _db is not None:
                _db.close()
                _db = None
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    try:
        handler, params = dispatch(scope["method"], scope["path"])
        request = Request(scope, await read_body(receive))
        status, value = handler(request, **params)
        await send_json(send, status, value)
    except HTTPError as exc:
        await send_json(send, exc.status, {"error": exc.message}, exc.headers)
