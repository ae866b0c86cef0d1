"""aleph-wasm: sockets and TLS through the host, for CPython 3.12 on WASI.

WASI preview 1 cannot open a socket. The host can: a program granted a capability
(``environment.internet``, ``environment.aleph_api``) asks it through the channel's guest->host
calls (``net.resolve``, ``net.connect``, ``net.tls``, ``net.send``, ``net.recv``,
``net.shutdown``, ``net.close``; the ABI is in docs/host.md). This module makes the ordinary
Python APIs use them, so libraries run as written:

  * ``socket``: ``socket.socket`` (stream sockets: AF_INET, AF_INET6, AF_UNIX), ``getaddrinfo``,
    ``gethostbyname``, ``create_connection`` (the stdlib's, over the two above);
  * ``ssl``: a module of its own (the build has none). ``SSLContext.wrap_socket`` has the host do
    the TLS handshake (rustls, the node's roots); the context's settings that only OpenSSL knows
    are accepted and kept, not applied;
  * the event loop (boot.py's ``_Loop``): ``getaddrinfo``, ``sock_connect``, ``sock_recv``,
    ``sock_sendall``, ``create_connection`` and ``create_unix_connection`` (and so
    ``asyncio.open_connection``), ``start_tls``; anyio's TLS streams (under httpx) upgrade on
    the host too.

Blocking calls (a plain socket) stop the instance's loop until the host answers, as blocking I/O
stops a uvicorn worker; the loop's calls let other requests go on. A call without the capability
raises ``PermissionError`` naming the flag.
"""

import asyncio
import collections
import enum
import errno
import json
import os
import select as _select_mod
import socket as _socket
import struct
import sys
import types

_U32 = struct.Struct("<I")
_RECV = struct.Struct("<III")  # handle, max, timeout_ms
_FOREVER = 0xFFFFFFFF
_CHUNK = 256 * 1024  # bytes asked of the host per read
_SEND_MAX = 1 << 20  # bytes sent in one call (a frame carries at most 16 MiB)
_HIGH_WATER = 256 * 1024  # transport write buffer limits
_LOW_WATER = 64 * 1024
API_SOCKET = "/tmp/socat-socket"

# Set by install(): boot.py's calls.
_call = _call_blocking = _HostCallError = None


# --- Failures --------------------------------------------------------------------------------

def _error(exc, ssl_module=None):
    """The Python exception for a failed host call (`exc`: a HostCallError)."""
    kind, message = exc.kind, exc.message
    if kind in ("permission", "forbidden"):
        return PermissionError(errno.EACCES, message)
    if kind == "dns":
        return _socket.gaierror(_socket.EAI_NONAME, message)
    if kind == "refused":
        return ConnectionRefusedError(errno.ECONNREFUSED, message)
    if kind == "reset":
        return ConnectionResetError(errno.ECONNRESET, message)
    if kind in ("timeout", "cancelled"):
        return TimeoutError(errno.ETIMEDOUT, message)
    if kind == "limit":
        return ConnectionAbortedError(errno.ECONNABORTED, message)
    if kind == "bad_handle":
        return OSError(errno.EBADF, message)
    if kind == "tls":
        ssl = sys.modules.get("ssl")
        if ssl is not None and hasattr(ssl, "SSLCertVerificationError"):
            if "certificate" in message.lower() or "name" in message.lower():
                return ssl.SSLCertVerificationError(1, message)
            return ssl.SSLError(1, message)
        return OSError(errno.EPROTO, message)
    return OSError(errno.EIO, f"{kind}: {message}")


def _blocking(name, args):
    try:
        return _call_blocking(name, args)
    except _HostCallError as exc:
        raise _error(exc) from None


async def _async(name, args):
    try:
        return await _call(name, args)
    except _HostCallError as exc:
        raise _error(exc) from None


def _ms(timeout):
    if timeout is None:
        return None
    return max(0, int(timeout * 1000))


def _connect_args(address, family, timeout):
    if family == AF_UNIX:
        if not isinstance(address, (str, bytes)):
            raise TypeError("an AF_UNIX address is a path")
        path = os.fsdecode(address)
        return {"unix": path}
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"a socket address is (host, port), not {address!r}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("idna")
    args = {"host": host, "port": int(port)}
    ms = _ms(timeout)
    if ms is not None:
        args["timeout_ms"] = max(ms, 1)
    return args


def _endpoint(value):
    if isinstance(value, list) and len(value) == 2 and value[1]:
        host, port = value
        return (host, port, 0, 0) if ":" in host else (host, port)
    if isinstance(value, list) and value:
        return value[0]
    return value


# --- Blocking sockets ------------------------------------------------------------------------

# WASI has no AF_UNIX (its AF_INET is 1, AF_INET6 2): the guest API's socket gets wasi-libc's 3.
AF_UNIX = getattr(_socket, "AF_UNIX", 3 if _socket.AF_INET == 1 else 1)
_RealSocket = _socket.socket


