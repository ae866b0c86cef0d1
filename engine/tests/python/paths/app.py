"""Paths under no preopen, and a SQLite file database in the persistent volume at /state.

`GET /?NOTE`: how `os.stat` fails on paths the guest cannot see, what `pathlib`'s `exists()`
says of one it cannot see and one it can, then NOTE added to a table in `/state/notes.db` and
every note the table holds."""

import json
import os
import pathlib
import sqlite3


def _stat(path):
    try:
        os.stat(path)
        return "exists"
    except OSError as exc:
        return type(exc).__name__


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    out = {path: _stat(path) for path in ("/var", "/etc/hosts", "/state/missing")}
    out["exists"] = [pathlib.Path(p).exists() for p in ("/etc/hosts", "/state")]
    db = sqlite3.connect("/state/notes.db")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES (?)", (scope["query_string"].decode(),))
        db.commit()
        out["notes"] = [text for (text,) in db.execute("SELECT text FROM notes ORDER BY rowid")]
    finally:
        db.close()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(out).encode()})
