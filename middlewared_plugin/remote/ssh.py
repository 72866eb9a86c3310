"""Running commands on another host over SSH (asyncssh), behind the same `Runner` interface as local commands.

One SSH connection per credential is kept in a pool and shared by every runner and channel using that
credential; it closes after being idle for a while. The pool key includes a hash of the key material, so
a rotated private key or a re-scanned host key gets a fresh connection instead of a stale one.

The remote host key is pinned: only the keys stored with the credential are trusted; anything else refuses
the connection (there is no "accept new"). Commands are argv lists quoted with `shlex.quote` for the remote
shell. Killing a command SIGKILLs its remote process group (found from the PID each command reports when
it starts) and closes the channel, so nothing keeps running on the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import posixpath
import shlex
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.names import check_host, check_username
from middlewared_plugin.remote.runner import CommandFailed, CommandResult, Process, Runner
from middlewared_plugin.remote.ssh_keys import parse_host_keys

#: Seconds an unused connection stays open before the pool closes it.
DEFAULT_IDLE_SECONDS = 60.0
# Keepalives notice a peer that vanished without a TCP reset (host crash, cable) within about a minute.
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT_MAX = 4
#: Commands that get `sudo -n` when the credential asks for sudo (TrueNAS grants passwordless sudo for zfs only).
SUDO_COMMANDS = frozenset({"zfs", "zpool"})
# Prefix of the first stderr line of every remote command, carrying the command's PID.
PID_MARKER = "middlewared-pid:"


@dataclass(frozen=True)
class SshParams:
    """How to reach one host: what an SSH_CREDENTIALS entry holds, with the key pair's private key as text."""

    host: str
    port: int = 22
    username: str = "root"
    private_key: str = field(default="", repr=False)
    remote_host_key: str = field(default="", repr=False)
    connect_timeout: float = 10
    sudo: bool = False

    def __post_init__(self) -> None:
        # Credentials saved before hosts and users were validated must not reach `ssh`'s command line either.
        check_host(self.host)
        check_username(self.username)
        if not 1 <= self.port <= 65535:
            raise CallError(f"Invalid SSH port {self.port}: a port is 1 to 65535", errno.EINVAL)

    @classmethod
    def from_credentials(cls, attributes: Mapping[str, Any], *, sudo: bool | None = None) -> SshParams:
        """From SSH_CREDENTIALS attributes whose `private_key` was resolved to the key pair's private key text."""
        return cls(
            host=attributes["host"],
            port=int(attributes.get("port") or 22),
            username=attributes.get("username") or "root",
            private_key=attributes["private_key"],
            remote_host_key=attributes["remote_host_key"],
            connect_timeout=float(attributes.get("connect_timeout") or 10),
            sudo=bool(attributes.get("sudo", False) if sudo is None else sudo),
        )

    @property
    def label(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def pool_key(self) -> tuple[str, int, str, str]:
        """What makes two credentials share a connection: the endpoint, the user and the exact key material."""
        material = hashlib.sha256(f"{self.private_key}\0{self.remote_host_key}".encode()).hexdigest()
        return (self.host, self.port, self.username, material)


def remote_command(argv: Sequence[str], *, sudo: bool = False) -> str:
    """The command line the remote login shell runs for `argv`.

    Every argument is quoted; zfs/zpool get `sudo -n` when asked. The shell first reports its PID on stderr
    and then `exec`s the command, so the command keeps that PID and leads its own process group (sshd
    starts each session with setsid): that is what `SshProcess.kill` signals. The C locale matches
    LocalRunner, so parsed output and error texts read the same on every host.
    """
    if not argv:
        raise ValueError("empty argv")
    words = [shlex.quote(a) for a in argv]
    if sudo and posixpath.basename(argv[0]) in SUDO_COMMANDS:
        words[:0] = ["sudo", "-n"]
    return f"echo {PID_MARKER}$$ >&2; export LC_ALL=C; exec " + " ".join(words)


class SshUnreachable(CallError):
    """Nothing could run on the SSH host: no connection, a host key mismatch or a refused key. `errno` says which;
    the replication API reports each of them with EACCES, as TrueNAS does."""


def host_key_mismatch(host: str, port: int) -> SshUnreachable:
    return SshUnreachable(
        f"Host key verification failed for {host}:{port}: the host key does not match the stored one "
        "(remote_host_key). If the remote system was reinstalled, scan its host key again.",
        errno.EPERM,
    )


def _connect_error(params: SshParams, exc: BaseException) -> SshUnreachable:
    """Translate what asyncssh/the socket layer raised while connecting into a CallError with an errno."""
    where = f"{params.host}:{params.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return host_key_mismatch(params.host, params.port)
    if isinstance(exc, asyncssh.KeyExchangeFailed) and "host key" in str(exc).lower():
        # The server offers none of the stored key types: it cannot present the pinned key either.
        return host_key_mismatch(params.host, params.port)
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshUnreachable(f"SSH authentication failed for {params.label}: the server did not accept the key",
                              errno.EACCES)
    if isinstance(exc, TimeoutError):
        return SshUnreachable(f"SSH connection to {where} timed out after {params.connect_timeout:g}s",
                              errno.ETIMEDOUT)
    if isinstance(exc, ConnectionRefusedError):
        return SshUnreachable(f"SSH connection to {where} refused", errno.ECONNREFUSED)
    if isinstance(exc, socket.gaierror):
        return SshUnreachable(f"SSH host {params.host!r} could not be resolved: {exc.strerror}", errno.EHOSTUNREACH)
    if isinstance(exc, OSError):
        return SshUnreachable(f"SSH connection to {where} failed: {exc.strerror or exc}", exc.errno or errno.EFAULT)
    if isinstance(exc, UnicodeError):
        return SshUnreachable(f"SSH host {params.host!r} is not a valid host name", errno.EINVAL)
    if isinstance(exc, asyncssh.Error):
        return SshUnreachable(f"SSH connection to {where} failed: {exc.reason}", errno.ECONNRESET)
    return SshUnreachable(f"SSH connection to {where} failed: {exc}", errno.EFAULT)


def _lost(label: str, argv: Sequence[str], exc: BaseException | None = None) -> CallError:
    detail = f": {exc}" if exc else ""
    return CallError(f"[{label}] {' '.join(argv)}: SSH connection lost{detail}", errno.ECONNRESET)


def _host_key_algorithms(trusted: list[asyncssh.SSHKey]) -> list[str]:
    """Host key algorithms to offer: the pinned keys' first, then every other one asyncssh knows.

    Offering only the pinned types would make a server without them hang up during negotiation (seen as a
    bare "connection lost"); offering the rest last lets it present some other key, which then fails
    verification with a clear host key error. The server picks the first offered type it has, so a pinned
    key it does have always wins.
    """
    algorithms: list[bytes] = []
    for key in trusted:
        algorithms += [a for a in key.sig_algorithms if a not in algorithms]
    algorithms += [a for a in get_default_public_key_algs() if a not in algorithms]
    return [a.decode() for a in algorithms]


# Raised by asyncssh when the connection under a channel is gone.
_CONNECTION_GONE = (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError, asyncssh.ChannelOpenError)


class _PooledConnection:
    def __init__(self, key: tuple[str, int, str, str], conn: asyncssh.SSHClientConnection):
        self.key = key
        self.conn = conn
        self.users = 0
        #: Times handed out; above 1 means the connection was reused (and may have died since).
        self.acquired = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Future[None] | None = None


class SshConnectionPool:
    """Connections shared per credential; each closes after `idle_seconds` without an open channel."""

    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS):
        self.idle_seconds = idle_seconds
        #: How many SSH connections were established (to check reuse).
        self.connects = 0
        self._entries: dict[tuple[str, int, str, str], _PooledConnection] = {}
        self._connecting: dict[tuple[str, int, str, str], asyncio.Task[_PooledConnection]] = {}
        self._kills: set[asyncio.Future[None]] = set()

    def track_kill(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a remote kill in the background; `close_all` lets pending ones finish before closing."""
        task = asyncio.ensure_future(coro)
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def acquire(self, params: SshParams, *, fresh: bool = False) -> _PooledConnection:
        """A live connection for `params`, counted as in use until `release`. `fresh` drops a reused one first."""
        key = params.pool_key
        entry = self._entries.get(key)
        if entry is not None and (fresh or entry.conn.is_closed()):
            self._discard(entry)
            entry = None
        if entry is None:
            task = self._connecting.get(key)
            if task is None:
                task = asyncio.ensure_future(self._connect(params))
                self._connecting[key] = task
                task.add_done_callback(functools.partial(self._connected, key))
            # Shielded: one caller being cancelled must not abort a connection others are waiting for.
            entry = await asyncio.shield(task)
        entry.users += 1
        entry.acquired += 1
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
            entry.idle_timer = None
        return entry

    def release(self, entry: _PooledConnection) -> None:
        entry.users -= 1
        if entry.users == 0:
            if self._entries.get(entry.key) is entry:
                self._arm_idle_timer(entry)
            else:
                entry.conn.close()  # discarded while in use: its last channel just ended

    def _arm_idle_timer(self, entry: _PooledConnection) -> None:
        entry.idle_timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._close_if_idle, entry)

    def _connected(self, key: tuple[str, int, str, str], task: asyncio.Task[_PooledConnection]) -> None:
        del self._connecting[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled meanwhile

    async def _connect(self, params: SshParams) -> _PooledConnection:
        trusted = parse_host_keys(params.remote_host_key)
        if not trusted:
            raise CallError(f"No valid host key is stored for {params.host}:{params.port}", errno.EINVAL)
        try:
            client_key = asyncssh.import_private_key(params.private_key)
        except asyncssh.KeyImportError as e:
            raise CallError(f"The private key for {params.label} cannot be used: {e}", errno.EINVAL) from None
        try:
            conn = await asyncssh.connect(
                params.host, params.port,
                username=params.username,
                client_keys=[client_key],
                known_hosts=(trusted, [], []),
                server_host_key_algs=_host_key_algorithms(trusted),
                connect_timeout=params.connect_timeout,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                # Only what the credential says: no ~/.ssh/config, agent, passwords or host-based auth.
                config=[],
                agent_path=None,
                preferred_auth="publickey",
                password=None,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                host_based_auth=False,
                x509_trusted_certs=None,
            )
        # UnicodeError: a host name the IDNA codec refuses ("a..b").
        except (OSError, asyncssh.Error, TimeoutError, UnicodeError) as e:
            raise _connect_error(params, e) from None
        self.connects += 1
        entry = _PooledConnection(params.pool_key, conn)
        self._entries[entry.key] = entry
        # Idle until a waiter takes it (all of them may have been cancelled while connecting).
        self._arm_idle_timer(entry)
        entry.watcher = asyncio.ensure_future(self._forget_when_closed(entry))
        return entry

    async def _forget_when_closed(self, entry: _PooledConnection) -> None:
        await entry.conn.wait_closed()
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    def _discard(self, entry: _PooledConnection) -> None:
        """Stop handing out `entry`; its open channels keep running until they end."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
        if entry.users == 0:
            entry.conn.close()

    def _close_if_idle(self, entry: _PooledConnection) -> None:
        if entry.users == 0:
            self._discard(entry)

    def close_idle(self, params: SshParams) -> None:
        """Close the connection for `params` now if no channel uses it."""
        entry = self._entries.get(params.pool_key)
        if entry is not None and entry.users == 0:
            self._close_if_idle(entry)

    async def close_all(self) -> None:
        """Close every connection (service shutdown); running commands on them are cut off.

        Kills still on their way go first: a command that neither reads nor writes would otherwise outlive
        its closed channel.
        """
        if self._kills:
            await asyncio.wait(list(self._kills), timeout=30)
        entries = list(self._entries.values())
        for entry in entries:
            self._discard(entry)
            entry.conn.close()
        for entry in entries:
            await entry.conn.wait_closed()


class SshProcess(Process):
    """A command running in one SSH session channel."""

    def __init__(self, label: str, argv: tuple[str, ...], conn: asyncssh.SSHClientConnection,
                 process: asyncssh.SSHClientProcess[bytes], on_closed: asyncio.Future[None],
                 remote_pid: int | None, stderr: bytes, kill_group: Callable[[int], None]):
        self.argv = argv
        self.remote_pid = remote_pid
        self._label = label
        self._conn = conn
        self._process = process
        self._closed = on_closed
        self._kill_group = kill_group
        self._stderr = bytearray(stderr)
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def _collect_stderr(self) -> None:
        with contextlib.suppress(*_CONNECTION_GONE, BrokenPipeError):
            while chunk := await self._process.stderr.read(65536):
                self._stderr += chunk

    async def read(self, n: int) -> bytes:
        try:
            return await self._process.stdout.read(n)
        except _CONNECTION_GONE as e:
            raise _lost(self._label, self.argv, e) from None

    async def write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain()
        except BrokenPipeError as e:
            # The command closed its input (or exited), as a local pipe would report it; unless the whole
            # connection went away.
            if self._conn.is_closed():
                raise _lost(self._label, self.argv, e) from None
            raise
        except _CONNECTION_GONE as e:
            raise _lost(self._label, self.argv, e) from None

    async def close_stdin(self) -> None:
        # The command may already have exited and the channel closed; EOF then has nobody to reach.
        with contextlib.suppress(OSError, BrokenPipeError, *_CONNECTION_GONE):
            self._process.stdin.write_eof()

    async def wait(self) -> int:
        try:
            # Not process.wait(): that reads stdout/stderr itself and would take data from our readers.
            await self._stderr_task
            await self._process.wait_closed()
        except asyncio.CancelledError:
            self.kill()
            raise
        except _CONNECTION_GONE as e:
            raise _lost(self._label, self.argv, e) from None
        code = self._process.returncode
        if code is None:
            # Neither exit-status nor exit-signal arrived: the connection ended under the command.
            raise _lost(self._label, self.argv)
        return code

    def kill(self) -> None:
        if self._closed.done():
            return
        exited = self._process.returncode is not None
        # OpenSSH (>= 7.9) turns a signal request into killpg() on the command, but refuses it for sessions
        # without privilege separation, which includes every root login. So also kill the process group
        # from a second channel, unless the exit status already arrived (the PID may be reused then).
        with contextlib.suppress(OSError, *_CONNECTION_GONE):
            self._process.send_signal("KILL")
        if not exited and self.remote_pid is not None:
            self._kill_group(self.remote_pid)
        # Closing the channel gives a command that is still alive EOF on stdin and SIGPIPE on stdout.
        self._process.close()

    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace")

    @property
    def stderr_bytes(self) -> bytes:
        return bytes(self._stderr)


class SshRunner(Runner):
    """Runs argv lists on one remote host through a pooled SSH connection."""

    def __init__(self, params: SshParams, pool: SshConnectionPool | None = None):
        self.params = params
        self.name = params.label
        self._pool = pool or default_pool()

    async def _open(self, argv: tuple[str, ...], stdin: bool, stdout: bool) -> SshProcess:
        command = remote_command(argv, sudo=self.params.sudo)
        entry = await self._pool.acquire(self.params)
        try:
            process = await self._create(entry, command, stdin, stdout)
        except _CONNECTION_GONE as e:
            if entry.acquired == 1:
                raise _lost(self.name, argv, e) from None
            # A reused connection can have died since its last use (server restarted); one try on a
            # fresh connection is safe because the command never started.
            entry = await self._pool.acquire(self.params, fresh=True)
            try:
                process = await self._create(entry, command, stdin, stdout)
            except _CONNECTION_GONE as e:
                raise _lost(self.name, argv, e) from None
        closed: asyncio.Future[None] = asyncio.ensure_future(self._release_when_closed(process, entry))
        pid_read = asyncio.ensure_future(self._read_pid(process))
        try:
            remote_pid, stderr = await asyncio.shield(pid_read)
        except asyncio.CancelledError:
            # The command may be running already (its PID line still in flight): kill it once it is known.
            self._pool.track_kill(self._kill_when_started(process, pid_read))
            raise
        except BaseException:
            process.close()
            raise
        return SshProcess(self.name, argv, entry.conn, process, closed, remote_pid, stderr, self._start_group_kill)

    @staticmethod
    async def _read_pid(process: asyncssh.SSHClientProcess[bytes]) -> tuple[int | None, bytes]:
        """The PID from the line `remote_command` makes the shell print first, or None and what came instead."""
        try:
            line = await process.stderr.readline()
        except _CONNECTION_GONE:
            return None, b""
        if line.startswith(PID_MARKER.encode()) and line[len(PID_MARKER):].strip().isdigit():
            return int(line[len(PID_MARKER):]), b""
        # A login shell that could not run the prefix: its complaint is the command's stderr.
        return None, line

    def _start_group_kill(self, pid: int) -> None:
        self._pool.track_kill(self._kill_group(pid))

    async def _kill_when_started(self, process: asyncssh.SSHClientProcess[bytes],
                                 pid_read: asyncio.Future[tuple[int | None, bytes]]) -> None:
        try:
            remote_pid, _ = await pid_read
            if remote_pid is not None and process.returncode is None:
                await self._kill_group(remote_pid)
        finally:
            process.close()

    async def _kill_group(self, pid: int) -> None:
        # Best effort: if the connection is gone, sshd has closed the command's pipes already.
        with contextlib.suppress(CallError):
            await self.run(["kill", "-KILL", "--", f"-{pid}"], check=False, timeout=30)

    async def _create(self, entry: _PooledConnection, command: str, stdin: bool, stdout: bool
                      ) -> asyncssh.SSHClientProcess[bytes]:
        """Open a session channel running `command`; the pool use taken by `acquire` is given back on failure."""
        try:
            return await entry.conn.create_process(
                command,
                encoding=None,
                stdin=asyncssh.PIPE if stdin else asyncssh.DEVNULL,
                stdout=asyncssh.PIPE if stdout else asyncssh.DEVNULL,
                stderr=asyncssh.PIPE,
            )
        except BaseException:
            self._pool.release(entry)
            raise

    async def _release_when_closed(self, process: asyncssh.SSHClientProcess[bytes],
                                   entry: _PooledConnection) -> None:
        try:
            await process.wait_closed()
        finally:
            self._pool.release(entry)

    async def start(self, argv: Sequence[str], *, stdin: bool = False, stdout: bool = False) -> Process:
        return await self._open(tuple(argv), stdin, stdout)

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        argv = tuple(argv)
        proc = await self._open(argv, input is not None, True)
        out = bytearray()

        async def feed() -> None:
            if input is not None:
                # A command may exit without reading its input; like subprocess.communicate, that's no error.
                with contextlib.suppress(BrokenPipeError):
                    await proc.write(input)
                await proc.close_stdin()

        async def collect() -> None:
            while chunk := await proc.read(65536):
                out.extend(chunk)

        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(feed(), collect())
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            raise CallError(f"[{self.name}] {' '.join(argv)}: timed out after {timeout}s", errno.ETIMEDOUT) from None
        except BaseException:
            proc.kill()
            raise
        if check and code != 0:
            raise CommandFailed(self.name, argv, code, proc.stderr_text())
        return CommandResult(argv, code, bytes(out), proc.stderr_bytes)

    async def close(self) -> None:
        """Close this credential's connection now unless other commands still use it."""
        self._pool.close_idle(self.params)


_default_pool: SshConnectionPool | None = None


def default_pool() -> SshConnectionPool:
    """The process-wide pool every runner uses unless given another."""
    global _default_pool
    if _default_pool is None:
        _default_pool = SshConnectionPool()
    return _default_pool


def runner_for_credentials(attributes: Mapping[str, Any], *, sudo: bool | None = None,
                           pool: SshConnectionPool | None = None) -> SshRunner:
    """A runner for SSH_CREDENTIALS attributes (`private_key` already resolved to the key pair's private key text).

    `sudo` (a replication task setting) prefixes zfs/zpool with `sudo -n`; it defaults to `attributes["sudo"]`.
    """
    return SshRunner(SshParams.from_credentials(attributes, sudo=sudo), pool)


# -- host key scanning --------------------------------------------------------------------------------------

# One handshake per host key family, the way ssh-keyscan asks for each key type separately.
_SCAN_ALGORITHMS = (
    "rsa-sha2-512",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-ed25519",
)


async def scan_host_keys(host: str, port: int = 22, timeout: float = 10) -> str:
    """Every host key the server offers, one `"<type> <base64>"` per line (what `remote_ssh_host_key_scan` returns).

    Raises CallError ETIMEDOUT ("SSH timeout") or ECONNREFUSED/other errnos ("ssh-keyscan failed: ..."), EINVAL
    for a host that is no host name or IP literal.
    """
    check_host(host)
    others = [a.decode() for a in get_default_public_key_algs()]

    async def one(alg: str) -> asyncssh.SSHKey | None:
        # The wanted type first, then everything else: a server without it presents another key (deduplicated
        # below) instead of hanging up on an offer it cannot satisfy.
        algs = [alg, *(a for a in others if a != alg)]
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(host, port, server_host_key_algs=algs, config=[]), timeout)

    results = await asyncio.gather(*(one(alg) for alg in _SCAN_ALGORITHMS), return_exceptions=True)
    lines: list[str] = []
    for result in results:
        if isinstance(result, TimeoutError):
            raise CallError("SSH timeout", errno.ETIMEDOUT)
        if isinstance(result, ConnectionRefusedError):
            raise CallError(f"ssh-keyscan failed: connection to {host}:{port} refused", errno.ECONNREFUSED)
        if isinstance(result, OSError):
            raise CallError(f"ssh-keyscan failed: {result.strerror or result}", result.errno or errno.EFAULT)
        if isinstance(result, asyncssh.Error):
            raise CallError(f"ssh-keyscan failed: {result.reason}", errno.EFAULT)
        if isinstance(result, BaseException):
            raise result
        if result is not None:
            line = " ".join(result.export_public_key("openssh").decode().split()[:2])
            if line not in lines:
                lines.append(line)
    if not lines:
        raise CallError(f"ssh-keyscan failed: {host}:{port} offered no host key", errno.EPROTO)
    return "\n".join(lines) + "\n"
