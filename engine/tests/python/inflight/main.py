"""Counts the requests in flight on this instance (engine/tests/python/concurrency.rs).

``GET /?id=N`` awaits ``asyncio.sleep(0.2)`` and answers ``{"id": N, "instance": …, "max": …}``:
``max`` is the most requests this instance had in flight at once so far. One warm instance that
interleaves requests at their awaits (like one uvicorn worker) gets ``max`` > 1.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs

INSTANCE = os.urandom(8).hex()
IN_FLIGHT = 0
MAX_IN_FLIGHT = 0


async def app(scope, receive, send):
    global IN_FLIGHT, MAX_IN_FLIGHT
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    IN_FLIGHT += 1
    MAX_IN_FLIGHT = max(MAX_IN_FLIGHT, IN_FLIGHT)
    try:
        await asyncio.sleep(0.2)
    finally:
        IN_FLIGHT -= 1
    query = parse_qs(scope["query_string"].decode())
    body = json.dumps({"id": query["id"][0], "instance": INSTANCE, "max": MAX_IN_FLIGHT}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