class HostSocket(_RealSocket):
    """A stream socket whose connection lives on the host. ``socket.socket`` is this class: it
    is still an instance of the stdlib's socket class, with no file descriptor (fileno() is
    -1)."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        # The C socket is never initialised: it keeps fd -1 and nothing of it is used.
        if fileno is not None:
            raise OSError(errno.EBADF, "sockets from file descriptors do not exist in the sandbox")
        family = _socket.AF_INET if family == -1 else family
        kind = _socket.SOCK_STREAM if type == -1 else type
        base = kind & ~(getattr(_socket, "SOCK_NONBLOCK", 0) | getattr(_socket, "SOCK_CLOEXEC", 0))
        if base != _socket.SOCK_STREAM:
            raise OSError(errno.EPROTONOSUPPORT,
                          "only stream (TCP) sockets exist in the sandbox, through the host")
        if family not in (_socket.AF_INET, _socket.AF_INET6, AF_UNIX):
            raise OSError(errno.EAFNOSUPPORT, f"address family {family} does not exist in the sandbox")
        self._family, self._type, self._proto = family, _socket.SOCK_STREAM, 0 if proto == -1 else proto
        self._io_refs = 0
        self._closed = False
        self._handle = None
        self._timeout = _socket.getdefaulttimeout()
        if kind & getattr(_socket, "SOCK_NONBLOCK", 0):
            self._timeout = 0.0
        self._peer = self._local = None
        self._rbuf = b""
        self._eof = False
        self._options = {}

    # What the stdlib's socket would read from its C part.
    family = property(lambda self: _socket.AddressFamily(self._family)
                      if self._family in (_socket.AF_INET, _socket.AF_INET6) else self._family)
    type = property(lambda self: _socket.SocketKind(self._type))
    proto = property(lambda self: self._proto)

    def __repr__(self):
        state = "closed" if self._closed else f"handle={self._handle}"
        return f"<HostSocket {state} family={self._family} peer={self._peer}>"

    def __getstate__(self):
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")

    def fileno(self):
        return -1

    def dup(self):
        raise OSError(errno.ENOTSUP, "a host socket cannot be duplicated")

    def detach(self):
        raise OSError(errno.ENOTSUP, "a host socket has no file descriptor to detach")

    def _adopt(self, result):
        self._handle = result["handle"]
        self._peer = _endpoint(result.get("peer"))
        self._local = _endpoint(result.get("local"))

    def _check_open(self):
        # close() with files still open on the socket (makefile) leaves it usable through them
        if self._handle is None:
            if self._closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def _readable(self, timeout):
        """Whether a read would not block, waiting at most `timeout` seconds (None: forever):
        what arrives meanwhile is kept for the next read."""
        if self._rbuf or self._eof or self._handle is None:
            return True
        ms = _FOREVER if timeout is None else _ms(timeout)
        try:
            data = _blocking("net.recv", _RECV.pack(self._handle, _CHUNK, ms))
        except TimeoutError:
            return False
        except OSError:
            return True  # the read fails at once
        if data:
            self._rbuf += data
        else:
            self._eof = True
        return True

    # connecting
    def connect(self, address):
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._handle is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        args = _connect_args(address, self._family, self._timeout)
        self._adopt(json.loads(_blocking("net.connect", json.dumps(args).encode())))

    def connect_ex(self, address):
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def bind(self, address):
        # The host picks the local address of its connections; "any address" and the loopback
        # addresses with port 0 are accepted as that (urllib3 tells IPv6 support by binding an
        # AF_INET6 socket to ("::1", 0)).
        if address and address[0] not in ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost") \
                or (address and address[1]):
            raise OSError(errno.EADDRNOTAVAIL, "a host socket cannot choose its local address")

    def listen(self, backlog=0):
        raise OSError(errno.EOPNOTSUPP, "the sandbox cannot accept connections: it serves through its triggers")

    def accept(self):
        self.listen()

    # options
    def settimeout(self, value):
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self):
        return self._timeout

    def setblocking(self, flag):
        self._timeout = None if flag else 0.0

    def getblocking(self):
        return self._timeout != 0.0

    def setsockopt(self, level, option, value, optlen=None):
        self._options[(level, option)] = value  # the host's connection keeps its own settings

    def getsockopt(self, level, option, buflen=None):
        value = self._options.get((level, option), 0)
        return value if buflen is None or not isinstance(value, int) else value.to_bytes(buflen, "little")

    def getpeername(self):
        self._check_open()
        return self._peer

    def getsockname(self):
        if self._local is None:
            return ("0.0.0.0", 0) if self._family == _socket.AF_INET else ("::", 0, 0, 0)
        return self._local

    # data
    def _recv(self, size):
        self._check_open()
        if self._rbuf:
            data, self._rbuf = self._rbuf[:size], self._rbuf[size:]
            return data
        if self._eof or size <= 0:
            return b""
        timeout = _FOREVER if self._timeout is None else _ms(self._timeout)
        try:
            data = _blocking("net.recv", _RECV.pack(self._handle, min(size, 1 << 20), timeout))
        except TimeoutError:
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable") from None
            raise _socket.timeout("timed out") from None
        if not data:
            self._eof = True
        return data

    def recv(self, bufsize, flags=0):
        return self._recv(bufsize)

    def recv_into(self, buffer, nbytes=0, flags=0):
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data = self._recv(size)
        view[:len(data)] = data
        return len(data)

    def recvfrom(self, bufsize, flags=0):
        return self._recv(bufsize), self._peer

    def send(self, data, flags=0):
        self._check_open()
        piece = bytes(memoryview(data).cast("B")[:_SEND_MAX])
        result = _blocking("net.send", _U32.pack(self._handle) + piece)
        return _U32.unpack(result)[0] if len(result) == 4 else len(piece)

    def sendall(self, data, flags=0):
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view):]

    def sendfile(self, file, offset=0, count=None):
        return self._sendfile_use_send(file, offset, count)

    def shutdown(self, how):
        self._check_open()
        if how in (_socket.SHUT_WR, getattr(_socket, "SHUT_RDWR", 2)):
            _blocking("net.shutdown", _U32.pack(self._handle))

    def _real_close(self, _ss=None):
        handle, self._handle = self._handle, None
        if handle is not None:
            _async_close(handle)

    def close(self):
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def __del__(self):
        if self._handle is not None and _async_close is not None:
            _async_close(self._handle)
            self._handle = None


# --- select() and poll() with host sockets --------------------------------------------------

_real_select = None  # the module's own, for file descriptors
_real_poll = None


def _wait_host(sockets, timeout):
    """The host sockets among `sockets` that are readable, waiting at most `timeout` (None:
    forever) for the first to be."""
    ready = [s for s in sockets if s._readable(0)]
    if ready or not sockets or timeout == 0:
        return ready
    return [sockets[0]] if sockets[0]._readable(timeout) else []


def select(rlist, wlist, xlist, timeout=None):
    """select.select, where host sockets are always writable and readable once data or the end
    of the stream has arrived. Host sockets and file descriptors cannot be waited on together:
    the file descriptors are then only polled."""
    hosts = [s for s in rlist if isinstance(s, HostSocket)]
    host_w = [s for s in wlist if isinstance(s, HostSocket)]
    if not hosts and not host_w:
        return _real_select(rlist, wlist, xlist, timeout)
    rest_r = [s for s in rlist if not isinstance(s, HostSocket)]
    rest_w = [s for s in wlist if not isinstance(s, HostSocket)]
    rest_x = [s for s in xlist if not isinstance(s, HostSocket)]
    fds = _real_select(rest_r, rest_w, rest_x, 0) if rest_r or rest_w or rest_x else ([], [], [])
    wait = 0 if host_w or any(fds) else timeout
    return (_wait_host(hosts, wait) + fds[0], host_w + fds[1], fds[2])


class _Poll:
    """select.poll, which also takes host sockets (readable as for select())."""

    def __init__(self):
        self._real, self._hosts = _real_poll(), {}

    def register(self, fd, eventmask=None):
        if isinstance(fd, HostSocket):
            self._hosts[id(fd)] = (fd, 7 if eventmask is None else eventmask)
        else:
            self._real.register(fd, *(() if eventmask is None else (eventmask,)))

    def modify(self, fd, eventmask):
        self.register(fd, eventmask)

    def unregister(self, fd):
        if isinstance(fd, HostSocket):
            del self._hosts[id(fd)]
        else:
            self._real.unregister(fd)

    def poll(self, timeout=None):
        if not self._hosts:
            return self._real.poll(timeout)
        events = self._real.poll(0)
        writers = [(s.fileno(), _select_mod.POLLOUT) for s, mask in self._hosts.values()
                   if mask & _select_mod.POLLOUT]
        wait = 0 if events or writers or (timeout is not None and timeout <= 0) else (
            None if timeout is None or timeout < 0 else timeout / 1000)
        readers = [s for s, mask in self._hosts.values() if mask & _select_mod.POLLIN]
        readable = [(s.fileno(), _select_mod.POLLIN) for s in _wait_host(readers, wait)]
        return events + readable + writers


def _install_select():
    global _real_select, _real_poll
    if _real_select is None:
        _real_select = _select_mod.select
        _real_poll = getattr(_select_mod, "poll", None)
        _select_mod.select = select
        if _real_poll is not None:
            _select_mod.poll = _Poll


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    """socket.getaddrinfo through the host's resolver."""
    return _addrinfo(host, port, family, type, proto,
                     lambda args: _blocking("net.resolve", args))


