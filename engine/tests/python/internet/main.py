"""Outbound connections from a program, through the usual Python clients (engine/tests/python/
internet.rs). Plain ASGI, no framework: each route fetches a target named in its query string
with one client, unchanged from how it is used anywhere else, and answers 200 with JSON:

  {"ok": true, "status": <HTTP status>, "body": <text, at most 4 KiB>, "len": <body bytes>, ...}
  {"ok": false, "error": "<ExceptionType>: <message>", "chain": [<type>, ...],
   "messages": [<str of each>, ...], "oserrors": [<each is an OSError>, ...],
   "oserror": <an OSError in the chain>}

`chain` follows __cause__ / __context__ from the exception raised to the first one, as libraries
wrap the socket's error in their own. Every reply also has `instance` (an id drawn at import) and
`started` / `ended` (time.monotonic() of that instance), so a test can tell whether two requests
ran on one instance at the same time.

HTTPS uses each library's defaults (ssl.create_default_context(), requests' verify=True, httpx's
and aiohttp's defaults): no CA file is named here. Routes:

  GET /urllib?url=U[&data=D]            urllib.request.urlopen (POST when `data` is given;
                                        `data_bytes=N` posts N bytes 0..255 over and over)
  GET /http_client?host=H&port=P&path=/x&tls=0|1   http.client.HTTP(S)Connection
  GET /requests?url=U[&data=D]          requests
  GET /httpx_sync?url=U[&data=D]        httpx.Client
  GET /httpx_async?url=U[&data=D]       httpx.AsyncClient
  GET /aiohttp?url=U[&data=D]           aiohttp.ClientSession
  GET /asyncio_echo?host=H&port=P&msg=M asyncio.open_connection to a TCP echo server
  GET /socket_echo?host=H&port=P&msg=M  socket.create_connection to a TCP echo server
  GET /gather_slow?url1=U&url2=V&lib=aiohttp|httpx   both at once; `elapsed_ms` for the pair
"""

import asyncio
import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
import urllib.request

TIMEOUT = 20
MAX_TEXT = 4096
INSTANCE = os.urandom(8).hex()


def _fetched(status, data):
    return {
        "status": status,
        "body": data[:MAX_TEXT].decode("utf-8", "replace"),
        "len": len(data),
    }


def _payload(q):
    if "data_bytes" in q:  # a large body: the bytes 0..255 over and over
        return bytes(range(256)) * (int(q["data_bytes"]) // 256)
    data = q.get("data")
    return None if data is None else data.encode()


# --- Blocking clients: they hold the instance's loop while they wait, as on a uvicorn worker --

def fetch_urllib(q):
    data = _payload(q)
    request = urllib.request.Request(q["url"], data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return _fetched(response.status, response.read())


def fetch_http_client(q):
    host, port, path = q["host"], int(q["port"]), q.get("path", "/")
    if q.get("tls") == "1":
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return _fetched(response.status, response.read())
    finally:
        conn.close()


def fetch_requests(q):
    import requests

    data = _payload(q)
    if data is None:
        response = requests.get(q["url"], timeout=TIMEOUT)
    else:
        response = requests.post(q["url"], data=data, timeout=TIMEOUT)
    return _fetched(response.status_code, response.content)


def fetch_httpx_sync(q):
    import httpx

    data = _payload(q)
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
        if data is None:
            response = client.get(q["url"])
        else:
            response = client.post(q["url"], content=data)
        return _fetched(response.status_code, response.content)


def socket_echo(q):
    message = q.get("msg", "ping").encode()
    with socket.create_connection((q["host"], int(q["port"])), timeout=TIMEOUT) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return {"body": b"".join(chunks).decode("utf-8", "replace")}


# --- Asynchronous clients: the loop serves other requests while they wait --------------------

async def fetch_httpx_async(q):
    import httpx

    data = _payload(q)
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client:
        if data is None:
            response = await client.get(q["url"])
        else:
            response = await client.post(q["url"], content=data)
        return _fetched(response.status_code, response.content)


async def fetch_aiohttp(q):
    import aiohttp

    data = _payload(q)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        method = session.get if data is None else session.post
        async with method(q["url"], data=data) as response:
            return _fetched(response.status, await response.read())


async def asyncio_echo(q):
    message = q.get("msg", "ping").encode()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(q["host"], int(q["port"])), TIMEOUT)
    try:
        writer.write(message)
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    return {"body": data.decode("utf-8", "replace")}


async def gather_slow(q):
    fetch = {"aiohttp": fetch_aiohttp, "httpx": fetch_httpx_async}[q.get("lib", "aiohttp")]
    started = time.monotonic()
    first, second = await asyncio.gather(fetch({"url": q["url1"]}), fetch({"url": q["url2"]}))
    elapsed = time.monotonic() - started
    return {"elapsed_ms": round(elapsed * 1000), "bodies": [first["body"], second["body"]],
            "statuses": [first["status"], second["status"]]}


# --- The app -----------------------------------------------------------------------------------

BLOCKING = {
    "urllib": fetch_urllib,
    "http_client": fetch_http_client,
    "requests": fetch_requests,
    "httpx_sync": fetch_httpx_sync,
    "socket_echo": socket_echo,
}
ASYNC = {
    "httpx_async": fetch_httpx_async,
    "aiohttp": fetch_aiohttp,
    "asyncio_echo": asyncio_echo,
    "gather_slow": gather_slow,
}


def failure(exc):
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    top = chain[0]
    return {
        "ok": False,
        "error": f"{type(top).__name__}: {top}",
        "chain": [type(e).__name__ for e in chain],
        "messages": [str(e) for e in chain],
        "oserror": any(isinstance(e, OSError) for e in chain),
        "oserrors": [isinstance(e, OSError) for e in chain],
    }


async def handle(route, q):
    if route in BLOCKING:
        return BLOCKING[route](q)
    return await ASYNC[route](q)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    route = scope["path"].strip("/")
    if route not in BLOCKING and route not in ASYNC:
        await _answer(send, 404, {"ok": False, "error": f"no route {scope['path']}"})
        return
    q = dict(urllib.parse.parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
    started = time.monotonic()
    try:
        reply = {"ok": True, **(await handle(route, q))}
    except Exception as exc:  # the test reads the exception: type, message, what it wraps
        reply = failure(exc)
    reply["instance"], reply["started"], reply["ended"] = INSTANCE, started, time.monotonic()
    await _answer(send, 200, reply)


async def _answer(send, status, value):
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
