"""Content-addressed reads of a reproducible program (engine/tests/python/reads.rs): the guest
API reached as programs on Aleph's VMs reach it — urllib against ALEPH_API_HOST, aiohttp over
the unix socket ALEPH_API_UNIX_SOCKET, and raw asyncio streams to localhost:80, two of them at
once — plus what a reproducible program may not do (the cache, the internet).

GET /?message=H&object=H&missing=H answers 200 with JSON: what each read returned.
"""

import asyncio
import hashlib
import json
import os
import urllib.error
import urllib.request
from urllib.parse import parse_qsl

import aiohttp

API = os.environ["ALEPH_API_HOST"]


def with_urllib(path):
    try:
        with urllib.request.urlopen(API + path, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def with_aiohttp(path):
    connector = aiohttp.UnixConnector(path=os.environ["ALEPH_API_UNIX_SOCKET"])
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(API + path, timeout=aiohttp.ClientTimeout(total=20)) as r:
            return r.status, await r.read()


async def with_streams(path):
    reader, writer = await asyncio.open_connection("localhost", 80)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def summary(status, body):
    return {"status": status, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
            "text": body[:300].decode("utf-8", "replace")}


def refused(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "not refused"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = dict(parse_qsl(scope["query_string"].decode()))
    message = with_urllib(f"/api/v0/messages/{q['message']}")
    obj = await with_aiohttp(f"/api/v0/storage/raw/{q['object']}")
    both = await asyncio.gather(with_streams(f"/api/v0/storage/raw/{q['object']}"),
                                with_streams(f"/api/v0/storage/raw/{q['missing']}"))
    answer = {
        "message": summary(*message),
        "message_json": json.loads(message[1]),
        "object": summary(*obj),
        "streams": [summary(*r) for r in both],
        "cache": summary(*with_urllib("/cache/greeting")),
        "internet": refused(lambda: urllib.request.urlopen("http://example.com/", timeout=5)),
    }
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