def _addrinfo_args(host, port):
    if host is None:
        host = "localhost"
    if isinstance(host, bytes):
        host = host.decode("idna")
    if isinstance(port, bytes):
        port = port.decode()
    if isinstance(port, str):
        port = int(port) if port.isdigit() else _socket.getservbyname(port) if hasattr(
            _socket, "getservbyname") else {"http": 80, "https": 443}[port]
    return host, int(port or 0)


def _addrinfo_result(raw, port, family, type, proto):
    addresses = json.loads(raw)["addresses"]
    out = []
    for address in addresses:
        fam = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        if family not in (0, _socket.AF_UNSPEC) and fam != family:
            continue
        sockaddr = (address, port, 0, 0) if fam == _socket.AF_INET6 else (address, port)
        for kind in ([type] if type else [_socket.SOCK_STREAM]):
            out.append((_socket.AddressFamily(fam), _socket.SocketKind(kind),
                        proto or _socket.IPPROTO_TCP, "", sockaddr))
    if not out:
        raise _socket.gaierror(_socket.EAI_ADDRFAMILY, "no address of the requested family")
    return out


def _addrinfo(host, port, family, type, proto, run):
    host, port = _addrinfo_args(host, port)
    return _addrinfo_result(run(json.dumps({"host": host, "port": port}).encode()),
                            port, family, type, proto)


def gethostbyname(name):
    return getaddrinfo(name, 0, _socket.AF_INET)[0][4][0]


def gethostbyname_ex(name):
    addresses = [info[4][0] for info in getaddrinfo(name, 0, _socket.AF_INET)]
    return name, [], addresses


def gethostname():
    return "localhost"


def getnameinfo(sockaddr, flags):
    return sockaddr[0], str(sockaddr[1])


