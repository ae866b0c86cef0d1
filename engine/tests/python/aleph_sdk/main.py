"""A program written against Aleph's SDK, as programs on Aleph's VMs are: a Starlette app
wrapped in aleph.sdk.vm.app.AlephApp, an event handler for messages of one channel, and
aleph.sdk.vm.cache.VmCache over the guest API (engine/tests/python/aleph_sdk.rs).

  GET /        the program's vm_hash and the events its handlers received
  GET /cache   a VmCache round trip: set, get, keys, delete, and a refused key
"""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from aleph.sdk.vm.app import AlephApp
from aleph.sdk.vm.cache import VmCache

cache = VmCache()
EVENTS = []


async def home(request):
    return JSONResponse({"vm_hash": app.vm_hash, "events": EVENTS})


async def cache_route(request):
    await cache.set("greeting", "hello")
    await cache.set("raw_bytes", b"\x00\xff")
    result = {
        "greeting": (await cache.get("greeting")).decode(),
        "raw_bytes": list(await cache.get("raw_bytes")),
        "missing": await cache.get("nothing_here"),
        "keys": sorted(await cache.keys()),
        "gre_keys": await cache.keys("gre*"),
    }
    await cache.delete("raw_bytes")
    result["after_delete"] = sorted(await cache.keys())
    try:
        await cache.get("no spaces")
    except ValueError as exc:
        result["bad_key"] = str(exc)
    return JSONResponse(result)


app = AlephApp(http_app=Starlette(routes=[Route("/", home), Route("/cache", cache_route)]))


@app.event(filters=[{"channel": "TEST", "content": {"type": "greeting"}}])
async def on_test_message(event):
    EVENTS.append(["message", event["body"]["item_hash"]])


@app.event(filters=[{"type": "aleph.cron"}])
def on_tick(event):
    EVENTS.append(["cron", event["time"]])
