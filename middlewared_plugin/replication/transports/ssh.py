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

The task's `compression` puts a compressor behind `zfs send` and the matching decompressor in front of
`zfs recv` (byte counts are then of the compressed stream, which is what crosses our pipe). On this host the
two programs are local processes joined by a pipe (`_Chain`); on the peer they are one POSIX `sh` pipeline
(`pipefail_script`) whose exit status is the failing stage's, as plain `sh` would report only the last one.
The task's `speed_limit` paces our copy (`transports.local.Throttle`).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import shlex
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner, Process, Runner
from middlewared_plugin.remote.ssh import PID_MARKER, SUDO_COMMANDS, SshParams, SshRunner, remote_command
from middlewared_plugin.remote.ssh_keys import parse_host_keys
from middlewared_plugin.replication.transports.base import ByteCounter, PipeFailed, PipeResult, Transport
from middlewared_plugin.replication.transports.local import can_splice, classify, could_not_start, run_pipeline


class DataPath(StrEnum):
    OPENSSH = "OPENSSH"
    ASYNCSSH = "ASYNCSSH"


@dataclass(frozen=True)
class Compressor:
    """A task's `compression`: the program each host needs and its two command lines (stdin to stdout)."""

    name: str
    program: str
    compress: tuple[str, ...]
    decompress: tuple[str, ...]


COMPRESSORS = {c.name: c for c in (
    Compressor("LZ4", "lz4", ("lz4", "-c"), ("lz4", "-dc")),
    Compressor("PIGZ", "pigz", ("pigz", "-c"), ("pigz", "-dc")),
    Compressor("PLZIP", "plzip", ("plzip", "-c"), ("plzip", "-dc")),
)}


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


def pipefail_script(first: Sequence[str], second: Sequence[str]) -> str:
    """POSIX `sh` text running `first | second` (each argv quoted word by word) that exits with the status of
    `second` if it failed, else that of `first`, like bash's `set -o pipefail` (not in POSIX sh, whose pipeline
    status is the last stage's alone: a failed `zfs send` before a compressor would look like success). Each
    stage reports its status on fd 3 into a command substitution; fd 4 is the pipeline's real stdout. Both are
    closed for the stages themselves, so nothing they start (zfs-fuse's daemon) holds the substitution open."""
    a, b = shlex.join(first), shlex.join(second)
    return ("exec 4>&1; "
            f"s=$( {{ {{ {a} 3>&- 4>&-; echo $? >&3; }} | {b} >&4 3>&- 4>&-; echo $? >&3; }} 3>&1 ); "
            'set -- $s; [ "$2" = 0 ] || exit "${2:-1}"; exit "${1:-1}"')


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


class _Renamed(Process):
    """A process reported under the argv of the command that matters (`zfs`, not the `sh` or `ssh` running it)."""

    def __init__(self, inner: Process, argv: Sequence[str]):
        self.argv = tuple(argv)
        self._inner = inner

    async def read(self, n: int) -> bytes:
        return await self._inner.read(n)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close_stdin(self) -> None:
        await self._inner.close_stdin()

    async def wait(self) -> int:
        return await self._inner.wait()

    def kill(self) -> None:
        self._inner.kill()

    def stderr_text(self) -> str:
        return self._inner.stderr_text()


class _Chain(Process):
    """Two local processes joined by a pipe, run as one stage (`zfs send | lz4 -c`, `lz4 -dc | zfs recv`):
    written through the head, read through the tail, killed together. Pipefail: the status is the last
    failing process's, and `argv` names that process once known (`main`, the zfs one, until then)."""

    def __init__(self, head: Process, tail: Process, main: Process):
        self.argv = main.argv
        self._head = head
        self._tail = tail

    async def read(self, n: int) -> bytes:
        return await self._tail.read(n)

    async def write(self, data: bytes) -> None:
        await self._head.write(data)

    async def close_stdin(self) -> None:
        await self._head.close_stdin()

    async def wait(self) -> int:
        codes = await asyncio.gather(self._head.wait(), self._tail.wait())
        for process, code in reversed(list(zip((self._head, self._tail), codes, strict=True))):
            if code != 0:
                self.argv = process.argv
                return code
        return 0

    def kill(self) -> None:
        self._head.kill()
        self._tail.kill()

    def stderr_text(self) -> str:
        return "\n".join(t for t in (self._head.stderr_text(), self._tail.stderr_text()) if t.strip())


