"""One way to run a command, wherever it runs: the interface every runner implements, and the local one.

Engine and ZFS code receive a `Runner` and never know whether the host is this machine or the far end of
an SSH connection. Commands are argv lists, never shell text. Cancelling the awaiting task kills the
command (and, locally, its whole process group), which is how job abort reaches child processes.
"""
from __future__ import annotations

import asyncio
import errno
import os
import shlex
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from middlewared_plugin.errors import CallError


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


class CommandFailed(CallError):
    """A command exited non-zero; the message names the command and its stderr."""

    def __init__(self, host: str, argv: Sequence[str], returncode: int, stderr: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr or f"exit status {returncode}"
        super().__init__(f"[{host}] {' '.join(argv)}: {detail}", errno.EFAULT)


class Process(ABC):
    """A started command with streaming pipes (for `zfs send | zfs recv` pipelines)."""

    argv: tuple[str, ...]

    @abstractmethod
    async def read(self, n: int) -> bytes:
        """Up to n bytes of stdout; b"" at end of stream."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Write to stdin and wait until the pipe accepted it."""

    @abstractmethod
    async def close_stdin(self) -> None: ...

    @abstractmethod
    async def wait(self) -> int:
        """Wait for exit; returns the exit status."""

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def stderr_text(self) -> str:
        """What the command wrote to stderr so far (collected in the background)."""


class Runner(ABC):
    """Runs argv lists on one host."""

    #: A short label for logs and error messages: "local" or "user@host:port".
    name: str

    @abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run to completion and collect the output; raise CommandFailed on non-zero exit if `check`."""

    @abstractmethod
    async def start(self, argv: Sequence[str], *, stdin: bool = False, stdout: bool = False) -> Process:
        """Start a command whose stdin and/or stdout are streamed by the caller."""

    async def close(self) -> None:  # noqa: B027 - runners without resources need nothing here
        """Release connections held by this runner."""


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close our ends of a killed process's stdin and stdout pipes. Killing does not always end them:
    zfs-fuse's daemon holds the far ends of a `zfs send`/`zfs recv` pipe itself, and asyncio's wait() only
    returns once every pipe is closed, so without this a killed receive would never be reaped (and the
    daemon would block on the pipe, keeping its pool busy)."""
    transport = proc._transport  # asyncio keeps the pipe transports only there
    for fd in (0, 1):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()


def _stream(spec: bool | int) -> int:
    """What the child gets for stdin/stdout: our pipe (True), /dev/null (False) or the caller's fd (an int)."""
    if isinstance(spec, bool):
        return asyncio.subprocess.PIPE if spec else asyncio.subprocess.DEVNULL
    if spec < 0:
        raise ValueError(f"not a file descriptor: {spec}")
    return spec


class LocalProcess(Process):
    def __init__(self, argv: tuple[str, ...], proc: asyncio.subprocess.Process):
        self.argv = argv
        self._proc = proc
        self._stderr = bytearray()
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def _collect_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(65536):
            self._stderr += chunk

    async def read(self, n: int) -> bytes:
        assert self._proc.stdout is not None
        return await self._proc.stdout.read(n)

    async def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            await self._proc.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def wait(self) -> int:
        try:
            code = await self._proc.wait()
            await self._stderr_task
            return code
        except asyncio.CancelledError:
            self.kill()
            raise

    def kill(self) -> None:
        _kill_group(self._proc)
        _close_pipes(self._proc)

    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace")

    @property
    def pid(self) -> int:
        return self._proc.pid


class LocalRunner(Runner):
    """Runs commands on this machine, each in its own process group so abort kills its children too."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.name = "local"
        self._env = {**os.environ, "LC_ALL": "C", **(env or {})}

    async def _spawn(self, argv: tuple[str, ...], stdin: int | None, stdout: int) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CallError(f"[{self.name}] command not found: {argv[0]}", errno.ENOENT) from None

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        argv = tuple(argv)
        proc = await self._spawn(
            argv, asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except TimeoutError:
            _kill_group(proc)
            _close_pipes(proc)
            await proc.wait()
            raise CallError(f"[{self.name}] {' '.join(argv)}: timed out after {timeout}s", errno.ETIMEDOUT) from None
        except BaseException:
            _kill_group(proc)
            _close_pipes(proc)
            raise
        result = CommandResult(argv, proc.returncode or 0, out, err)
        if check and result.returncode != 0:
            raise CommandFailed(self.name, argv, result.returncode, err.decode(errors="replace"))
        return result

    async def start(self, argv: Sequence[str], *, stdin: bool | int = False, stdout: bool | int = False) -> Process:
        """As `Runner.start`; locally `stdin`/`stdout` may also be a file descriptor (an int) that the command
        gets instead of a pipe of ours, so two commands can be joined by a pipe the caller made (see
        `transports.local.run_pipeline`). The caller keeps its copy of the fd (close it once started); the
        returned process then cannot be written to or read from on that side."""
        argv = tuple(argv)
        proc = await self._spawn(argv, _stream(stdin), _stream(stdout))
        return LocalProcess(argv, proc)


class LoggingRunner(Runner):
    """Logs each argv (shell-quoted, for the task log) before running it; otherwise the wrapped runner."""

    def __init__(self, runner: Runner, log: Callable[[str], None]):
        self.name = runner.name
        self._runner = runner
        self._log = log

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
                  timeout: float | None = None) -> CommandResult:
        self._log(f"[{self.name}] {shlex.join(argv)}")
        return await self._runner.run(argv, input=input, check=check, timeout=timeout)

    async def start(self, argv: Sequence[str], *, stdin: bool = False, stdout: bool = False) -> Process:
        self._log(f"[{self.name}] {shlex.join(argv)}")
        return await self._runner.start(argv, stdin=stdin, stdout=stdout)
