"""SSH: one end on this host, the other on an SSH peer; PUSH sends from here, PULL receives here.

Control commands (listings, destroys, properties) go through the keychain's pooled asyncssh runner. The
data stream has two implementations behind `data_path`, both counting bytes in our own process:

- `OPENSSH` (default): the system `ssh` client runs the remote half, with the credential's key and only its
  pinned host key (written to 0600 files in a private temporary directory that is removed afterwards), and
  a fast AEAD cipher preferred. It measured faster than asyncssh (docs/PERFORMANCE.md), since OpenSSH does
  the cipher work in C outside our event loop, and both of its stages are local processes, so the stream
  is spliced between their pipes (`transports.local.run_pipeline`) without passing through Python.
- `ASYNCSSH`: a channel on the pooled connection; no `ssh` binary needed.

Either way the remote command is an argv quoted word by word (`remote_command`), so dataset names with
spaces or shell metacharacters reach `zfs` unchanged.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from pathlib import Path

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import Process, Runner
from middlewared_plugin.remote.ssh import PID_MARKER, SshParams, SshRunner, remote_command
from middlewared_plugin.remote.ssh_keys import parse_host_keys
from middlewared_plugin.replication.transports.base import ByteCounter, PipeFailed, PipeResult, Transport
from middlewared_plugin.replication.transports.local import can_splice, classify, run_pipeline, start_and_copy


class DataPath(StrEnum):
    OPENSSH = "OPENSSH"
    ASYNCSSH = "ASYNCSSH"


#: Ciphers offered to the server, fastest first on hardware with AES instructions.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"
# The name the pinned host keys are filed under in our known_hosts file, whatever the address looks like.
_HOST_ALIAS = "replication-peer"
# ssh exits 255 when ssh itself failed (connection, authentication, host key), never for the remote command.
_SSH_FAILED = 255


def openssh_argv(params: SshParams, key_file: Path, known_hosts: Path, *, ssh: str = "ssh") -> list[str]:
    """The `ssh` command line (without the remote command): only our key, only the pinned host key."""
    return [
        ssh, "-F", "/dev/null", "-T", "-x",
        "-i", str(key_file),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={_HOST_ALIAS}",
        "-o", "UpdateHostKeys=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-o", f"ConnectTimeout={max(1, int(params.connect_timeout))}",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
        "-o", "Compression=no", "-o", "LogLevel=ERROR",
        "-c", CIPHERS,
        "-p", str(params.port), "-l", params.username,
        "--", params.host,
    ]


@contextlib.asynccontextmanager
async def openssh_files(params: SshParams) -> AsyncIterator[tuple[Path, Path]]:
    """(key file, known_hosts file) in a fresh 0700 directory, both 0600, removed on exit."""
    keys = parse_host_keys(params.remote_host_key)
    if not keys:
        raise CallError(f"No valid host key is stored for {params.host}:{params.port}")

    def write() -> Path:
        directory = Path(tempfile.mkdtemp(prefix="replication-ssh-"))
        key = directory / "key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(params.private_key.strip() + "\n")
        known = directory / "known_hosts"
        fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            for k in keys:
                key_type, blob = k.export_public_key("openssh").decode().split()[:2]
                f.write(f"{_HOST_ALIAS} {key_type} {blob}\n")
        return directory

    directory = await asyncio.to_thread(write)
    try:
        yield directory / "key", directory / "known_hosts"
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


class _OpenSshProcess(Process):
    """A local `ssh` client running one remote command; killing it also kills the remote process group
    (through the control connection), as closing a channel alone may leave a blocked `zfs` behind."""

    def __init__(self, inner: Process, argv: Sequence[str], control: SshRunner, tasks: set[asyncio.Future[None]]):
        self.argv = tuple(argv)
        self._inner = inner
        self._control = control
        self._tasks = tasks
        self._exited = False

    async def read(self, n: int) -> bytes:
        return await self._inner.read(n)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close_stdin(self) -> None:
        await self._inner.close_stdin()

    async def wait(self) -> int:
        code = await self._inner.wait()
        self._exited = True
        return code

    def _remote_pid(self) -> int | None:
        first = self._inner.stderr_text().split("\n", 1)[0]
        value = first[len(PID_MARKER):].strip() if first.startswith(PID_MARKER) else ""
        return int(value) if value.isdigit() else None

    def kill(self) -> None:
        pid = None if self._exited else self._remote_pid()
        self._inner.kill()
        if pid is not None:
            task = asyncio.ensure_future(self._kill_remote(pid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _kill_remote(self, pid: int) -> None:
        with contextlib.suppress(CallError):  # the connection may be what failed
            await self._control.run(["kill", "-KILL", "--", f"-{pid}"], check=False, timeout=30)

    def stderr_text(self) -> str:
        return self._inner.stderr_text()


class SshTransport(Transport):
    """PUSH: local `zfs send` -> remote `zfs recv`; PULL: remote `zfs send` -> local `zfs recv`."""

    name = "SSH"

    def __init__(self, local: Runner, remote: SshRunner, direction: str, *,
                 data_path: DataPath | str = DataPath.OPENSSH, ssh_binary: str = "ssh"):
        if direction not in ("PUSH", "PULL"):
            raise ValueError(f"direction must be PUSH or PULL, not {direction!r}")
        self.local = local
        self.remote = remote
        self.push = direction == "PUSH"
        self.source, self.target = (local, remote) if self.push else (remote, local)
        self.data_path = DataPath(data_path)
        self.ssh_binary = ssh_binary
        self._kills: set[asyncio.Future[None]] = set()

    async def pipe(
        self,
        send_argv: Sequence[str],
        recv_argv: Sequence[str],
        *,
        on_bytes: ByteCounter,
        stall_timeout: float | None = None,
    ) -> PipeResult:
        if self.data_path is DataPath.ASYNCSSH:
            return await start_and_copy(self.source, send_argv, self.target, recv_argv,
                                        on_bytes=on_bytes, stall_timeout=stall_timeout)
        async with openssh_files(self.remote.params) as (key, known_hosts):
            ssh = openssh_argv(self.remote.params, key, known_hosts, ssh=self.ssh_binary)
            remote_argv = recv_argv if self.push else send_argv
            command = [*ssh, remote_command(remote_argv, sudo=self.remote.params.sudo)]
            remote_stage = "receive" if self.push else "send"

            def transient(stage: str, code: int, stderr: str) -> bool:
                return (stage == remote_stage and code == _SSH_FAILED) or classify(stage, code, stderr)

            local_argv = send_argv if self.push else recv_argv

            async def start_remote(data: bool | int) -> Process:
                try:
                    started = await self.local.start(command, stdin=data if self.push else False,
                                                     stdout=False if self.push else data)
                except CallError as e:
                    raise PipeFailed("transport", f"could not start ssh: {e.errmsg}", transient=False) from e
                return _OpenSshProcess(started, remote_argv, self.remote, self._kills)

            async def start_local(data: bool | int) -> Process:
                return await self.local.start(local_argv, stdin=False if self.push else data,
                                              stdout=data if self.push else False)

            start_send, start_recv = (start_local, start_remote) if self.push else (start_remote, start_local)
            # Both stages are local processes (`ssh` is one), so the stream can be spliced between them.
            return await run_pipeline(start_send, start_recv, splice=can_splice(self.local), on_bytes=on_bytes,
                                      stall_timeout=stall_timeout, transient=transient)

    async def close(self) -> None:
        if self._kills:
            await asyncio.gather(*self._kills, return_exceptions=True)