def _signal_name(number: int) -> str:
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


class _OpenSshProcess(_Renamed):
    """A local `ssh` client running one remote command; killing it also kills the remote process group
    (through the control connection), as closing a channel alone may leave a blocked `zfs` behind."""

    def __init__(self, inner: Process, argv: Sequence[str], control: SshRunner, tasks: set[asyncio.Future[None]]):
        super().__init__(inner, argv)
        self._control = control
        self._tasks = tasks
        self._exited = False
        self._killed = False
        #: Why the remote command's status is unknown: our `ssh` client was killed by someone else.
        self._lost: str | None = None

    async def wait(self) -> int:
        code = await self._inner.wait()
        if code < 0 and not self._killed and self._lost is None:
            # A signal we did not send killed our `ssh` client (a remote command's own signal makes ssh exit
            # 255, never negative): the connection is what was lost, and the remote command's status with it,
            # as when a connection drops under an asyncssh channel; so it is reported, and retried, as that.
            # The remote command may outlive its connection: end it through the control connection.
            self._lost = f"the SSH connection was lost: the ssh client was killed by signal {_signal_name(-code)}"
            self._kill_remote_group()
        self._exited = True
        if self._lost is not None:
            raise CallError(self._lost, errno.ECONNRESET)
        return code

    def _remote_pid(self) -> int | None:
        first = self._inner.stderr_text().split("\n", 1)[0]
        value = first[len(PID_MARKER):].strip() if first.startswith(PID_MARKER) else ""
        return int(value) if value.isdigit() else None

    def kill(self) -> None:
        self._killed = True
        self._kill_remote_group()
        self._inner.kill()

    def _kill_remote_group(self) -> None:
        pid = None if self._exited else self._remote_pid()
        if pid is not None:
            task = asyncio.ensure_future(self._kill_remote(pid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _kill_remote(self, pid: int) -> None:
        with contextlib.suppress(CallError):  # the connection may be what failed
            await self._control.run(["kill", "-KILL", "--", f"-{pid}"], check=False, timeout=30)


class SshTransport(Transport):
    """PUSH: local `zfs send` -> remote `zfs recv`; PULL: remote `zfs send` -> local `zfs recv`."""

    name = "SSH"

    def __init__(self, local: Runner, remote: SshRunner, direction: str, *,
                 data_path: DataPath | str = DataPath.OPENSSH, ssh_binary: str = "ssh",
                 compression: str | None = None, speed_limit: int | None = None):
        """`compression`: a key of COMPRESSORS or None; `speed_limit`: bytes per second, or None."""
        if direction not in ("PUSH", "PULL"):
            raise ValueError(f"direction must be PUSH or PULL, not {direction!r}")
        if compression is not None and compression not in COMPRESSORS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSORS)}, not {compression!r}")
        if speed_limit is not None and speed_limit <= 0:
            raise ValueError(f"speed_limit must be positive, not {speed_limit}")
        self.local = local
        self.remote = remote
        self.push = direction == "PUSH"
        self.source, self.target = (local, remote) if self.push else (remote, local)
        self.data_path = DataPath(data_path)
        self.ssh_binary = ssh_binary
        self.compression = COMPRESSORS[compression] if compression else None
        self.speed_limit = speed_limit
        self._compressor_found = False
        self._kills: set[asyncio.Future[None]] = set()

    def describe(self, send_argv: Sequence[str], recv_argv: Sequence[str]) -> str:
        stages = [*self._stages(send_argv, "send"), *self._stages(recv_argv, "receive")]
        text = " | ".join(shlex.join(s) for s in stages)
        if self.speed_limit:
            text += f" (limited to {self.speed_limit} bytes/s)"
        return f"[{self.name}] {text}"

    def _stages(self, argv: Sequence[str], stage: str) -> list[tuple[str, ...]]:
        """The commands one side runs for its `zfs` argv: with compression, the compressor after a send and
        the decompressor before a receive."""
        if self.compression is None:
            return [tuple(argv)]
        if stage == "send":
            return [tuple(argv), self.compression.compress]
        return [self.compression.decompress, tuple(argv)]

    @staticmethod
    def _shell_argv(runner: Runner, stages: list[tuple[str, ...]]) -> list[str]:
        """The argv running `stages` on `runner` as one remote command: the stage itself, or `sh -c` with
        the pipeline (adding `sudo -n` to zfs inside it, as the runner would for a bare zfs argv)."""
        if len(stages) == 1:
            return list(stages[0])
        sudo = isinstance(runner, SshRunner) and runner.params.sudo
        words = [["sudo", "-n", *s] if sudo and posixpath.basename(s[0]) in SUDO_COMMANDS else list(s)
                 for s in stages]
        return ["sh", "-c", pipefail_script(*words)]

    async def _start_side(self, runner: Runner, argv: Sequence[str], stage: str, data: bool | int) -> Process:
        """Start one side's stage(s) on `runner`; `data` is the stream end (stdout for a send, stdin for a
        receive). Local stages are separate processes; a remote side is one shell pipeline."""
        stages = self._stages(argv, stage)
        receiving = stage == "receive"
        try:
            if len(stages) == 1 or not isinstance(runner, LocalRunner):
                started = await runner.start(self._shell_argv(runner, stages), stdin=data if receiving else False,
                                             stdout=False if receiving else data)
                return _Renamed(started, argv)
            return await self._start_chain(runner, stages, receiving, data)
        except CallError as e:
            raise could_not_start(stage, e) from e

    @staticmethod
    async def _start_chain(runner: LocalRunner, stages: list[tuple[str, ...]], receiving: bool,
                           data: bool | int) -> Process:
        first, second = stages
        r, w = os.pipe()
        try:
            head = await runner.start(first, stdin=data if receiving else False, stdout=w)
            try:
                tail = await runner.start(second, stdin=r, stdout=False if receiving else data)
            except BaseException:
                head.kill()
                raise
        finally:
            os.close(r)  # the processes hold their own ends: ours would hide one's exit from the other
            os.close(w)
        return _Chain(head, tail, tail if receiving else head)

    async def _require_compressor(self) -> None:
        """Both hosts need the compression program; say which lacks it rather than fail mid-stream."""
        if self.compression is None or self._compressor_found:
            return
        program = self.compression.program
        for runner in (self.local, self.remote):
            try:
                found = (await runner.run([program, "--version"], check=False, timeout=30)).returncode == 0
            except CallError as e:
                if e.errno != errno.ENOENT:
                    raise
                found = False
            if not found:
                raise CallError(f"{self.compression.name} stream compression needs {program!r} on {runner.name}, "
                                f"which does not have it installed", errno.ENOENT)
        self._compressor_found = True

    async def pipe(
        self,
        send_argv: Sequence[str],
        recv_argv: Sequence[str],
        *,
        on_bytes: ByteCounter,
        stall_timeout: float | None = None,
    ) -> PipeResult:
        await self._require_compressor()
        if self.data_path is DataPath.ASYNCSSH:
            async def start_send(data: bool | int) -> Process:
                return await self._start_side(self.source, send_argv, "send", data)

            async def start_recv(data: bool | int) -> Process:
                return await self._start_side(self.target, recv_argv, "receive", data)

            return await run_pipeline(start_send, start_recv, splice=can_splice(self.source, self.target),
                                      on_bytes=on_bytes, stall_timeout=stall_timeout, speed_limit=self.speed_limit)
        async with openssh_files(self.remote.params) as (key, known_hosts):
            ssh = openssh_argv(self.remote.params, key, known_hosts, ssh=self.ssh_binary)
            remote_argv = recv_argv if self.push else send_argv
            remote_stage = "receive" if self.push else "send"
            remote_shell = self._shell_argv(self.remote, self._stages(remote_argv, remote_stage))
            command = [*ssh, remote_command(remote_shell, sudo=self.remote.params.sudo)]

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
                return await self._start_side(self.local, local_argv, "send" if self.push else "receive", data)

            start_send, start_recv = (start_local, start_remote) if self.push else (start_remote, start_local)
            # Both stages are local processes (`ssh` is one), so the stream can be spliced between them.
            return await run_pipeline(start_send, start_recv, splice=can_splice(self.local), on_bytes=on_bytes,
                                      stall_timeout=stall_timeout, transient=transient, speed_limit=self.speed_limit)

    async def close(self) -> None:
        if self._kills:
            await asyncio.gather(*self._kills, return_exceptions=True)
