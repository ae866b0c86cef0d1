"""A raw ASGI app for the snapshot tests: random numbers, the monotonic clock, a variable."""

import asyncio
import json
import os
import random
import time

# Taken while the program boots: inside the snapshot when the instance is restored.
BOOT_MONOTONIC = time.monotonic()

# Work the import leaves on the event loop: it runs when the loop first runs, at lifespan
# startup -- in every instance, after its reseed, not once at boot inside the snapshot.
SCHEDULED = []
asyncio.get_event_loop().call_soon(lambda: SCHEDULED.append(random.random()))

# A program that writes a file while it boots (BOOT_WRITE names it).
if os.environ.get("BOOT_WRITE"):
    with open(os.environ["BOOT_WRITE"], "w") as f:
        f.write("written at boot")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rpartition(".")[2]
            await send({"type": f"{message['type']}.complete"})
            if kind == "shutdown":
                return
    body = json.dumps({
        "random": random.random(),
        "monotonic": time.monotonic(),
        "boot_monotonic": BOOT_MONOTONIC,
        "scheduled": SCHEDULED,
        "greeting": os.environ.get("GREETING"),
        "scratch": sorted(os.listdir("/scratch")) if os.path.isdir("/scratch") else None,
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
