"""Hello, ASGI: the smallest complete app for the python-3.12 runtime, with no dependencies.

It speaks raw ASGI 3: lifespan (startup before the first request, shutdown when the instance
retires) and http (a greeting; `?name=` picks who is greeted).

    p=$(aleph-wasm program create examples/python-hello --entrypoint main:app | tail -n1)
    aleph-wasm run "$p" --request 'GET /?name=aleph'
"""

from urllib.parse import parse_qs

GREETING = "Hello"


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            print("hello: starting")  # print() output goes to the execution's stdout log
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print("hello: stopping")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")

    if scope["path"] != "/":
        await respond(send, 404, b"Not found\n")
        return
    if scope["method"] not in ("GET", "HEAD"):
        await respond(send, 405, b"Method not allowed\n", [(b"allow", b"GET, HEAD")])
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    name = query.get("name", ["world"])[0]
    print(f"hello: greeting {name!r}")
    body = f"{GREETING}, {name}!\n".encode()
    await respond(send, 200, b"" if scope["method"] == "HEAD" else body,
                  length=len(body))


async def respond(send, status, body, extra_headers=(), length=None):
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body) if length is None else length).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