def _install_socket():
    s = _socket
    s.socket = s.SocketType = HostSocket
    s.getaddrinfo, s.gethostbyname, s.gethostbyname_ex = getaddrinfo, gethostbyname, gethostbyname_ex
    s.gethostname, s.getnameinfo = gethostname, getnameinfo
    s.has_ipv6 = True  # the host connects over IPv6 (the WASI build says it cannot)
    # Constants the WASI build leaves out and libraries read at import (Linux's values).
    for name, value in (("AF_UNIX", AF_UNIX), ("SO_KEEPALIVE", 9), ("SO_REUSEADDR", 2),
                        ("SO_SNDBUF", 7), ("SO_RCVBUF", 8), ("SO_LINGER", 13),
                        ("SO_REUSEPORT", 15), ("SOL_TCP", 6),
                        ("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6),
                        ("SHUT_RD", 0), ("SHUT_RDWR", 2),
                        ("AI_PASSIVE", 1), ("AI_CANONNAME", 2), ("AI_NUMERICHOST", 4),
                        ("AI_V4MAPPED", 8), ("AI_ALL", 16), ("AI_ADDRCONFIG", 32),
                        ("AI_NUMERICSERV", 1024), ("NI_NUMERICHOST", 1), ("NI_NUMERICSERV", 2),
                        ("NI_NOFQDN", 4), ("NI_NAMEREQD", 8), ("NI_DGRAM", 16),
                        ("NI_MAXHOST", 1025), ("NI_MAXSERV", 32), ("INADDR_ANY", 0)):
        if not hasattr(s, name):
            setattr(s, name, value)


# --- ssl -----------------------------------------------------------------------------------

class _SSLInfo:
    """What ``ssl_object``/an SSLSocket reports of a host TLS session."""

    def __init__(self, result, context, server_hostname):
        self._result, self.context, self.server_hostname = result, context, server_hostname
        self.server_side = False

    def version(self):
        return (self._result.get("version") or "TLSv1.3").replace("_", ".")

    def selected_alpn_protocol(self):
        return self._result.get("alpn")

    def selected_npn_protocol(self):
        return None

    def cipher(self):
        return (self._result.get("cipher") or "", self.version(), 0)

    def shared_ciphers(self):
        return None

    def compression(self):
        return None

    def getpeercert(self, binary_form=False):
        return b"" if binary_form else {}

    def get_channel_binding(self, cb_type="tls-unique"):
        return None

    def pending(self):
        return 0


def _make_ssl():
    ssl = types.ModuleType("ssl", "TLS for the sandbox, done by the aleph-wasm host (rustls).")
    ssl.__file__ = __file__
    ssl.OPENSSL_VERSION = "OpenSSL 3.0 (API); TLS by the aleph-wasm host, rustls"
    ssl.OPENSSL_VERSION_INFO = (3, 0, 0, 0, 0)
    ssl.OPENSSL_VERSION_NUMBER = 0x30000000
    ssl._OPENSSL_API_VERSION = (3, 0, 0, 0, 0)

    class SSLError(OSError):
        library = reason = None

        def __str__(self):
            return self.args[1] if len(self.args) > 1 else super().__str__()

    class SSLCertVerificationError(SSLError, ValueError):
        verify_code = 1
        verify_message = "certificate verify failed"

    for cls in (SSLError, SSLCertVerificationError):
        cls.__module__ = "ssl"
    ssl.SSLError, ssl.SSLCertVerificationError = SSLError, SSLCertVerificationError
    ssl.CertificateError = SSLCertVerificationError
    for name in ("SSLZeroReturnError", "SSLWantReadError", "SSLWantWriteError",
                 "SSLSyscallError", "SSLEOFError"):
        setattr(ssl, name, type(name, (SSLError,), {"__module__": "ssl"}))
    ssl.socket_error = OSError

    class VerifyMode(enum.IntEnum):
        CERT_NONE = 0
        CERT_OPTIONAL = 1
        CERT_REQUIRED = 2

    class TLSVersion(enum.IntEnum):
        MINIMUM_SUPPORTED = -2
        SSLv3 = 768
        TLSv1 = 769
        TLSv1_1 = 770
        TLSv1_2 = 771
        TLSv1_3 = 772
        MAXIMUM_SUPPORTED = -1

    class _SSLMethod(enum.IntEnum):
        PROTOCOL_SSLv23 = 2
        PROTOCOL_TLS_CLIENT = 16
        PROTOCOL_TLS_SERVER = 17
    _SSLMethod.PROTOCOL_TLS = _SSLMethod.PROTOCOL_SSLv23

    class Options(enum.IntFlag):
        OP_ALL = 0x80000050
        OP_NO_SSLv2 = 0
        OP_NO_SSLv3 = 0x02000000
        OP_NO_TLSv1 = 0x04000000
        OP_NO_TLSv1_1 = 0x10000000
        OP_NO_TLSv1_2 = 0x08000000
        OP_NO_TLSv1_3 = 0x20000000
        OP_NO_COMPRESSION = 0x20000
        OP_NO_TICKET = 0x4000
        OP_NO_RENEGOTIATION = 0x40000000
        OP_CIPHER_SERVER_PREFERENCE = 0x400000
        OP_SINGLE_DH_USE = 0
        OP_SINGLE_ECDH_USE = 0
        OP_ENABLE_MIDDLEBOX_COMPAT = 0x100000
        OP_IGNORE_UNEXPECTED_EOF = 0x80
        OP_LEGACY_SERVER_CONNECT = 0x4
        OP_ENABLE_KTLS = 0x8

    class VerifyFlags(enum.IntFlag):
        VERIFY_DEFAULT = 0
        VERIFY_CRL_CHECK_LEAF = 0x4
        VERIFY_CRL_CHECK_CHAIN = 0xC
        VERIFY_X509_STRICT = 0x20
        VERIFY_ALLOW_PROXY_CERTS = 0x40
        VERIFY_X509_TRUSTED_FIRST = 0x8000
        VERIFY_X509_PARTIAL_CHAIN = 0x80000

    class Purpose(enum.Enum):
        SERVER_AUTH = (129, "serverAuth", "TLS Web Server Authentication", "1.3.6.1.5.5.7.3.1")
        CLIENT_AUTH = (130, "clientAuth", "TLS Web Client Authentication", "1.3.6.1.5.5.7.3.2")

    for cls in (VerifyMode, TLSVersion, _SSLMethod, Options, VerifyFlags, Purpose):
        cls.__module__ = "ssl"
        ssl.__dict__[cls.__name__] = cls
        if cls is not Purpose and cls is not TLSVersion:
            ssl.__dict__.update(cls.__members__)
    ssl.PROTOCOL_TLS = _SSLMethod.PROTOCOL_TLS
    ssl.HAS_SNI = ssl.HAS_ALPN = ssl.HAS_ECDH = ssl.HAS_NEVER_CHECK_COMMON_NAME = True
    ssl.HAS_TLSv1_2 = ssl.HAS_TLSv1_3 = True
    ssl.HAS_NPN = ssl.HAS_SSLv2 = ssl.HAS_SSLv3 = ssl.HAS_TLSv1 = ssl.HAS_TLSv1_1 = False
    ssl.HAS_PSK = False
    ssl.CHANNEL_BINDING_TYPES = []
    ssl._DEFAULT_CIPHERS = "DEFAULT"
    ssl.DefaultVerifyPaths = collections.namedtuple(
        "DefaultVerifyPaths",
        "cafile capath openssl_cafile_env openssl_cafile openssl_capath_env openssl_capath")

    def get_default_verify_paths():
        return ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", "", "SSL_CERT_DIR", "")

    def RAND_bytes(n):
        return os.urandom(n)

    def RAND_status():
        return True

    def DER_cert_to_PEM_cert(der):
        import base64
        text = base64.standard_b64encode(der).decode("ascii")
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"

    def PEM_cert_to_DER_cert(pem):
        import base64
        body = pem.strip()
        body = body[len("-----BEGIN CERTIFICATE-----"):-len("-----END CERTIFICATE-----")]
        return base64.decodebytes(body.encode("ascii"))

    for fn in (get_default_verify_paths, RAND_bytes, RAND_status, DER_cert_to_PEM_cert,
               PEM_cert_to_DER_cert):
        ssl.__dict__[fn.__name__] = fn

    class SSLSession:
        pass

    class MemoryBIO:
        """Kept for imports and isinstance(): TLS over memory buffers needs OpenSSL; here the
        host does TLS on the connection itself (see SSLContext.wrap_socket)."""

        def __init__(self):
            self.pending, self.eof = 0, False

    class SSLObject:
        def __init__(self, *args, **kwargs):
            raise TypeError("TLS over memory buffers is not available: the host does TLS on "
                            "the connection (SSLContext.wrap_socket, asyncio's ssl=)")

    class SSLContext:
        """TLS settings. The host does the handshake: what it applies is the server name, the
        ALPN protocols and whether to verify (verify_mode != CERT_NONE); it verifies against
        its roots (Mozilla's, plus the node's CA file). Other settings are kept, not applied."""

        sslsocket_class = None
        sslobject_class = SSLObject

        def __init__(self, protocol=None, *args, **kwargs):
            if protocol is None:
                protocol = _SSLMethod.PROTOCOL_TLS
            self.protocol = _SSLMethod(protocol)
            client = self.protocol == _SSLMethod.PROTOCOL_TLS_CLIENT
            self._verify_mode = VerifyMode.CERT_REQUIRED if client else VerifyMode.CERT_NONE
            self._check_hostname = client
            self.options = Options.OP_ALL | Options.OP_NO_SSLv3 | Options.OP_NO_COMPRESSION
            self.verify_flags = VerifyFlags.VERIFY_X509_TRUSTED_FIRST
            self.minimum_version = TLSVersion.MINIMUM_SUPPORTED
            self.maximum_version = TLSVersion.MAXIMUM_SUPPORTED
            self.post_handshake_auth = None
            self.keylog_filename = None
            self.hostname_checks_common_name = False
            self.sni_callback = None
            self.security_level = 2
            self.num_tickets = 2
            self._alpn = None
            self._ca = []

        @property
        def verify_mode(self):
            return self._verify_mode

        @verify_mode.setter
        def verify_mode(self, value):
            value = VerifyMode(value)
            if value == VerifyMode.CERT_NONE and self._check_hostname:
                raise ValueError("Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")
            self._verify_mode = value

        @property
        def check_hostname(self):
            return self._check_hostname

        @check_hostname.setter
        def check_hostname(self, value):
            self._check_hostname = bool(value)
            if value and self._verify_mode == VerifyMode.CERT_NONE:
                self._verify_mode = VerifyMode.CERT_REQUIRED

        def load_verify_locations(self, cafile=None, capath=None, cadata=None):
            if cafile is None and capath is None and cadata is None:
                raise TypeError("cafile, capath and cadata cannot be all omitted")
            self._ca.append(cafile or capath or "<cadata>")

        def load_default_certs(self, purpose=None):
            pass

        def set_default_verify_paths(self):
            pass

        def load_cert_chain(self, certfile, keyfile=None, password=None):
            raise SSLError(1, "client certificates are not supported by the host's TLS")

        def set_ciphers(self, ciphers):
            pass

        def get_ciphers(self):
            return []

        def set_alpn_protocols(self, protocols):
            self._alpn = [p if isinstance(p, str) else bytes(p).decode("ascii") for p in protocols]

        def set_npn_protocols(self, protocols):
            pass

        def set_ecdh_curve(self, name):
            pass

        def load_dh_params(self, path):
            pass

        def set_servername_callback(self, callback):
            self.sni_callback = callback

        def get_ca_certs(self, binary_form=False):
            return []

        def cert_store_stats(self):
            return {"x509_ca": 0, "crl": 0, "x509": 0}

        def session_stats(self):
            return {}

        def _tls_args(self, handle, server_hostname):
            verify = self._verify_mode != VerifyMode.CERT_NONE
            if verify and self._check_hostname and not server_hostname:
                raise ValueError("check_hostname requires server_hostname")
            args = {"handle": handle, "server_name": server_hostname or "", "verify": verify}
            if self._alpn:
                args["alpn"] = self._alpn
            return json.dumps(args).encode()

        def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                        suppress_ragged_eofs=True, server_hostname=None, session=None):
            if server_side:
                raise SSLError(1, "the sandbox cannot serve TLS")
            if not isinstance(sock, HostSocket):
                raise TypeError(f"wrap_socket() needs a socket of the sandbox, not {type(sock).__name__}")
            if isinstance(server_hostname, bytes):
                server_hostname = server_hostname.decode("idna")
            sock._check_open()
            result = json.loads(_blocking("net.tls", self._tls_args(sock._handle, server_hostname)))
            wrapped = SSLSocket.__new__(SSLSocket)
            wrapped.__dict__.update(sock.__dict__)
            sock._handle = None  # the TLS socket owns the connection now
            sock._closed = True
            wrapped._io_refs = 0
            wrapped._closed = False
            wrapped._tls = wrapped._sslobj = _SSLInfo(result, self, server_hostname)
            wrapped.context, wrapped.server_hostname, wrapped.server_side = self, server_hostname, False
            return wrapped

        def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
            return SSLObject()

    class SSLSocket(HostSocket):
        """A socket whose connection the host has upgraded to TLS."""

        def do_handshake(self, block=False):
            pass

        def unwrap(self):
            raise SSLError(1, "a TLS connection of the host cannot be unwrapped")

        def version(self):
            return self._tls.version()

        def cipher(self):
            return self._tls.cipher()

        def selected_alpn_protocol(self):
            return self._tls.selected_alpn_protocol()

        def selected_npn_protocol(self):
            return None

        def shared_ciphers(self):
            return None

        def compression(self):
            return None

        def getpeercert(self, binary_form=False):
            return self._tls.getpeercert(binary_form)

        def get_channel_binding(self, cb_type="tls-unique"):
            return None

        def pending(self):
            return len(self._rbuf)

        session = session_reused = None

    SSLContext.sslsocket_class = SSLSocket

    def create_default_context(purpose=Purpose.SERVER_AUTH, *, cafile=None, capath=None,
                               cadata=None):
        context = SSLContext(_SSLMethod.PROTOCOL_TLS_CLIENT if purpose == Purpose.SERVER_AUTH
                             else _SSLMethod.PROTOCOL_TLS_SERVER)
        if cafile or capath or cadata:
            context.load_verify_locations(cafile, capath, cadata)
        return context

    def _create_unverified_context(protocol=None, *, cert_reqs=VerifyMode.CERT_NONE,
                                   check_hostname=False, purpose=Purpose.SERVER_AUTH,
                                   certfile=None, keyfile=None, cafile=None, capath=None,
                                   cadata=None):
        context = SSLContext(protocol or _SSLMethod.PROTOCOL_TLS_CLIENT)
        context.check_hostname = check_hostname
        context.verify_mode = cert_reqs
        return context

    def get_server_certificate(addr, ssl_version=None, ca_certs=None, timeout=None):
        raise SSLError(1, "get_server_certificate() is not supported by the host's TLS")

    for obj in (SSLSession, MemoryBIO, SSLObject, SSLContext, SSLSocket, create_default_context,
                _create_unverified_context, get_server_certificate):
        obj.__module__ = "ssl"
        ssl.__dict__[obj.__name__] = obj
    ssl._create_default_https_context = create_default_context
    ssl._create_stdlib_context = _create_unverified_context
    ssl.AlertDescription = enum.IntEnum("AlertDescription", {"ALERT_DESCRIPTION_HANDSHAKE_FAILURE": 40})
    ssl.SSLErrorNumber = enum.IntEnum("SSLErrorNumber", {"SSL_ERROR_EOF": 8, "SSL_ERROR_SSL": 1})
    ssl.SSL_ERROR_EOF, ssl.SSL_ERROR_SSL = 8, 1
    return ssl


