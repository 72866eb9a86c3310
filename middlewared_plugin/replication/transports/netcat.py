"""SSH+NETCAT: SSH for control only, the stream over a plain TCP connection (trusted networks).

The active side listens on the first free port in [port_min, port_max] and the passive side connects and
authenticates with a random token (the token travels over SSH, never on a command line). The remote end is
`netcat_helper.py`, run over SSH as `python3 -u -c <source>`, which needs only Python 3 and zfs there; its
zfs reads or writes the socket directly. This side runs its zfs through the local runner and copies
between the process and the socket in asyncio, counting the bytes, so progress and stall detection work
as with any transport.

Which host sends is fixed by the direction (PUSH: this host), which host listens by `active_side`:
PUSH+LOCAL: we listen and send; PUSH+REMOTE: the helper listens and receives; mirrored for PULL.

The helper reports zfs's exit status and stderr as JSON over the SSH channel; failures read
"Active side (...): ... / Passive side (...): ...". Abort SIGKILLs the helper's process group on the
remote and closes its channel (its stdin EOF also makes it kill zfs), so nothing is left running there.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import Process, Runner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.transports.base import (
    CHUNK_SIZE,
    ByteCounter,
    PipeFailed,
    PipeResult,
    Transport,
)
from middlewared_plugin.replication.transports.netcat_helper import bind

logger = logging.getLogger(__name__)

HELPER_SOURCE = (Path(__file__).parent / "netcat_helper.py").read_text()
#: Seconds the listener waits for a connection with the right token, and the helper to report its port.
CONNECT_TIMEOUT = 30.0
#: Seconds a connecting peer has to send its token.
TOKEN_TIMEOUT = 10.0
TOKEN_BYTES = 32
DEFAULT_PORT_MIN = 1024
DEFAULT_PORT_MAX = 65535
# What a zfs stage prints when the stream (not zfs) broke: worth a retry.
_BROKEN_STREAM = re.compile(r"Broken pipe|Connection reset|failed to read from stream|premature|Input/output error",
                            re.IGNORECASE)


def listen(address: str | None, port_min: int, port_max: int) -> socket.socket:
    """A non-blocking listening socket on the first free port in the range (`None`: all addresses)."""
    sock = bind(address, port_min, port_max)
    sock.setblocking(False)
    return sock


async def accept(server: socket.socket, token: bytes, timeout: float) -> socket.socket:
    """The first connection that sends `token` within `timeout`; others are closed and waiting goes on."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            conn, peer = await loop.sock_accept(server)
            conn.setblocking(False)
            received = b""
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(TOKEN_TIMEOUT):
                    while len(received) < len(token):
                        if not (chunk := await loop.sock_recv(conn, len(token) - len(received))):
                            break
                        received += chunk
            if hmac.compare_digest(received, token):
                return conn
            logger.warning("SSH+NETCAT: rejected a data connection from %s: wrong token", peer[0])
            conn.close()


