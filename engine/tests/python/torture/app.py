"""The reproducibility torture app: every request reports every nondeterministic input a
Python program can read, as JSON, and writes the same report to the export mount."""

import asyncio
import datetime
import json
import os
import random
import struct
import time
import uuid

OUT = "/out"


def files_in_random_order():
    """Creates files in an order drawn from `random`, then lists and stats them."""
    d = os.path.join(OUT, "files")
    os.makedirs(d, exist_ok=True)
    names = ["f%d.txt" % i for i in range(8)]
    random.shuffle(names)
    for n in names:
        with open(os.path.join(d, n), "w") as f:
            f.write(n)
    listing = os.listdir(d)
    stats = {}
    for n in sorted(listing):
        st = os.stat(os.path.join(d, n))
        stats[n] = [st.st_ino, st.st_dev, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns]
    with os.scandir(d) as it:
        scandir = [[e.name, e.inode()] for e in it]
    dir_st = os.stat(d)
    return {
        "created": names,
        "listdir": listing,
        "scandir": scandir,
        "stats": stats,
        "dir": [dir_st.st_ino, dir_st.st_size, dir_st.st_nlink, dir_st.st_mtime_ns],
    }


def nan_bits():
    inf = float("inf")
    x = inf - inf
    y = struct.unpack("<d", struct.pack("<d", x * -1.5))[0]
    return [struct.pack("<d", x).hex(), struct.pack("<d", y).hex(), struct.pack("<f", x).hex()]


async def report():
    out = {
        "time": time.time(),
        "monotonic": time.monotonic(),
        "perf_counter": time.perf_counter(),
        "datetime_now": datetime.datetime.now().isoformat(),
        "utcnow": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "localtime": list(time.localtime()),
        "random": random.random(),
        "urandom": os.urandom(16).hex(),
        "uuid4": str(uuid.uuid4()),
        "hash_x": hash("x"),
        "set_order": list({"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"}),
        "nan_bits": nan_bits(),
        "environ": dict(os.environ),
    }
    t0 = time.monotonic()
    w0 = time.time()
    time.sleep(0.25)
    await asyncio.sleep(0.5)
    out["slept_monotonic"] = time.monotonic() - t0
    out["slept_wall"] = time.time() - w0
    out["files"] = files_in_random_order()
    return out


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return  # no lifespan: returning at once says so
    body = json.dumps(await report(), sort_keys=True).encode()
    with open(os.path.join(OUT, "report.json"), "wb") as f:
        f.write(body)
    print("report written:", len(body), "bytes")
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json")],
    })
    await send({"type": "http.response.body", "body": body})
