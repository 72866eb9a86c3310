"""The remote end of the SSH+NETCAT transport: one `zfs send` or `zfs receive` wired to a plain TCP socket.

It runs on the remote host as `python3 -u -c <this source>` over SSH, so it must stay a single file that
needs only the Python (>= 3.10) standard library and `zfs`; nothing is copied to the remote. Protocol:

* stdin, first line: a JSON object (never on the command line, where other users could read the token):
  `{"argv": [...], "role": "send"|"receive", "token": hex, "timeout": seconds,` and either
  `"listen": [address|null, port_min, port_max]` (this side is active) or `"connect": [address|null, port]`
  (null: the first field of `$SSH_CLIENT`, i.e. the address the SSH client reached us from).
* stdin, afterwards: nothing. EOF (the SSH channel closed: abort) kills zfs and ends the helper.
* stdout, one JSON object per line: `{"listening": port}` once bound, then exactly one of
  `{"exit": status, "stderr": text}` (zfs ran) or `{"error": text}` (no data connection).

zfs reads or writes the socket itself (its stdin/stdout is the socket): no copy through this process.
The connecting side sends the token first; the listener closes connections with a wrong token and keeps
waiting until `timeout`.
"""
from __future__ import annotations

import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time

zfs: subprocess.Popen[bytes] | None = None


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def watch_stdin() -> None:
    # The SSH channel closing is the abort signal; the SIGKILL of our process group usually comes first.
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader aborts interpreter shutdown.
    while os.read(0, 65536):
        pass
    if zfs is not None and zfs.poll() is None:
        zfs.kill()
    os._exit(1)


def bind(address: str | None, port_min: int, port_max: int) -> socket.socket:
    """A listening socket on the first free port in the range; dual-stack on all addresses when no address."""
    if address is None:
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        infos = socket.getaddrinfo(address, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
        candidates = [(family, sockaddr[0]) for family, _, _, _, sockaddr in infos]
    for family, host in candidates:
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # e.g. IPv6 disabled in this kernel
        probe.close()
        for port in range(port_min, port_max + 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6 and address is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((host, port))
                sock.listen(8)
                return sock
            except OSError:
                sock.close()
        raise OSError(f"no free port in {port_min}-{port_max} on {address or 'all addresses'}")
    raise OSError(f"cannot listen on {address or 'any address'}")


def read_token(conn: socket.socket, size: int, timeout: float) -> bytes:
    conn.settimeout(timeout)
    data = b""
    try:
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return b""
    return data


def accept(server: socket.socket, token: bytes, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OSError(f"no connection with the right token within {timeout:g}s")
        server.settimeout(remaining)
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        if hmac.compare_digest(read_token(conn, len(token), min(remaining, 10)), token):
            conn.settimeout(None)
            return conn
        conn.close()


def connect(address: str | None, port: int, token: bytes, timeout: float) -> socket.socket:
    if address is None:
        address = os.environ.get("SSH_CLIENT", "").split(" ")[0]
        if not address:
            raise OSError("no connect address given and $SSH_CLIENT is not set")
    conn = socket.create_connection((address, port), timeout=timeout)
    conn.sendall(token)
    conn.settimeout(None)
    return conn


def main() -> int:
    global zfs
    config = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=watch_stdin, daemon=True).start()
    token = config["token"].encode()
    try:
        if "listen" in config:
            address, port_min, port_max = config["listen"]
            server = bind(address, port_min, port_max)
            emit({"listening": server.getsockname()[1]})
            conn = accept(server, token, config["timeout"])
            server.close()
        else:
            conn = connect(config["connect"][0], config["connect"][1], token, config["timeout"])
    except OSError as e:
        emit({"error": str(e)})
        return 1
    sending = config["role"] == "send"
    zfs = subprocess.Popen(
        config["argv"],
        stdin=subprocess.DEVNULL if sending else conn.fileno(),
        stdout=conn.fileno() if sending else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = zfs.communicate()[1]
    if sending:
        # zfs held one reference to the socket; ours keeps it open until the peer is told we are done.
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    conn.close()
    emit({"exit": zfs.returncode, "stderr": stderr.decode(errors="replace")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
