"""Stand-ins for standard modules this interpreter build lacks but common code imports at the
top of a module: ``multiprocessing`` (Django's sqlite backend, many libraries), ``pwd`` and
``grp`` (getpass, shutil's chown, path expansion), ``fcntl`` (file locks) and ``resource``
(usage figures). They import; what cannot work under WASI fails with a clear error when used,
naming the module and why (docs/python-runtime.md). It also serves ``aleph.sdk.vm.app`` and
``aleph.sdk.vm.cache`` from aleph_sdk.py: Aleph's SDK, whose real package needs compiled
extensions. A finder at the end of ``sys.meta_path`` supplies them, so a real module of the same
name (on ``sys.path``) wins.

``ctypes``, ``lzma``, ``readline``, ``curses``, ``termios``, ``mmap`` and ``tkinter`` get none:
code that imports them usually guards the import and has a fallback that a stand-in would
defeat.
"""

import errno
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

__all__ = ["install", "NAMES"]

_WHY = "this Python runtime (CPython on WASI, in the aleph-wasm sandbox)"


def _unavailable(what, why="has no processes"):
    return NotImplementedError(f"{what}: {_WHY} {why}")


# --- multiprocessing ------------------------------------------------------------------------

class _MainProcess:
    """multiprocessing.current_process(): the one process there is."""

    name = "MainProcess"
    daemon = False
    authkey = b""
    exitcode = None

    @property
    def pid(self):
        return os.getpid()

    ident = pid

    def is_alive(self):
        return True


_MAIN = _MainProcess()


def _standin_class(module, name):
    """A class standing in for `module.name`: it can be imported and subclassed; making one
    raises NotImplementedError."""
    def refuse(self, *args, **kwargs):
        raise _unavailable(f"{module}.{name}")
    return type(name, (), {"__init__": refuse, "__module__": module,
                           "__doc__": f"{module}.{name} is not available: {_WHY} has no processes."})


def _multiprocessing(name):
    module = types.ModuleType(name, f"Stand-in for {name}: {_WHY} has no processes; what needs "
                                    "one raises NotImplementedError.")
    if name == "multiprocessing":
        module.__path__ = []  # a package: multiprocessing.pool and the like import too
        module.cpu_count = lambda: os.cpu_count() or 1
        module.current_process = lambda: _MAIN
        module.parent_process = lambda: None
        module.active_children = lambda: []
        module.get_all_start_methods = lambda: []
        module.get_start_method = lambda allow_none=False: None if allow_none else "spawn"
        module.freeze_support = lambda: None
        module.ProcessError = type("ProcessError", (Exception,), {"__module__": name})
        module.AuthenticationError = type("AuthenticationError", (module.ProcessError,),
                                          {"__module__": name})
        module.TimeoutError = type("TimeoutError", (module.ProcessError,), {"__module__": name})
        module.BufferTooShort = type("BufferTooShort", (module.ProcessError,), {"__module__": name})

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _standin_class(name, attr)
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__
    return module


# --- pwd and grp: no user database under WASI -----------------------------------------------

def _struct(name, fields):
    class Entry(tuple):
        __slots__ = ()

        def __new__(cls, values):
            return tuple.__new__(cls, values)
    for index, field in enumerate(fields):
        setattr(Entry, field, property(lambda self, i=index: self[i]))
    Entry.__name__ = Entry.__qualname__ = name
    return Entry


def _pwd(name):
    module = types.ModuleType(name, f"Stand-in for pwd: {_WHY} has no user database; every "
                                    "lookup raises KeyError, as for an unknown user.")
    module.struct_passwd = _struct("struct_passwd", ["pw_name", "pw_passwd", "pw_uid", "pw_gid",
                                                     "pw_gecos", "pw_dir", "pw_shell"])

    def getpwuid(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid} ({_WHY} has no user database)")

    def getpwnam(user):
        raise KeyError(f"getpwnam(): name not found: {user!r} ({_WHY} has no user database)")

    module.getpwuid, module.getpwnam, module.getpwall = getpwuid, getpwnam, lambda: []
    return module


