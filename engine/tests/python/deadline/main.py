"""Requests that outlive their deadline beside requests that do not
(engine/tests/python/concurrency.rs).

- ``GET /sleep?id=N&s=SECONDS``: awaits ``asyncio.sleep(SECONDS)``, answers ``{"id", "instance"}``.
- ``GET /spin``: loops forever in pure Python (never awaits).
- ``GET /slow?id=N``: awaits ``asyncio.sleep(30)``; if it is cancelled there, records N.
- ``GET /stats``: ``{"instance", "cancelled"}``: the ids of the ``/slow`` requests cancelled so far.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs

INSTANCE = os.urandom(8).hex()
CANCELLED = []


async def answer(send, value):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(value).encode()})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", "0")))
        await answer(send, {"id": query["id"], "instance": INSTANCE})
    elif path == "/spin":
        while True:
            pass
    elif path == "/slow":
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            CANCELLED.append(query["id"])
            raise
        await answer(send, {"id": query["id"], "instance": INSTANCE})
    elif path == "/stats":
        await answer(send, {"instance": INSTANCE, "cancelled": CANCELLED})
