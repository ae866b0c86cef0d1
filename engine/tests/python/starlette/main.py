"""A plain Starlette app (async endpoints only), run unchanged by engine/tests/python.rs from a
code archive that carries Starlette and its dependencies in packages/."""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

STARTS = []


@contextlib.asynccontextmanager
async def lifespan(app):
    STARTS.append("startup")
    yield {"names": {1: "one", 2: "two"}}  # the lifespan state: request.state.names
    STARTS.append("shutdown")


async def homepage(request):
    return PlainTextResponse("starlette on aleph-wasm")


async def item(request):
    item_id = request.path_params["item_id"]
    return JSONResponse({
        "id": item_id,
        "id_type": type(item_id).__name__,
        "q": request.query_params.get("q"),
        "name": request.state.names.get(item_id),
        "lifespan": STARTS,
    })


async def echo(request):
    data = await request.json()
    return JSONResponse({"echo": data, "content_type": request.headers["content-type"]},
                        status_code=201)


async def count_to(n):
    for i in range(1, n + 1):
        await asyncio.sleep(0.01)
        yield f"{i}\n"


async def stream(request):
    return StreamingResponse(count_to(request.path_params["n"]), media_type="text/plain")


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/items/{item_id:int}", item),
        Route("/echo", echo, methods=["POST"]),
        Mount("/api", routes=[Route("/count/{n:int}", stream)]),
    ],
    lifespan=lifespan,
)
