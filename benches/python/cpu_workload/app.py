"""A CPU-bound ASGI handler for the reproducible-mode bench: pure-Python integer, float, string
and dict work, with a few clock and random reads as real programs make."""

import random
import time


def work(n):
    primes = []
    for k in range(2, n):
        if all(k % p for p in primes if p * p <= k):
            primes.append(k)
    acc = 0.0
    for i in range(1, n * 4):
        acc += (i ** 0.5) / (1 + (i % 7))
    words = {}
    for i in range(n * 2):
        w = "w%d" % (i % 97)
        words[w] = words.get(w, 0) + len(w)
    stamps = [time.monotonic() for _ in range(50)]
    draws = [random.random() for _ in range(50)]
    return len(primes), round(acc, 3), len(words), stamps[-1] >= stamps[0], len(draws)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return  # no lifespan: returning at once says so
    body = repr(work(20000)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
