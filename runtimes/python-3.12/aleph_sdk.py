"""The VM helpers of Aleph's Python SDK, for programs on this runtime: ``aleph.sdk.vm.app``
(``AlephApp``) and ``aleph.sdk.vm.cache`` (``VmCache``, ``LocalVmCache``), with the import paths,
names and behaviour of aleph-sdk-python's.

The real package cannot be imported here: ``aleph.sdk`` imports the SDK's whole client, which
needs compiled extensions (pydantic-core, coincurve, pynacl) that this interpreter cannot load.
standins.py serves these modules when no real ``aleph`` package is on ``sys.path``
(docs/python-runtime.md, "Aleph's SDK"). Differences from the real modules:

  * ``VmCache`` talks HTTP/1.1 to the guest API itself, over ``ALEPH_API_UNIX_SOCKET`` (asyncio
    streams), instead of through aiohttp; a ``session`` passed in (an aiohttp ClientSession) is
    used as the real one uses it;
  * ``AlephApp`` routes ``aleph.cron`` events to the event handlers too, and applies the
    handlers' filters: a filter is a dict whose every key must equal the event's (the message's,
    for ``aleph.message``), objects compared recursively; the real one accepts every event for
    any non-empty filter list;
  * ``AlephApp.vm_hash`` is the program's item hash (``ALEPH_ITEM_HASH``).
"""

import abc
import asyncio
import fnmatch
import inspect
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NewType, Optional, Union

__all__ = ["AlephApp", "EventHandler", "AsgiApplication", "BaseVmCache", "VmCache",
           "LocalVmCache", "CacheKey", "sanitize_cache_key", "APP_NAMES", "CACHE_NAMES"]

AsgiApplication = Callable
CacheKey = NewType("CacheKey", str)

APP_NAMES = ("AlephApp", "EventHandler", "AsgiApplication")
CACHE_NAMES = ("BaseVmCache", "VmCache", "LocalVmCache", "CacheKey", "sanitize_cache_key")

_KEY = re.compile(r"^\w+$")
_PATTERN = re.compile(r"^[\w?*^\-]+$")


# --- aleph.sdk.vm.app ---------------------------------------------------------------------------

def _contains(event, wanted):
    """True when every key of `wanted` is in `event` with an equal value (dicts recursively)."""
    if isinstance(wanted, dict):
        return isinstance(event, dict) and all(
            key in event and _contains(event[key], value) for key, value in wanted.items())
    return event == wanted


@dataclass
class EventHandler:
    """A function registered with ``AlephApp.event`` and the filters it was registered with."""

    filters: List[Dict]
    handler: Callable

    def matches(self, scope) -> bool:
        event = scope.get("body") if scope.get("type") == "aleph.message" else scope
        return any(_contains(event, wanted) for wanted in self.filters)


class AlephApp:
    """An ASGI app for programs on Aleph: HTTP (and lifespan, websockets) goes to `http_app`;
    ``aleph.message`` and ``aleph.cron`` events go to the first function registered with
    ``@app.event(filters=[...])`` whose filters match."""

    http_app: Optional[AsgiApplication] = None
    event_handlers: List[EventHandler]

    def __init__(self, http_app: Optional[AsgiApplication] = None):
        self.http_app = http_app
        self.event_handlers = []

    def event(self, filters: List[Dict]):
        """Registers the decorated function for the events matching one of `filters`; it is
        called as ``handler(event=scope)`` and may be a coroutine function."""
        def register(func: Callable):
            self.event_handlers.append(EventHandler(filters=filters, handler=func))
            return func
        return register

    async def __call__(self, scope, receive=None, send=None):
        kind = scope["type"]
        if kind in ("http", "websocket", "lifespan"):
            if self.http_app is None:
                raise ValueError("No HTTP app registered")
            await self.http_app(scope=scope, receive=receive, send=send)
            return
        if kind not in ("aleph.message", "aleph.cron"):
            raise ValueError(f"Unknown scope type '{kind}'")
        for event_handler in self.event_handlers:
            if event_handler.matches(scope):
                result = event_handler.handler(event=scope)
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, dict) and "type" in result and send is not None:
                    await send(result)
                return

    def __getattr__(self, name):
        # Everything else is the HTTP app's (FastAPI's decorators, Starlette's routes, ...).
        if name == "http_app":
            raise AttributeError(name)
        return getattr(self.http_app, name)

    @property
    def vm_hash(self) -> Optional[str]:
        """The item hash of the program running this app; None outside a node."""
        return os.environ.get("ALEPH_ITEM_HASH") or None