# --- The event loop: connections as transports ------------------------------------------------

_async_close = None  # closes a handle from a finaliser (set by install)


class _HostTransport(asyncio.Transport):
    """A stream transport over a host connection: a task reads (one host call at a time, each
    returning what arrived), writes are sent in order by another; flow control both ways."""

    def __init__(self, loop, handle, protocol, extra):
        super().__init__(extra)
        self._loop, self._handle, self._protocol = loop, handle, protocol
        self._closing = self._closed = False
        self._paused = False
        self._resume = None  # a future while reading is paused
        self._wbuf = collections.deque()
        self._wsize = 0
        self._writer = None
        self._writing_paused = False
        self._eof_pending = False
        self._high, self._low = _HIGH_WATER, _LOW_WATER
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._reader = None
        self._upgrading = None

    def _start(self):
        self._protocol.connection_made(self)
        self._reader = self._loop.create_task(self._read_loop())

    async def _read_loop(self):
        args = _RECV.pack(self._handle, _CHUNK, _FOREVER)
        exc = None
        try:
            while not self._closing:
                if self._paused:
                    self._resume = self._loop.create_future()
                    await self._resume
                    continue
                try:
                    data = await _call("net.recv", args)
                except _HostCallError as failure:
                    if failure.kind == "interrupted":  # a TLS upgrade took the connection over
                        if self._upgrading is not None:
                            await self._upgrading
                        continue
                    raise _error(failure) from None
                if self._closing:
                    break
                if not data:
                    keep_open = self._protocol.eof_received()
                    if not keep_open:
                        self.close()
                    return
                self._deliver(data)
        except asyncio.CancelledError:
            return
        except Exception as failure:
            exc = failure
        if exc is not None and not self._closed:
            self._finish(exc)

    def _deliver(self, data):
        if self._buffered:
            asyncio.protocols._feed_data_to_buffered_proto(self._protocol, data)
        else:
            self._protocol.data_received(data)

    # reading
    def pause_reading(self):
        self._paused = True

    def resume_reading(self):
        if self._paused:
            self._paused = False
            if self._resume is not None and not self._resume.done():
                self._resume.set_result(None)

    def is_reading(self):
        return not self._paused and not self._closing

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self):
        return self._protocol

    # writing
    def write(self, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if self._closing or self._eof_pending:
            return
        if not data:
            return
        self._wbuf.append(bytes(data))
        self._wsize += len(data)
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())
        if not self._writing_paused and self._wsize > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, chunks):
        for chunk in chunks:
            self.write(chunk)

    async def _write_loop(self):
        try:
            while self._wbuf:
                data = self._wbuf.popleft()
                while self._wbuf and len(data) + len(self._wbuf[0]) <= _SEND_MAX:
                    data += self._wbuf.popleft()
                for at in range(0, len(data), _SEND_MAX):
                    await _async("net.send", _U32.pack(self._handle) + data[at:at + _SEND_MAX])
                self._wsize -= len(data)
                if self._writing_paused and self._wsize <= self._low:
                    self._writing_paused = False
                    self._protocol.resume_writing()
            if self._eof_pending:
                await _async("net.shutdown", _U32.pack(self._handle))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._writer = None
            self._finish(exc)
            return
        self._writer = None
        if self._closing and not self._closed:
            self._finish(None)

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing or self._eof_pending:
            return
        self._eof_pending = True
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())

    def get_write_buffer_size(self):
        return self._wsize

    def get_write_buffer_limits(self):
        return self._low, self._high

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 4 * low if low is not None else _HIGH_WATER
        if low is None:
            low = high // 4
        self._high, self._low = high, low

    # closing
    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self.resume_reading()
        if self._writer is None:
            self._finish(None)

    def abort(self):
        self._closing = True
        self._wbuf.clear()
        self._wsize = 0
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._finish(None)

    def _finish(self, exc):
        if self._closed:
            return
        self._closed = self._closing = True
        handle, self._handle = self._handle, None
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        if handle is not None:
            _async_close(handle)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def __del__(self):
        if self._handle is not None and _async_close is not None:
            _async_close(self._handle)
            self._handle = None

    # TLS on an open connection (asyncio's start_tls, anyio's TLSStream)
    async def upgrade(self, context, server_hostname):
        if self._upgrading is not None:
            raise RuntimeError("the connection is already being upgraded to TLS")
        self._upgrading = self._loop.create_future()
        try:
            while self._wbuf or self._writer is not None:
                await asyncio.sleep(0)
            raw = await _async("net.tls", context._tls_args(self._handle, server_hostname))
        finally:
            done, self._upgrading = self._upgrading, None
            done.set_result(None)
        info = _SSLInfo(json.loads(raw), context, server_hostname)
        self._extra.update(sslcontext=context, ssl_object=info, peercert={}, cipher=info.cipher(),
                           compression=None)
        return info


