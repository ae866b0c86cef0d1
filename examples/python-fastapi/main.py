"""An Aleph program: a FastAPI app with pydantic v2 models under Aleph's `AlephApp`, for the
python-3.11-pydantic runtime.

Items are validated by pydantic-core (compiled into the interpreter): a bad body answers 422
with pydantic's error list. `async def` and `def` endpoints both serve. `POST /messages`
checks an Aleph message with the `aleph-message` package; the messages of channel `TEST` the
node delivers (`on.message`) are parsed the same way and listed by `GET /events`.

    pip install --target packages --no-deps -r requirements.txt  (see examples/README.md)
    p=$(aleph-wasm program create examples/python-fastapi --entrypoint main:app \
          --runtime python-3.11-pydantic | tail -n1)
    aleph-wasm run "$p" --request 'GET /items/1'
"""

import sys
from typing import Annotated

import pydantic
import pydantic_core
from aleph.sdk.vm.app import AlephApp
from aleph_message import parse_message
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field, ValidationError, field_validator

http_app = FastAPI(title="items")
app = AlephApp(http_app=http_app)
EVENTS: list[dict] = []


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    price: float = Field(gt=0)
    tags: list[str] = []

    @field_validator("name")
    @classmethod
    def tidy(cls, name: str) -> str:
        return " ".join(name.split())


class Item(ItemIn):
    id: int


ITEMS: dict[int, Item] = {1: Item(id=1, name="apple", price=0.5, tags=["fruit"])}


@http_app.post("/items", status_code=201)
async def create_item(item: ItemIn) -> Item:
    stored = Item(id=max(ITEMS) + 1, **item.model_dump())
    ITEMS[stored.id] = stored
    return stored


@http_app.get("/items/{item_id}")
def read_item(item_id: int) -> Item:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return ITEMS[item_id]


@http_app.get("/items")
def list_items(tag: Annotated[str | None, Query(max_length=20)] = None) -> list[Item]:
    return [i for i in ITEMS.values() if tag is None or tag in i.tags]


@http_app.post("/messages")
async def check_message(message: dict) -> dict:
    try:
        parsed = parse_message(message)
    except ValidationError as e:
        errors = [{"loc": err["loc"], "msg": err["msg"]} for err in e.errors()]
        raise HTTPException(status_code=422, detail=errors) from None
    return {
        "type": parsed.type.value,
        "class": type(parsed).__name__,
        "item_hash": parsed.item_hash,
    }


@http_app.get("/versions")
async def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "pydantic": pydantic.VERSION,
        "pydantic_core": pydantic_core.__version__,
    }


@http_app.get("/events")
def events() -> list[dict]:
    return EVENTS


@app.event(filters=[{"channel": "TEST"}])
async def on_message(event):
    message = parse_message(event["body"])
    EVENTS.append({"item_hash": message.item_hash, "type": message.type.value})
