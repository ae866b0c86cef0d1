"""The interpreter's speed on the Python a web request runs: `parse_qs`, a dict, an f-string and
a short integer loop, 30 000 times, best of three; the answer is nanoseconds per step.

The same file runs natively (`python3.12 app.py`) and as an ASGI app in the guest, where the
clock is the host's (not reproducible mode), so the two figures compare the interpreters:

    p=$(aleph-wasm program create benches/python/interpreter_speed --entrypoint app:app \
          --seconds 60 | tail -n1)
    aleph-wasm run "$p" --request 'GET /' --snapshots wait   # the prepared interpreter
    aleph-wasm run "$p" --request 'GET /' --snapshots off    # the original
"""

import time
from urllib.parse import parse_qs


def step(i):
    query = parse_qs("name=aleph&x=%d" % i)
    message = {"type": "http", "status": 200, "headers": [(b"a", b"b")]}
    text = f"Hello, {query['name'][0]}! {message['status']}"
    acc = 0
    for k in range(20):
        acc += k * i % 7
    return len(text) + acc


def bench(n):
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - start) / n * 1e9


def measure():
    bench(5000)  # warm-up
    return min(bench(30000) for _ in range(3))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return  # no lifespan
    body = b"%.0f ns/step\n" % measure()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    print("%.0f ns/step" % measure())