class _TransportSocket:
    """What a transport's get_extra_info("socket") gives: the connection's addresses and
    options (as asyncio's TransportSocket); no file descriptor."""

    def __init__(self, family, peer, local):
        self.family, self.type, self.proto = family, _socket.SOCK_STREAM, 0
        self._peer, self._local, self._options = peer, local, {}

    def fileno(self):
        return -1

    def getpeername(self):
        return self._peer

    def getsockname(self):
        return self._local

    def setsockopt(self, level, option, value, optlen=None):
        self._options[(level, option)] = value

    def getsockopt(self, level, option, buflen=None):
        return self._options.get((level, option), 0)

    def settimeout(self, value):
        pass

    def gettimeout(self):
        return 0.0

    def setblocking(self, flag):
        pass


def _extra(result, unix):
    peer, local = _endpoint(result.get("peer")), _endpoint(result.get("local"))
    if unix:
        family = AF_UNIX
    else:
        family = _socket.AF_INET6 if isinstance(peer, tuple) and ":" in str(peer[0]) else _socket.AF_INET
    return {"peername": peer, "sockname": local, "socket": _TransportSocket(family, peer, local)}


async def _open(loop, protocol_factory, args, ssl, server_hostname, host):
    result = json.loads(await _async("net.connect", json.dumps(args).encode()))
    handle = result["handle"]
    try:
        extra = _extra(result, "unix" in args)
        info = None
        if ssl:
            context = ssl if not isinstance(ssl, bool) else sys.modules["ssl"].create_default_context()
            name = server_hostname if server_hostname is not None else host
            raw = await _async("net.tls", context._tls_args(handle, name))
            info = _SSLInfo(json.loads(raw), context, name)
            extra.update(sslcontext=context, ssl_object=info, peercert={}, cipher=info.cipher(),
                         compression=None)
    except BaseException:
        _async_close(handle)
        raise
    return _adopt(loop, handle, protocol_factory, extra)