async def connect(address: str, port: int, token: bytes, timeout: float) -> socket.socket:
    """A connection to the listener, authenticated by sending `token` first."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
                await loop.sock_sendall(sock, token)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(errno.EHOSTUNREACH, f"{address} has no address")


async def _stop(process: Process, sending: bool) -> None:
    """Kill our zfs and release its pipe. zfs-fuse's daemon, not the zfs command, does the send or receive and
    holds the pipe: it would block forever on a pipe nobody reads (or wait for data nobody writes), keeping the
    pool busy. So the rest of a send is read away and a receive gets EOF. With in-kernel ZFS the kill ends it."""
    process.kill()
    if sending:
        while await process.read(CHUNK_SIZE):
            pass
    else:
        await process.close_stdin()


# Stops still draining after an abort, referenced so they are not garbage-collected mid-way.
_stopping: set[asyncio.Future[None]] = set()


class _Helper:
    """The helper process on the remote and its JSON lines."""

    def __init__(self, process: Process, runner: Runner):
        self.process = process
        self.runner = runner
        self._buffer = b""

    @classmethod
    async def start(cls, runner: Runner, config: dict[str, object]) -> _Helper:
        process = await runner.start(["python3", "-u", "-c", HELPER_SOURCE], stdin=True, stdout=True)
        helper = cls(process, runner)
        try:
            await process.write(json.dumps(config).encode() + b"\n")
        except BaseException:
            process.kill()
            raise
        return helper

    async def message(self) -> dict[str, object]:
        """The next JSON line; PipeFailed (transient) if the helper ended without one."""
        while b"\n" not in self._buffer:
            chunk = await self.process.read(65536)
            if not chunk:
                code = None
                with contextlib.suppress(CallError, TimeoutError):
                    code = await asyncio.wait_for(self.process.wait(), 10)
                detail = self.process.stderr_text().strip() or "it exited without a report"
                if code == 127:  # the shell found no python3: retrying cannot help
                    raise PipeFailed("transport", f"SSH+NETCAT needs python3 on {self.runner.name}: {detail}",
                                     transient=False)
                raise PipeFailed("transport", f"SSH+NETCAT helper on {self.runner.name} failed: {detail}",
                                 transient=True)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        self.process.kill()


@dataclass
class _Side:
    """One end's outcome, for the error message."""

    label: str
    code: int | None = None
    stderr: str = ""

    @property
    def failed(self) -> bool:
        return self.code not in (0, None)

    @property
    def consequence(self) -> bool:
        """Failed only because the stream broke (killed by a signal, broken pipe, truncated stream)."""
        return (self.code or 0) < 0 or _BROKEN_STREAM.search(self.stderr) is not None

    def describe(self) -> str:
        assert self.code is not None
        detail = self.stderr.strip() or (
            f"killed by signal {-self.code}" if self.code < 0 else f"exit status {self.code}")
        return f"{self.label}: {detail}"


