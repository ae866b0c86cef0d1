"""Sends N keep-alive `GET`s on one connection, one at a time, and checks every answer is a 200.

Used by benches/server-instructions.sh to drive a server under callgrind with a known number of
requests (wrk runs for a time, not a count):

    python3 benches/python/sequential_client.py 127.0.0.1 8000 '/?name=load' 2000
"""

import socket
import sys


def read_response(sock, buf):
    """Reads one response (Content-Length or chunked) from `buf` + the socket; returns what is
    left over for the next one."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            if head[0].split(" ")[1] != "200":
                sys.exit(f"sequential_client: {head[0]!r}")
            fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            if "content-length" in fields:
                stop = end + 4 + int(fields["content-length"])
                if len(buf) >= stop:
                    return buf[stop:]
            elif "chunked" in fields.get("transfer-encoding", ""):
                last = buf.find(b"\r\n0\r\n\r\n", end)
                if last >= 0:
                    return buf[last + 7:]
            else:
                sys.exit("sequential_client: a response without a length")
        data = sock.recv(65536)
        if not data:
            sys.exit("sequential_client: the server closed the connection")
        buf += data


def main():
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: sequential\r\n"
               "Accept: */*\r\n\r\n").encode()
    with socket.create_connection((host, port)) as sock:
        buf = b""
        for _ in range(count):
            sock.sendall(request)
            buf = read_response(sock, buf)


if __name__ == "__main__":
    main()