def _adopt(loop, handle, protocol_factory, extra):
    protocol = protocol_factory()
    transport = _HostTransport(loop, handle, protocol, extra)
    transport._start()
    return transport, protocol


class LoopMethods:
    """The event loop's network methods over host connections (mixed into boot.py's _Loop)."""

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        host_, port_ = _addrinfo_args(host, port)
        raw = await _async("net.resolve", json.dumps({"host": host_, "port": port_}).encode())
        return _addrinfo_result(raw, port_, family, type, proto)

    async def getnameinfo(self, sockaddr, flags=0):
        return getnameinfo(sockaddr, flags)

    async def sock_connect(self, sock, address):
        if not isinstance(sock, HostSocket):
            raise TypeError("sock_connect() needs a socket of the sandbox")
        if sock._handle is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        args = _connect_args(address, sock._family, None)
        sock._adopt(json.loads(await _async("net.connect", json.dumps(args).encode())))

    async def sock_recv(self, sock, n):
        sock._check_open()
        if sock._rbuf:
            data, sock._rbuf = sock._rbuf[:n], sock._rbuf[n:]
            return data
        return await _async("net.recv", _RECV.pack(sock._handle, min(n, 1 << 20), _FOREVER))

    async def sock_recv_into(self, sock, buf):
        view = memoryview(buf).cast("B")
        data = await self.sock_recv(sock, len(view))
        view[:len(data)] = data
        return len(data)

    async def sock_sendall(self, sock, data):
        sock._check_open()
        data = bytes(data)
        for at in range(0, max(len(data), 1), _SEND_MAX):
            await _async("net.send", _U32.pack(sock._handle) + data[at:at + _SEND_MAX])

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None,
                                family=0, proto=0, flags=0, sock=None, local_addr=None,
                                server_hostname=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, happy_eyeballs_delay=None,
                                interleave=None, all_errors=False):
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            return await self._adopt_socket(protocol_factory, sock, ssl, server_hostname)
        if host is None and port is None:
            raise ValueError("host and port was not specified and no sock specified")
        if ssl and server_hostname is None:
            server_hostname = host
        args = {"host": host.decode("idna") if isinstance(host, bytes) else host, "port": int(port)}
        return await _open(self, protocol_factory, args, ssl, server_hostname, host)

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None,
                                     server_hostname=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None):
        if sock is not None:
            return await self._adopt_socket(protocol_factory, sock, ssl, server_hostname)
        if ssl and server_hostname is None:
            raise ValueError("you have to pass server_hostname when using ssl")
        return await _open(self, protocol_factory, {"unix": os.fspath(path)}, ssl, server_hostname, None)

    async def _adopt_socket(self, protocol_factory, sock, ssl, server_hostname):
        if not isinstance(sock, HostSocket):
            raise TypeError("create_connection(sock=) needs a socket of the sandbox")
        sock._check_open()
        handle, sock._handle, sock._closed = sock._handle, None, True
        extra = {"peername": sock._peer, "sockname": sock._local,
                 "socket": _TransportSocket(sock._family, sock._peer, sock._local)}
        if ssl:
            context = ssl if not isinstance(ssl, bool) else sys.modules["ssl"].create_default_context()
            try:
                raw = await _async("net.tls", context._tls_args(handle, server_hostname))
            except BaseException:
                _async_close(handle)
                raise
            info = _SSLInfo(json.loads(raw), context, server_hostname)
            extra.update(sslcontext=context, ssl_object=info, peercert={}, cipher=info.cipher(),
                         compression=None)
        return _adopt(self, handle, protocol_factory, extra)

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        if server_side:
            raise sys.modules["ssl"].SSLError(1, "the sandbox cannot serve TLS")
        if not isinstance(transport, _HostTransport):
            raise TypeError("start_tls() needs a transport of the sandbox")
        await transport.upgrade(sslcontext, server_hostname)
        transport.set_protocol(protocol)
        return transport

    async def create_server(self, *args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "the sandbox cannot accept connections: it serves through its triggers")

    create_unix_server = create_server


