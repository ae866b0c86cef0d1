"""The thread model of the Python runtime (docs/python-runtime.md), checked from inside a
program: GET /sync runs the checks on plain threading, queue, concurrent.futures and the
stand-in modules; GET /async the ones that involve the event loop; GET /fire starts a thread
nobody joins and GET /fired says whether it ran."""

import asyncio
import contextvars
import datetime
import errno
import json
import queue
import threading
import time
import zoneinfo
from concurrent.futures import ThreadPoolExecutor

fired = []
request_var = contextvars.ContextVar("request_var", default="unset")


def catch(func):
    try:
        return {"returned": repr(func())}
    except BaseException as exc:
        return {"raised": type(exc).__name__, "runtime_error": isinstance(exc, RuntimeError),
                "message": str(exc)}


def sync_checks():
    r = {}
    order = []
    t = threading.Thread(target=lambda: order.append(("thread", threading.current_thread().name)),
                         name="worker-1")
    t.start()
    order.append(("after start", t.is_alive()))
    t.join()
    order.append(("after join", t.is_alive(), threading.current_thread().name))
    r["deferred"] = order

    items = queue.Queue()
    total = []

    def consume():
        s = 0
        while (item := items.get()) is not None:
            s += item
        total.append(s)
    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(1, 11):
        items.put(i)
    items.put(None)
    consumer.join()
    r["producer_consumer"] = total

    event = threading.Event()
    threading.Thread(target=event.set).start()
    r["event_set_by_thread"] = event.wait()

    never = threading.Event()
    r["deadlock"] = catch(never.wait)
    start = time.monotonic()
    r["wait_timeout"] = [never.wait(0.2), time.monotonic() - start >= 0.19]

    lock = threading.Lock()
    lock.acquire()
    r["lock"] = [lock.acquire(False), lock.acquire(timeout=0.05), catch(lock.acquire)]
    lock.release()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(5)]
        r["executor"] = [f.result() for f in futures] + list(pool.map(abs, [-1, -2]))

    hooked = []
    saved, threading.excepthook = threading.excepthook, lambda args: hooked.append(
        [args.exc_type.__name__, args.thread.name])
    try:
        failing = threading.Thread(target=lambda: 1 / 0, name="failing")
        failing.start()
        failing.join()
    finally:
        threading.excepthook = saved
    r["excepthook"] = hooked

    timed = []
    timer = threading.Timer(0.05, timed.append, args=["timer"])
    timer.start()
    timer.join()
    r["timer"] = timed

    r["simple_queue"] = catch(lambda: queue.SimpleQueue().get(timeout=0.01))

    local = threading.local()
    local.x = "main"
    seen = []
    shared = threading.Thread(target=lambda: seen.append(getattr(local, "x", None)))
    shared.start()
    shared.join()
    r["local_shared"] = seen

    import multiprocessing
    import multiprocessing.pool
    from multiprocessing import Pool
    import fcntl
    import pwd
    r["multiprocessing"] = [multiprocessing.cpu_count() >= 1,
                            multiprocessing.current_process().name, catch(lambda: Pool(2)),
                            catch(lambda: multiprocessing.pool.ThreadPool(2))]
    r["pwd"] = catch(lambda: pwd.getpwuid(0))
    try:
        fcntl.flock(0, fcntl.LOCK_EX)
    except OSError as exc:
        r["fcntl"] = [exc.errno == errno.ENOSYS, str(exc)]
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    r["zoneinfo"] = str(paris.utcoffset(datetime.datetime(2026, 7, 1)))
    return r


def in_thread():
    return {"loop_running": asyncio._get_running_loop() is not None,
            "thread": threading.current_thread().name, "var": request_var.get()}


async def async_checks():
    request_var.set("request")
    loop = asyncio.get_running_loop()
    return {
        "to_thread": await asyncio.to_thread(in_thread),
        "run_in_executor": await loop.run_in_executor(None, sum, [1, 2, 3]),
        "executor_sees_no_loop": await loop.run_in_executor(None, in_thread),
        "loop_after": asyncio.get_running_loop() is loop,
    }


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/sync":
        result = sync_checks()
    elif path == "/async":
        result = await async_checks()
    elif path == "/fire":
        threading.Thread(target=lambda: fired.append("ran")).start()
        result = {"ran_before_answer": list(fired)}
    elif path == "/fired":
        await asyncio.sleep(0)
        result = {"fired": list(fired)}
    else:
        result = {"error": "no such route"}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(result).encode()})