def _grp(name):
    module = types.ModuleType(name, f"Stand-in for grp: {_WHY} has no group database; every "
                                    "lookup raises KeyError, as for an unknown group.")
    module.struct_group = _struct("struct_group", ["gr_name", "gr_passwd", "gr_gid", "gr_mem"])

    def getgrgid(gid):
        raise KeyError(f"getgrgid(): gid not found: {gid} ({_WHY} has no group database)")

    def getgrnam(group):
        raise KeyError(f"getgrnam(): name not found: {group!r} ({_WHY} has no group database)")

    module.getgrgid, module.getgrnam, module.getgrall = getgrgid, getgrnam, lambda: []
    return module


# --- fcntl and resource: constants import, calls fail with ENOSYS ----------------------------

def _nosys(module, function):
    def call(*args, **kwargs):
        raise OSError(errno.ENOSYS, f"{module}.{function}: not supported by {_WHY}")
    call.__name__ = function
    return call


def _fcntl(name):
    module = types.ModuleType(name, f"Stand-in for fcntl: {_WHY} has no fcntl(), ioctl() or file "
                                    "locks; calls raise OSError(ENOSYS).")
    for constant, value in {"LOCK_SH": 1, "LOCK_EX": 2, "LOCK_NB": 4, "LOCK_UN": 8,
                            "F_GETFD": 1, "F_SETFD": 2, "F_GETFL": 3, "F_SETFL": 4,
                            "F_GETLK": 5, "F_SETLK": 6, "F_SETLKW": 7, "FD_CLOEXEC": 1}.items():
        setattr(module, constant, value)
    for function in ("fcntl", "ioctl", "flock", "lockf"):
        setattr(module, function, _nosys("fcntl", function))
    return module


def _resource(name):
    module = types.ModuleType(name, f"Stand-in for resource: {_WHY} has no resource limits or "
                                    "usage figures; calls raise OSError(ENOSYS).")
    module.RLIM_INFINITY = -1
    module.error = OSError
    for index, constant in enumerate(("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK",
                                      "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
                                      "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS")):
        setattr(module, constant, index)
    module.RUSAGE_SELF, module.RUSAGE_CHILDREN = 0, -1
    for function in ("getrlimit", "setrlimit", "prlimit", "getrusage"):
        setattr(module, function, _nosys("resource", function))
    module.getpagesize = lambda: 65536  # a Wasm page
    return module


# --- Aleph's SDK: aleph.sdk.vm.app and aleph.sdk.vm.cache (aleph_sdk.py) ----------------------

_SDK_PACKAGES = ("aleph", "aleph.sdk", "aleph.sdk.vm")
_SDK_MODULES = {"aleph.sdk.vm.app": "APP_NAMES", "aleph.sdk.vm.cache": "CACHE_NAMES"}


def _aleph_sdk(name):
    doc = ("aleph-wasm's compatible stand-in for aleph-sdk-python's VM helpers (the real SDK "
           "needs compiled extensions); see aleph_sdk.py in the runtime")
    module = types.ModuleType(name, doc)
    if name in _SDK_PACKAGES:
        module.__path__ = []
        if name == "aleph.sdk":
            module.__version__ = "aleph-wasm-compat"
        return module
    implementation = sys.modules.get("_aleph_wasm_sdk")
    if implementation is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aleph_sdk.py")
        spec = importlib.util.spec_from_file_location("_aleph_wasm_sdk", path)
        implementation = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = implementation
        spec.loader.exec_module(implementation)
    for attr in getattr(implementation, _SDK_MODULES[name]):
        setattr(module, attr, getattr(implementation, attr))
    return module


_MAKERS = {"multiprocessing": _multiprocessing, "pwd": _pwd, "grp": _grp, "fcntl": _fcntl,
           "resource": _resource}
NAMES = tuple(_MAKERS) + tuple(_SDK_MODULES)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Supplies a stand-in when no other finder found the module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _SDK_PACKAGES or fullname in _SDK_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self,
                                                  is_package=fullname in _SDK_PACKAGES)
        top = fullname.partition(".")[0]
        if top not in _MAKERS or (top != fullname and top != "multiprocessing"):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=(fullname == top == "multiprocessing"))

    def create_module(self, spec):
        if spec.name.startswith("aleph"):
            module = _aleph_sdk(spec.name)
        else:
            module = _MAKERS[spec.name.partition(".")[0]](spec.name)
        module.__spec__ = spec
        module.__loader__ = self
        return module

    def exec_module(self, module):
        pass


def install():
    """Appends the stand-ins' finder to sys.meta_path (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