# --- aleph.sdk.vm.cache -------------------------------------------------------------------------

def sanitize_cache_key(key: str) -> CacheKey:
    if not _KEY.match(key):
        raise ValueError("Key may only contain letters, numbers and underscore")
    return CacheKey(key)


def _check_pattern(pattern):
    if not _PATTERN.match(pattern):
        raise ValueError("Pattern may only contain letters, numbers, underscore, ?, *, ^, -")


class BaseVmCache(abc.ABC):
    """Virtual Machines can use this cache to store temporary data in memory on the host."""

    @abc.abstractmethod
    async def get(self, key: str) -> Optional[bytes]:
        """The value of `key`, or None."""

    @abc.abstractmethod
    async def set(self, key: str, value: Union[str, bytes]) -> Any:
        """Sets `key` to `value`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> Any:
        """Deletes `key`."""

    @abc.abstractmethod
    async def keys(self, pattern: str = "*") -> List[str]:
        """The keys matching the glob `pattern`."""


async def _open_unix(path):
    """asyncio.open_unix_connection(), which asyncio leaves out where the socket module has no
    AF_UNIX (WASI), built from the loop's create_unix_connection()."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_unix_connection(lambda: protocol, path)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _Status(Exception):
    """The guest API answered with an error status (aiohttp's ClientResponseError's role)."""

    def __init__(self, status, reason, body):
        super().__init__(f"{status}, message={reason!r}: {body[:200]!r}")
        self.status = status


class VmCache(BaseVmCache):
    """The program's cache on the node, through the guest API (``/cache/...``)."""

    def __init__(self, session=None, connector_url=None, unix_socket=None):
        self.session = session
        self.unix_socket = unix_socket or os.environ.get("ALEPH_API_UNIX_SOCKET")
        self.api_host = str(connector_url) if connector_url else \
            os.environ.get("ALEPH_API_HOST", "http://localhost")
        self.cache = {}

    async def _request(self, method, path, data=None):
        """(status, body) of one request to the guest API."""
        url = f"{self.api_host.rstrip('/')}{path}"
        if self.session is not None:
            async with self.session.request(method, url, data=data) as resp:
                return resp.status, await resp.read()
        host = re.sub(r"^https?://", "", self.api_host).split("/")[0] or "localhost"
        if self.unix_socket:
            reader, writer = await _open_unix(self.unix_socket)
        else:
            name, _, port = host.partition(":")
            reader, writer = await asyncio.open_connection(name, int(port or 80))
        try:
            body = data or b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ConnectionError(f"the guest API answered {status_line[:80]!r}")
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            payload = await (reader.readexactly(length) if length is not None else reader.read())
            return int(parts[1]), payload
        finally:
            writer.close()

    async def _checked(self, method, path, data=None):
        status, body = await self._request(method, path, data)
        if status >= 400:
            raise _Status(status, "guest API error", body)
        return body

    async def get(self, key: str) -> Optional[bytes]:
        status, body = await self._request("GET", f"/cache/{sanitize_cache_key(key)}")
        if status == 404:
            return None
        if status >= 400:
            raise _Status(status, "guest API error", body)
        return body

    async def set(self, key: str, value: Union[str, bytes]) -> Any:
        data = value if isinstance(value, bytes) else value.encode()
        return json.loads(await self._checked("PUT", f"/cache/{sanitize_cache_key(key)}", data))

    async def delete(self, key: str) -> Any:
        return json.loads(await self._checked("DELETE", f"/cache/{sanitize_cache_key(key)}"))

    async def keys(self, pattern: str = "*") -> List[str]:
        _check_pattern(pattern)
        return json.loads(await self._checked("GET", f"/cache/?pattern={pattern}"))


class LocalVmCache(BaseVmCache):
    """A cache in a dict, for tests."""

    def __init__(self):
        self._cache: Dict[str, bytes] = {}

    async def get(self, key: str) -> Optional[bytes]:
        return self._cache.get(sanitize_cache_key(key))

    async def set(self, key: str, value: Union[str, bytes]) -> None:
        self._cache[sanitize_cache_key(key)] = value if isinstance(value, bytes) else value.encode()

    async def delete(self, key: str) -> None:
        del self._cache[sanitize_cache_key(key)]

    async def keys(self, pattern: str = "*") -> List[str]:
        _check_pattern(pattern)
        return fnmatch.filter(list(self._cache), pattern)
