"""The guest API from inside a program (engine/tests/python/guest_api.rs), reached the ways
programs on Aleph's VMs reach it: aiohttp over the unix socket named by ALEPH_API_UNIX_SOCKET
with ALEPH_API_HOST as the base URL (as the in-VM SDK's VmCache does), and urllib against
http://localhost. Each route answers 200 with JSON:

  {"ok": true, "status": <HTTP status of the guest API>, "body": <text>}
  {"ok": false, "error": "<ExceptionType>: <message>", "chain": [<type>, ...], "messages": [...]}

Routes (`via=unix` (default) or `via=localhost` picks the transport):

  GET /env                        the ALEPH_* variables
  GET /api?method=M&path=P[&data=D]   one request to the guest API
"""

import json
import os
import urllib.error
import urllib.request

import aiohttp


def _chain(exc):
    seen, chain = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _failure(exc):
    chain = _chain(exc)
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
            "chain": [type(e).__name__ for e in chain], "messages": [str(e) for e in chain]}


async def over_unix(method, path, data):
    # Aleph's defaults when a variable is missing (a program without the flag)
    socket_path = os.environ.get("ALEPH_API_UNIX_SOCKET", "/tmp/socat-socket")
    base = os.environ.get("ALEPH_API_HOST", "http://localhost")
    connector = aiohttp.UnixConnector(path=socket_path)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, base + path, data=data) as r:
            return {"ok": True, "status": r.status, "body": (await r.read()).decode("utf-8", "replace")}


def over_localhost(method, path, data):
    request = urllib.request.Request("http://localhost" + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return {"ok": True, "status": r.status, "body": r.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as e:
        return {"ok": True, "status": e.code, "body": e.read().decode("utf-8", "replace")}


async def handle(q):
    if q.get("route") == "env":
        return {k: v for k, v in os.environ.items() if k.startswith("ALEPH_")}
    method, path = q.get("method", "GET"), q["path"]
    data = q["data"].encode() if "data" in q else None
    try:
        if q.get("via", "unix") == "unix":
            return await over_unix(method, path, data)
        return over_localhost(method, path, data)
    except Exception as exc:
        return _failure(exc)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    from urllib.parse import parse_qsl
    q = dict(parse_qsl(scope["query_string"].decode()))
    q["route"] = scope["path"].strip("/")
    answer = await handle(q)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
