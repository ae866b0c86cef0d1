"""The Python runtime's thread model: threads on an interpreter without threads.

CPython on WASI preview 1 has one thread: ``_thread.start_new_thread`` raises, and a blocking
wait on a lock nobody else can release spins until the fuel runs out. This module, installed by
boot.py before the app is imported, gives the ``threading`` and ``concurrent.futures`` APIs a
documented meaning instead (docs/python-runtime.md):

  * work handed to another thread -- ``Thread.start()``, ``_thread.start_new_thread``,
    ``ThreadPoolExecutor.submit`` (so ``loop.run_in_executor`` and ``asyncio.to_thread``) -- is
    *deferred*: it runs, to completion and in the order it was handed over, at the first of
      - something waiting for it: ``join()``, ``Future.result()``, any blocking wait on a lock,
        condition, event, semaphore or queue (pending work runs first, then the wait is checked
        again),
      - the event loop's next turn;
  * while it runs, it is its thread: ``threading.current_thread()`` is the ``Thread``, the
    context is a fresh one (as in a new thread), and no event loop is running (so code that
    refuses to run on the loop's thread, such as Django's ORM, runs there as in a worker thread);
  * a blocking wait that pending work cannot satisfy can never be satisfied: without a timeout it
    raises ``DeadlockError`` (a ``RuntimeError``) naming what was awaited; with one, the instance
    sleeps for the timeout and the wait fails, as it would with threads;
  * ``threading.local`` and thread idents are shared: all work runs on the one real thread.
"""

import _thread
import asyncio
import collections
import concurrent.futures
import contextvars
import itertools
import queue
import sys
import threading
import time

__all__ = ["DeadlockError", "install", "run_pending", "pending_count"]

_real_lock = _thread.allocate_lock
_pending = collections.deque()  # callables handed to "other threads", not yet run
_turn_loop = None  # the loop whose next turn runs the pending work
_instance_loop = None  # a callable giving the loop that runs the next turn when none is running
_names = itertools.count(1)


class DeadlockError(RuntimeError):
    """A blocking wait that can never end: the runtime has one thread, and no pending work
    satisfies it."""


def pending_count():
    """How many pieces of deferred work are waiting for their turn."""
    return len(_pending)


def run_pending():
    """Runs every piece of deferred work, oldest first (and what it defers in turn)."""
    global _turn_loop
    _turn_loop = None
    while _pending:
        _pending.popleft()()


def _run_one():
    """Runs the oldest piece of deferred work; False when there is none."""
    if not _pending:
        return False
    _pending.popleft()()
    return True


def _defer(work):
    """Hands `work` to "another thread": it runs when something waits for it, or at the event
    loop's next turn."""
    global _turn_loop
    _pending.append(work)
    loop = asyncio._get_running_loop()
    if loop is None and _instance_loop is not None:
        loop = _instance_loop()
    if loop is None or loop is _turn_loop or loop.is_closed():
        return
    _turn_loop = loop
    loop.call_soon(run_pending)


def _as_another_thread(func, thread=None):
    """Runs func() the way another thread would: with a fresh context, no running event loop,
    and `thread` as threading.current_thread()."""
    ident = threading.get_ident()
    active = threading._active
    saved_thread = active.get(ident)
    saved_loop = asyncio._get_running_loop()
    if thread is not None:
        active[ident] = thread
    asyncio._set_running_loop(None)
    try:
        return contextvars.Context().run(func)
    finally:
        asyncio._set_running_loop(saved_loop)
        if thread is not None:
            if saved_thread is None:
                active.pop(ident, None)
            else:
                active[ident] = saved_thread


def _wait(ready, timeout, what):
    """A blocking wait: `ready()` is tried after each piece of pending work; then, with a
    timeout, the instance sleeps that long and tries once more; without one, DeadlockError."""
    while True:
        if ready():
            return True
        if not _run_one():
            break
    if timeout is None or timeout < 0:
        raise DeadlockError(
            f"deadlock: {what}, and nothing else can make that happen: this Python runtime has "
            "one thread, and no thread started earlier is left to run (docs/python-runtime.md)")
    if timeout > 0:
        time.sleep(timeout)
    return ready()


# --- Locks: the primitive every other blocking wait in threading and queue is built on --------

