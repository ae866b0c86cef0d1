"""Work paid from one request's fuel (engine/tests/python/concurrency.rs).

``POST /work?iterations=N`` reads the body and, as the chunks arrive, runs a pure-Python loop of
N iterations for every 64 KiB of body received (one unit for a shorter body); answers
``{"bytes", "units"}``. The work per unit is fixed, so a 10 MiB body costs 160 units wherever
the chunk boundaries fall.
"""

import json
from urllib.parse import parse_qs

UNIT = 64 * 1024


def spin(n):
    x = 0
    for i in range(n):
        x ^= i
    return x


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    iterations = int(parse_qs(scope["query_string"].decode())["iterations"][0])
    received = units = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
        # Units completed so far (and the last, partial one at the end).
        due = received // UNIT if more else max(1, -(-received // UNIT))
        while units < due:
            spin(iterations)
            units += 1
        if not more:
            break
    body = json.dumps({"bytes": received, "units": units}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