class NetcatTransport(Transport):
    name = "SSH+NETCAT"

    def __init__(
        self,
        source_runner: Runner,
        target_runner: Runner,
        *,
        remote_runner: Runner,
        direction: str,
        active_side: str,
        listen_address: str | None = None,
        port_min: int | None = None,
        port_max: int | None = None,
        connect_address: str | None = None,
    ):
        if direction not in ("PUSH", "PULL"):
            raise ValueError(f"direction must be PUSH or PULL, not {direction!r}")
        if active_side not in ("LOCAL", "REMOTE"):
            raise ValueError(f"active_side must be LOCAL or REMOTE, not {active_side!r}")
        self.source = source_runner
        self.target = target_runner
        self.remote = remote_runner
        self.direction = direction
        self.active_side = active_side
        self.listen_address = listen_address or None
        self.port_min = port_min or DEFAULT_PORT_MIN
        self.port_max = port_max or DEFAULT_PORT_MAX
        if not 0 < self.port_min <= self.port_max <= 65535:
            raise ValueError(f"invalid port range {self.port_min}-{self.port_max}")
        self.connect_address = connect_address or None
        # This host sends on PUSH and receives on PULL; the other runner is the remote's.
        self.local = source_runner if direction == "PUSH" else target_runner
        if (target_runner if direction == "PUSH" else source_runner) is not remote_runner:
            raise ValueError("remote_runner must be the target runner for PUSH and the source runner for PULL")

    def _remote_connect_address(self) -> str:
        """Where this host connects to a listening helper: the configured address, else the SSH host."""
        if self.connect_address:
            return self.connect_address
        if isinstance(self.remote, SshRunner):
            return self.remote.params.host
        raise PipeFailed("transport", "SSH+NETCAT needs a connect address for this remote", transient=False)

    async def pipe(
        self,
        send_argv: Sequence[str],
        recv_argv: Sequence[str],
        *,
        on_bytes: ByteCounter,
        stall_timeout: float | None = None,
    ) -> PipeResult:
        local_sends = self.direction == "PUSH"
        local_argv, remote_argv = (send_argv, recv_argv) if local_sends else (recv_argv, send_argv)
        local_role, remote_role = ("send", "receive") if local_sends else ("receive", "send")
        local_active = self.active_side == "LOCAL"
        local_side = _Side(f"{'Active' if local_active else 'Passive'} side (zfs {local_role} on {self.local.name})")
        remote_side = _Side(f"{'Passive' if local_active else 'Active'} side (zfs {remote_role} on {self.remote.name})")
        token = secrets.token_hex(TOKEN_BYTES)
        if isinstance(self.remote, SshRunner) and self.remote.params.sudo:
            remote_argv = ["sudo", "-n", *remote_argv]  # what SshRunner does for zfs it runs itself
        config: dict[str, object] = {
            "argv": list(remote_argv), "role": remote_role, "token": token, "timeout": CONNECT_TIMEOUT,
        }

        helper: _Helper | None = None
        conn: socket.socket | None = None
        process: Process | None = None
        try:
            helper, conn = await self._connect(config, token.encode())
            process = await self.local.start(local_argv, stdin=not local_sends, stdout=local_sends)
            result = await self._transfer(helper, conn, process, local_sends, local_side, remote_side,
                                          on_bytes, stall_timeout)
            process = None  # exited and reaped
            return result
        finally:
            if conn is not None:
                conn.close()
            if helper is not None:
                helper.kill()
            if process is not None and local_side.code is None:
                stopping = asyncio.ensure_future(_stop(process, local_sends))
                _stopping.add(stopping)
                stopping.add_done_callback(_stopping.discard)

    async def _connect(self, config: dict[str, object], token: bytes) -> tuple[_Helper, socket.socket]:
        """Start the helper and set up the authenticated data connection, whichever side listens."""
        helper: _Helper | None = None
        try:
            if self.active_side == "LOCAL":
                try:
                    server = listen(self.listen_address, self.port_min, self.port_max)
                except OSError as e:
                    raise PipeFailed("transport", f"Active side ({self.local.name}): {e}", transient=True) from None
                with server:
                    port = server.getsockname()[1]
                    logger.info("SSH+NETCAT: listening on %s port %d", self.listen_address or "all addresses", port)
                    config["connect"] = [self.connect_address, port]
                    helper = await _Helper.start(self.remote, config)
                    conn = await self._first(accept(server, token, CONNECT_TIMEOUT), helper,
                                             f"Active side ({self.local.name})")
            else:
                config["listen"] = [self.listen_address, self.port_min, self.port_max]
                helper = await _Helper.start(self.remote, config)
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        first = await helper.message()
                except TimeoutError:
                    raise PipeFailed("transport", f"Active side ({self.remote.name}): the helper did not start "
                                     f"within {CONNECT_TIMEOUT:g}s", transient=True) from None
                if "listening" not in first:
                    raise PipeFailed("transport", f"Active side ({self.remote.name}): {first.get('error')}",
                                     transient=True)
                port = int(first["listening"])  # type: ignore[call-overload]
                address = self._remote_connect_address()
                logger.info("SSH+NETCAT: %s listens on port %d, connecting to %s", self.remote.name, port, address)
                conn = await self._first(connect(address, port, token, CONNECT_TIMEOUT), helper,
                                         f"Passive side ({self.local.name}) connecting to {address} port {port}")
            return helper, conn
        except BaseException:
            if helper is not None:
                helper.kill()
            raise

    @staticmethod
    async def _first(setup: Coroutine[Any, Any, socket.socket], helper: _Helper, label: str) -> socket.socket:
        """The data connection from `setup`, unless the helper reports a failure first (it cannot connect,
        say), which then fails at once instead of after the full connect timeout."""
        setup_task = asyncio.ensure_future(setup)
        report = asyncio.ensure_future(helper.message())
        try:
            await asyncio.wait([setup_task, report], return_when=asyncio.FIRST_COMPLETED)
            if setup_task.done():
                try:
                    return setup_task.result()
                except (OSError, TimeoutError) as e:
                    reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
                    raise PipeFailed("transport", f"{label}: {reason}", transient=True) from None
            message = report.result()
            other = "Passive" if label.startswith("Active") else "Active"
            detail = message.get("error") or f"unexpected report {message}"
            raise PipeFailed("transport", f"{other} side ({helper.runner.name}): {detail}", transient=True)
        finally:
            for task in (setup_task, report):
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the other task's outcome decided

    async def _transfer(
        self,
        helper: _Helper,
        conn: socket.socket,
        process: Process,
        local_sends: bool,
        local_side: _Side,
        remote_side: _Side,
        on_bytes: ByteCounter,
        stall_timeout: float | None,
    ) -> PipeResult:
        loop = asyncio.get_running_loop()
        total = 0
        last_byte = time.monotonic()
        broken: list[str] = []  # why the copy stopped early, if it did

        def count(n: int) -> None:
            nonlocal total, last_byte
            total += n
            last_byte = time.monotonic()
            on_bytes(n)

        async def copy() -> None:
            """Stream between our zfs and the socket. When the connection breaks, our zfs is killed (a
            consequence); when our zfs dies, the socket is closed so that the remote zfs stops too."""
            try:
                if local_sends:
                    while chunk := await process.read(CHUNK_SIZE):
                        try:
                            await loop.sock_sendall(conn, chunk)
                        except OSError as e:
                            broken.append(e.strerror or str(e))
                            await _stop(process, sending=True)
                            return
                        count(len(chunk))
                    conn.shutdown(socket.SHUT_WR)
                else:
                    while True:
                        try:
                            chunk = await loop.sock_recv(conn, CHUNK_SIZE)
                        except OSError as e:
                            broken.append(e.strerror or str(e))
                            await _stop(process, sending=False)
                            return
                        if not chunk:
                            break
                        count(len(chunk))
                        await process.write(chunk)
                    await process.close_stdin()
            except OSError:
                conn.close()  # our zfs exited early; its status and stderr tell why

        async def watchdog() -> None:
            assert stall_timeout is not None
            while True:
                idle = time.monotonic() - last_byte
                if idle >= stall_timeout:
                    return
                await asyncio.sleep(stall_timeout - idle)

        async def finish() -> None:
            """Once the stream is through: both zfs may still be committing, for as long as that takes."""
            local_side.code = await process.wait()
            local_side.stderr = process.stderr_text()
            report = await helper.message()
            if "exit" not in report:
                raise PipeFailed("transport", f"{remote_side.label}: {report.get('error', report)}", transient=True)
            remote_side.code = int(report["exit"])  # type: ignore[call-overload]
            remote_side.stderr = str(report.get("stderr", ""))
            with contextlib.suppress(CallError):
                await helper.process.wait()  # gone for good, so the cleanup needs no remote kill

        copier = asyncio.ensure_future(copy())
        guard = asyncio.ensure_future(watchdog()) if stall_timeout else None
        try:
            done, _ = await asyncio.wait([copier, *([guard] if guard else [])], return_when=asyncio.FIRST_COMPLETED)
            if copier not in done:
                raise PipeFailed("transport", f"SSH+NETCAT: no data for {stall_timeout:g}s, stalled", transient=True)
            copier.result()
            if guard is not None:
                guard.cancel()  # no byte moves after the stream's end: the wait below is not a stall
            await finish()
        finally:
            copier.cancel()
            if guard is not None:
                guard.cancel()

        failed = [s for s in (local_side, remote_side) if s.failed]
        causes = [s for s in failed if not s.consequence]
        if broken and not causes:
            raise PipeFailed("transport", f"SSH+NETCAT data connection broke: {broken[0]}", transient=True)
        if failed:
            sender = local_side if local_sends else remote_side
            stage = "send" if sender in (causes or failed) else "receive"
            active, passive = (local_side, remote_side) if self.active_side == "LOCAL" else (remote_side, local_side)
            message = " / ".join(s.describe() for s in (active, passive) if s.failed)
            raise PipeFailed(stage, message, transient=not causes)
        return PipeResult(total)