def _adapt_anyio_tls():
    """anyio's TLSStream.wrap does TLS in memory (ssl.MemoryBIO): over a host connection the
    host upgrades the connection instead, and the stream stays the same object."""
    try:
        import anyio.abc
        import anyio.streams.tls as tls
        from anyio.streams.tls import TLSAttribute
    except Exception:
        return False
    original = tls.TLSStream.wrap.__func__

    async def wrap(cls, transport_stream, *, server_side=None, hostname=None, ssl_context=None,
                   standard_compatible=True):
        transport = getattr(transport_stream, "_transport", None)
        if not isinstance(transport, _HostTransport):
            return await original(cls, transport_stream, server_side=server_side, hostname=hostname,
                                  ssl_context=ssl_context, standard_compatible=standard_compatible)
        if server_side:
            raise sys.modules["ssl"].SSLError(1, "the sandbox cannot serve TLS")
        context = ssl_context or sys.modules["ssl"].create_default_context()
        info = await transport.upgrade(context, hostname)
        return _HostTLSStream(transport_stream, info)

    tls.TLSStream.wrap = classmethod(wrap)

    class _HostTLSStream(anyio.abc.ByteStream):
        """anyio's view of a connection the host upgraded to TLS: the same byte stream, with
        anyio's TLS attributes."""

        def __init__(self, stream, info):
            self.transport_stream, self._info = stream, info

        async def receive(self, max_bytes=65536):
            return await self.transport_stream.receive(max_bytes)

        async def send(self, item):
            await self.transport_stream.send(item)

        async def send_eof(self):
            await self.transport_stream.send_eof()

        async def aclose(self):
            await self.transport_stream.aclose()

        @property
        def extra_attributes(self):
            info = self._info
            return {
                **self.transport_stream.extra_attributes,
                TLSAttribute.alpn_protocol: info.selected_alpn_protocol,
                TLSAttribute.channel_binding_tls_unique: lambda: None,
                TLSAttribute.cipher: info.cipher,
                TLSAttribute.peer_certificate: lambda: {},
                TLSAttribute.peer_certificate_binary: lambda: b"",
                TLSAttribute.server_side: lambda: False,
                TLSAttribute.shared_ciphers: lambda: None,
                TLSAttribute.ssl_object: lambda: info,
                TLSAttribute.standard_compatible: lambda: False,
                TLSAttribute.tls_version: info.version,
            }

    return True


def install(call, call_blocking, error_class, close_soon):
    """Makes `socket` and `ssl` use the host, with boot.py's calls."""
    global _call, _call_blocking, _HostCallError, _async_close
    _call, _call_blocking, _HostCallError = call, call_blocking, error_class
    _async_close = close_soon
    _install_socket()
    _install_select()
    sys.modules["ssl"] = _make_ssl()  # an OpenSSL module could not wrap a host socket anyway
