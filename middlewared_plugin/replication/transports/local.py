"""LOCAL: both ends on this host, the stream copied through our own process so every byte is counted.

`copy_between` is the pipe every process-to-process transport shares (LOCAL, and SSH whose ends are a local
process and a remote one, or a local process and a local `ssh` client): it reads the sender's stdout in
large chunks, writes them to the receiver's stdin, counts them, watches for a stall, and turns the two exit
statuses into pipefail semantics.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import re
from collections.abc import Callable, Sequence

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import Process, Runner
from middlewared_plugin.remote.ssh import PID_MARKER
from middlewared_plugin.replication.transports.base import (
    CHUNK_SIZE,
    ByteCounter,
    PipeFailed,
    PipeResult,
    Transport,
)

#: (stage, exit status, stderr) -> whether retrying may help.
Classifier = Callable[[str, int, str], bool]

# What a stage prints when the stream, not ZFS, failed: retrying can help.
_TRANSIENT = re.compile(
    r"connection (reset|closed|lost|timed out|refused)|broken pipe|incomplete stream|signal received|"
    r"client_loop|kex_exchange_identification|ssh_exchange_identification",
    re.IGNORECASE,
)
# Grace for the stages to exit once killed, so their stderr is complete and nothing is left behind.
_REAP_TIMEOUT = 10.0


def classify(stage: str, code: int, stderr: str) -> bool:
    """The default: transient when the stage's complaint is about the stream rather than about ZFS."""
    return _TRANSIENT.search(stderr) is not None


def _clean(stderr: str) -> str:
    # SSH runners report the remote PID as the first stderr line; it is noise in an error message.
    return "\n".join(ln for ln in stderr.strip().splitlines() if not ln.startswith(PID_MARKER)).strip()


async def _reap(process: Process) -> int | None:
    """Exit status of a stage, or None when it could not be learnt (its connection is gone)."""
    try:
        return await asyncio.wait_for(process.wait(), _REAP_TIMEOUT)
    except (CallError, TimeoutError):
        return None


async def _release(send: Process, recv: Process) -> None:
    """Let go of both pipes after a kill. Killing a stage does not always end its stream: zfs-fuse's daemon
    holds the pipe ends itself and would block forever on a pipe we keep open (its pool then stays busy).
    So close the receiver's stdin and read the sender's stdout to EOF, within a bounded time."""
    with contextlib.suppress(Exception):
        await recv.close_stdin()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_REAP_TIMEOUT):
            while await send.read(CHUNK_SIZE):
                pass


async def copy_between(
    send: Process,
    recv: Process,
    *,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
    transient: Classifier = classify,
) -> PipeResult:
    """Copy `send`'s stdout into `recv`'s stdin until EOF; both are killed on failure, stall or cancel."""
    loop = asyncio.get_running_loop()
    total = 0
    last_activity = loop.time()
    receiver_gone = False
    lost: CallError | None = None

    def kill() -> None:
        send.kill()
        recv.kill()

    async def copy() -> None:
        nonlocal total, last_activity, receiver_gone, lost
        try:
            while chunk := await send.read(CHUNK_SIZE):
                last_activity = loop.time()
                await recv.write(chunk)
                last_activity = loop.time()
                total += len(chunk)
                on_bytes(len(chunk))
            await recv.close_stdin()
        except (BrokenPipeError, ConnectionResetError):
            receiver_gone = True  # the receiver exited early: its status and stderr tell why
            send.kill()
        except CallError as e:  # a remote stage's connection dropped
            lost = e
            kill()

    async def watchdog(timeout: float) -> None:
        while True:
            idle = loop.time() - last_activity
            if idle >= timeout:
                kill()
                return
            await asyncio.sleep(min(timeout - idle, 1.0) + 0.01)

    copier = asyncio.ensure_future(copy())
    guard = asyncio.ensure_future(watchdog(stall_timeout)) if stall_timeout else None
    try:
        waiting = {copier} | ({guard} if guard else set())
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stalled = guard is not None and guard in done
        if stalled:
            copier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await copier
        if stalled or receiver_gone or lost is not None:
            await _release(send, recv)
        send_code, recv_code = await _reap(send), await _reap(recv)
    except BaseException:
        kill()
        copier.cancel()
        # Release and reap both so the far ends see EOF now and a next run finds the target settled.
        with contextlib.suppress(BaseException):
            await copier
            await _release(send, recv)
            await asyncio.gather(_reap(send), _reap(recv))
        raise
    finally:
        if guard is not None:
            guard.cancel()

    send_err, recv_err = _clean(send.stderr_text()), _clean(recv.stderr_text())
    if stalled:
        raise PipeFailed("transport", f"no data moved for {stall_timeout:g}s: the transfer stalled and was "
                                      f"stopped", transient=True)
    if lost is not None:
        raise PipeFailed("transport", lost.errmsg, transient=True)
    if send_code == 0 and recv_code == 0:
        return PipeResult(total)
    if send_code is None or recv_code is None:
        raise PipeFailed("transport", "the connection to a stage was lost", transient=True)
    # The stage that failed first is the cause: the receiver when it went away mid-stream, else the sender.
    if recv_code != 0 and (receiver_gone or send_code == 0):
        stage, code, err, other = "receive", recv_code, recv_err, send_err
        argv = recv.argv
    else:
        stage, code, err, other = "send", send_code, send_err, recv_err
        argv = send.argv
    message = f"{stage} ({argv[0]} exited with status {code}): {err or 'no error output'}"
    if other:
        message += f"; the other stage said: {other}"
    raise PipeFailed(stage, message, transient=transient(stage, code, err))


class LocalTransport(Transport):
    """Source and target on this host; one runner for both."""

    name = "LOCAL"

    def __init__(self, runner: Runner):
        self.source = runner
        self.target = runner

    async def pipe(
        self,
        send_argv: Sequence[str],
        recv_argv: Sequence[str],
        *,
        on_bytes: ByteCounter,
        stall_timeout: float | None = None,
    ) -> PipeResult:
        return await start_and_copy(self.source, send_argv, self.target, recv_argv,
                                    on_bytes=on_bytes, stall_timeout=stall_timeout)


async def start_and_copy(
    source: Runner,
    send_argv: Sequence[str],
    target: Runner,
    recv_argv: Sequence[str],
    *,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
) -> PipeResult:
    """Start the receiver first (so the sender never writes into nothing), then the sender, then copy."""
    try:
        recv = await target.start(recv_argv, stdin=True)
    except CallError as e:
        raise PipeFailed("receive", f"could not start the receiver: {e.errmsg}",
                         transient=e.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT)) from e
    try:
        send = await source.start(send_argv, stdout=True)
    except BaseException as e:
        recv.kill()
        with contextlib.suppress(BaseException):
            await _reap(recv)
        if isinstance(e, CallError):
            raise PipeFailed("send", f"could not start the sender: {e.errmsg}",
                             transient=e.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT)) from e
        raise
    return await copy_between(send, recv, on_bytes=on_bytes, stall_timeout=stall_timeout)
