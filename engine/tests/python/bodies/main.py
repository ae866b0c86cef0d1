"""Binary request and response bodies (engine/tests/python/concurrency.rs).

- ``POST /echo``: answers the request body, byte for byte, once it has all of it.
- ``GET /pattern?seed=S&size=N``: N bytes of :func:`pattern` (the test computes the same).
- ``GET /all-bytes?repeat=N``: ``bytes(range(256)) * N``.
- ``GET /stream``: a 203 with its own headers, the body sent in several parts (:data:`PARTS`,
  then ``b"end\\n"``).
"""

import asyncio
import hashlib
from urllib.parse import parse_qs

BLOCK = 65521  # a prime: the pattern's period lines up with no frame or chunk size

# The streamed body's parts, sent with more_body=True: text, an empty part, a part larger than
# any chunk, every byte value.
PARTS = [b"part 0\n", b"", b"x" * 150_000 + b"\n", bytes(range(256)), b"part 4\n"]


def pattern(seed, size):
    """``size`` bytes: a block of sha256 output (of ``b"<seed>:<i>"`` for i = 0, 1, …) repeated,
    each byte of the k-th repeat plus k (mod 256)."""
    block = b"".join(hashlib.sha256(b"%d:%d" % (seed, i)).digest() for i in range(BLOCK // 32 + 1))
    block = block[:BLOCK]
    parts = []
    for k in range(-(-size // BLOCK)):
        parts.append(block.translate(bytes((b + k) % 256 for b in range(256))))
    return b"".join(parts)[:size]


async def read_body(receive):
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def answer(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/echo":
        await answer(send, await read_body(receive))
    elif path == "/pattern":
        await answer(send, pattern(int(query["seed"]), int(query["size"])))
    elif path == "/all-bytes":
        await answer(send, bytes(range(256)) * int(query["repeat"]))
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 203,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"x-stream", b"parts"),
                                (b"x-repeat", b"one"),
                                (b"x-repeat", b"two")]})
        for part in PARTS:
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"end\n", "more_body": False})
    else:
        await answer(send, b"no route\n", 404)