class Lock:
    """threading.Lock: a C lock whose blocking acquire waits as _wait() does instead of
    spinning."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self):
        self._lock = _real_lock()

    def acquire(self, blocking=True, timeout=-1):
        if self._lock.acquire(False):
            return True
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            return False
        return _wait(lambda: self._lock.acquire(False), timeout,
                     "a blocking wait (on a lock, condition, event, semaphore or queue) waits for "
                     "a lock that is held")

    acquire_lock = acquire

    def __enter__(self):
        return self.acquire()

    def release(self):
        self._lock.release()

    release_lock = release

    def __exit__(self, *exc):
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    locked_lock = locked

    def _at_fork_reinit(self):
        self._lock = _real_lock()

    def __repr__(self):
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<{state} {type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"


# --- Threads --------------------------------------------------------------------------------

def _start(self):
    if not self._initialized:
        raise RuntimeError("thread.__init__() not called")
    if self._started.is_set():
        raise RuntimeError("threads can only be started once")
    self._ident = threading.get_ident()
    self._native_id = getattr(threading, "get_native_id", threading.get_ident)()
    self._aleph_state = "pending"
    self._started.set()
    _defer(lambda: _run_thread(self))


def _run_thread(thread):
    if thread._aleph_state != "pending":
        return
    thread._aleph_state = "running"
    try:
        _as_another_thread(thread.run, thread)
    except SystemExit:
        pass
    except BaseException as exc:  # as a thread does: the exception goes to threading.excepthook
        _report(thread, exc)
    finally:
        thread._aleph_state = "done"
        thread._is_stopped = True


def _report(thread, exc):
    hook = threading.excepthook
    try:
        hook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, thread)))
    except BaseException:
        sys.excepthook(type(exc), exc, exc.__traceback__)


def _join(self, timeout=None):
    if not self._initialized:
        raise RuntimeError("Thread.__init__() not called")
    if not self._started.is_set():
        raise RuntimeError("cannot join thread before it is started")
    if self is threading.current_thread():
        raise RuntimeError("cannot join current thread")
    state = getattr(self, "_aleph_state", None)
    if state is None:  # the main thread, or a thread this module did not start
        return
    _wait(lambda: self._aleph_state == "done", timeout,
          f"thread {self.name!r} is joined while it is still running further up the stack")


def _is_alive(self):
    state = getattr(self, "_aleph_state", None)
    if state is None:
        return threading.Thread._aleph_is_alive(self)
    return state != "done"


def _start_new_thread(function, args, kwargs=None):
    """_thread.start_new_thread: deferred as Thread.start() is; returns the (shared) ident."""
    def work():
        try:
            _as_another_thread(lambda: function(*args, **(kwargs or {})))
        except SystemExit:
            pass
        except BaseException as exc:
            _thread._excepthook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, None)))
    _defer(work)
    return threading.get_ident()


# --- Executors ------------------------------------------------------------------------------

class ThreadPoolExecutor(concurrent.futures.Executor):
    """concurrent.futures.ThreadPoolExecutor: each submitted call is deferred work (see the
    module doc); ``shutdown(wait=True)`` runs what is still pending."""

    _counter = itertools.count()

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers or 1
        self._thread_name_prefix = thread_name_prefix or f"ThreadPoolExecutor-{next(self._counter)}"
        self._initializer = initializer
        self._initargs = initargs
        self._initialized = False
        self._broken = False
        self._shutdown = False
        self._items = []

    def submit(self, fn, /, *args, **kwargs):
        if self._broken:
            raise BrokenThreadPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = concurrent.futures.Future()
        item = (future, fn, args, kwargs)
        self._items.append(item)
        _defer(lambda: self._run(item))
        return future

    def _run(self, item):
        if item not in self._items:
            return
        self._items.remove(item)
        future, fn, args, kwargs = item
        if not future.set_running_or_notify_cancel():
            return
        if not self._initialized:
            self._initialized = True
            if self._initializer is not None:
                try:
                    _as_another_thread(lambda: self._initializer(*self._initargs))
                except BaseException as exc:
                    self._broken = "A thread initializer failed, the thread pool is not usable anymore"
                    future.set_exception(BrokenThreadPool(self._broken))
                    for other, *_ in self._items:
                        other.set_exception(BrokenThreadPool(self._broken))
                    self._items.clear()
                    del exc
                    return
        try:
            result = _as_another_thread(lambda: fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
        if cancel_futures:
            for future, *_ in self._items:
                future.cancel()
            self._items.clear()
        if wait:
            for item in list(self._items):
                self._run(item)


class BrokenThreadPool(concurrent.futures.BrokenExecutor):
    """Raised when a worker thread in a ThreadPoolExecutor failed initializing."""


# --- Installation ---------------------------------------------------------------------------

def install(instance_loop):
    """Makes threading, _thread, queue and concurrent.futures follow this model.
    `instance_loop()` gives the loop whose next turn runs deferred work started while no loop
    runs (at import, say)."""
    global _instance_loop
    _instance_loop = instance_loop
    threading.Lock = threading._allocate_lock = Lock
    _thread.allocate_lock = _thread.allocate = Lock
    threading._start_new_thread = _start_new_thread
    _thread.start_new_thread = _thread.start_new = _start_new_thread
    thread_class = threading.Thread
    thread_class._aleph_is_alive = thread_class.is_alive
    thread_class.start = _start
    thread_class.join = _join
    thread_class.is_alive = _is_alive
    queue.SimpleQueue = queue._PySimpleQueue  # the C one spins on an empty get()
    module = sys.modules.get("concurrent.futures.thread")
    if module is None:
        module = type(sys)("concurrent.futures.thread",
                           "ThreadPoolExecutor of the aleph-wasm Python runtime (deferred work)")
        sys.modules[module.__name__] = module
        concurrent.futures.thread = module
    module.ThreadPoolExecutor = ThreadPoolExecutor
    module.BrokenThreadPool = BrokenThreadPool
    concurrent.futures.ThreadPoolExecutor = ThreadPoolExecutor
