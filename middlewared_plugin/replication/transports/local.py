"""LOCAL: both ends on this host, the stream passing through our own process so every byte is counted.

`run_pipeline` joins a sender to a receiver for every process-to-process transport (LOCAL, and SSH whose
ends are a local process and a local `ssh` client, or a local and a remote process). Two ways to move the
stream, with the same pipefail semantics, stall detection and byte counting:

- `splice_between`, when both stages are processes on this host (and the OS has splice(2)): we create the
  two pipes ourselves, the stages get their ends as stdout and stdin, and a thread of ours moves the pages
  from one pipe into the other with splice(2) without the data ever entering Python; it counts what each
  call moved. This runs at the speed of a bare shell pipeline.
- `copy_between` otherwise (a stage on an asyncssh channel): read the sender's stdout in large chunks and
  write them to the receiver's stdin on the event loop.

Both take an optional `speed_limit` (bytes per second, a task's `speed_limit`): a `Throttle` paces the copy,
sleeping between chunks. Time spent throttled counts as activity, so a slow stream is never taken for a stall.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import re
import select
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner, Process, Runner
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
#: Starts one stage given what its data end is: True for a pipe of the runner's, or a file descriptor of ours.
StartStage = Callable[[bool | int], Awaitable[Process]]

# What a stage prints when the stream, not ZFS, failed: retrying can help.
_TRANSIENT = re.compile(
    r"connection (reset|closed|lost|timed out|refused)|broken pipe|incomplete stream|signal received|"
    r"client_loop|kex_exchange_identification|ssh_exchange_identification",
    re.IGNORECASE,
)
# Grace for the stages to exit once killed, so their stderr is complete and nothing is left behind.
_REAP_TIMEOUT = 10.0
# The spliced path reports bytes to the event loop at most this often (seconds): progress stays live
# without a callback per pipe buffer.
_REPORT_INTERVAL = 0.05
# After an abort, how long (seconds) the receiver may take to fail on the cut stream before it is killed.
_ABORT_GRACE = 5.0


class Throttle:
    """Paces a stream to at most `rate` bytes per second on average: a token bucket that holds at most one
    chunk (a tenth of a second's worth), so an idle spell does not buy a burst at full speed. Chunks are that
    small so no single wait is long (cancellation and the stall watchdog stay prompt)."""

    def __init__(self, rate: int):
        if rate <= 0:
            raise ValueError(f"speed limit must be positive, not {rate}")
        self.rate = rate
        #: The most bytes to move at once.
        self.chunk = max(1, min(CHUNK_SIZE, rate // 10))
        self._tokens = float(self.chunk)
        self._at = time.monotonic()

    def delay(self, n: int) -> float:
        """Record that `n` bytes just moved; the seconds to wait before moving more."""
        now = time.monotonic()
        self._tokens = min(float(self.chunk), self._tokens + (now - self._at) * self.rate) - n
        self._at = now
        return max(0.0, -self._tokens / self.rate)


def _throttle(speed_limit: int | None) -> Throttle | None:
    return Throttle(speed_limit) if speed_limit else None


def classify(stage: str, code: int, stderr: str) -> bool:
    """The default: transient when the stage's complaint is about the stream rather than about ZFS."""
    return _TRANSIENT.search(stderr) is not None


def can_splice(*runners: Runner) -> bool:
    """Whether a stream between processes of these runners can move by splice(2): all local, and Linux."""
    return hasattr(os, "splice") and all(isinstance(r, LocalRunner) for r in runners)


def _clean(stderr: str) -> str:
    # SSH runners report the remote PID as the first stderr line; it is noise in an error message.
    return "\n".join(ln for ln in stderr.strip().splitlines() if not ln.startswith(PID_MARKER)).strip()


async def _reap(process: Process, timeout: float | None = _REAP_TIMEOUT) -> int | str:
    """Exit status of a stage, or why it could not be learnt (its connection is gone, or it outlived
    `timeout`). After a complete stream there is no bound: a receiver commits what it got after the last
    byte, and on a slow pool that can take minutes."""
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except CallError as e:
        return e.errmsg
    except TimeoutError:
        return f"{process.argv[0]} did not exit within {timeout:g}s after the stream was cut"


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


def _verdict(
    send: Process,
    recv: Process,
    codes: tuple[int | str, int | str],
    total: int,
    *,
    stalled_after: float | None,
    lost: str | None,
    receiver_gone: bool,
    transient: Classifier,
) -> PipeResult:
    """Pipefail semantics: the result when both stages succeeded, else PipeFailed naming the stage at fault."""
    send_code, recv_code = codes
    send_err, recv_err = _clean(send.stderr_text()), _clean(recv.stderr_text())
    if stalled_after is not None:
        raise PipeFailed("transport", f"no data moved for {stalled_after:g}s: the transfer stalled and was "
                                      f"stopped", transient=True)
    if lost is not None:
        raise PipeFailed("transport", lost, transient=True)
    if send_code == 0 and recv_code == 0:
        return PipeResult(total)
    if isinstance(send_code, str) or isinstance(recv_code, str):
        # A stage whose status is unknown (its connection was lost) refused nothing that we know of: retry.
        unknown = [f"{stage}: {why}" for stage, why in (("send", send_code), ("receive", recv_code))
                   if isinstance(why, str)]
        raise PipeFailed("transport", "; ".join(unknown), transient=True)
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


async def copy_between(
    send: Process,
    recv: Process,
    *,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
    transient: Classifier = classify,
    speed_limit: int | None = None,
) -> PipeResult:
    """Copy `send`'s stdout into `recv`'s stdin until EOF; both are killed on failure, stall or cancel."""
    loop = asyncio.get_running_loop()
    throttle = _throttle(speed_limit)
    chunk_size = throttle.chunk if throttle else CHUNK_SIZE
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
            while chunk := await send.read(chunk_size):
                last_activity = loop.time()
                await recv.write(chunk)
                last_activity = loop.time()
                total += len(chunk)
                on_bytes(len(chunk))
                if throttle and (wait := throttle.delay(len(chunk))):
                    last_activity = loop.time() + wait  # waiting on purpose is not a stall
                    await asyncio.sleep(wait)
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
        complete = not (stalled or receiver_gone or lost is not None)
        if not complete:
            await _release(send, recv)
        wait_for = None if complete else _REAP_TIMEOUT
        codes = await _reap(send, wait_for), await _reap(recv, wait_for)
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
    return _verdict(send, recv, codes, total, stalled_after=stall_timeout if stalled else None,
                    lost=lost.errmsg if lost is not None else None, receiver_gone=receiver_gone,
                    transient=transient)


class _Splicer:
    """Moves a stream from one pipe (`source`, the read end) into another (`sink`, the write end) with
    splice(2), in a thread of its own so the event loop never waits on the data.

    The thread owns both fds and closes them when it ends, whatever ends it: at the sender's EOF that is
    what tells the receiver the stream is complete; after a kill it is what makes zfs-fuse's daemon (which
    holds the stages' pipe ends itself) see EOF or EPIPE and give up. `stop()` ends the thread from the event
    loop by closing the write end of a wake-up pipe the thread polls alongside the data pipes; the fds are
    only ever closed by their owner, so no fd number is reused under a thread still using it."""

    def __init__(self, source: int, sink: int, loop: asyncio.AbstractEventLoop, on_bytes: ByteCounter,
                 throttle: Throttle | None = None):
        self._source = source
        self._sink = sink
        self._loop = loop
        self._on_bytes = on_bytes
        self._wake_r, self._wake_w = os.pipe()
        self._stopped = False
        self._readable = select.poll()
        self._readable.register(source, select.POLLIN)
        self._readable.register(self._wake_r, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sink, select.POLLOUT)
        self._writable.register(self._wake_r, select.POLLIN)
        self._woken = select.poll()
        self._woken.register(self._wake_r, select.POLLIN)
        self._throttle = throttle
        self._reported_at = time.monotonic()
        #: Bytes moved (written by the thread only) and handed to on_bytes (by the event loop only).
        self.moved = 0
        self.reported = 0
        self.last_activity = time.monotonic()
        self.receiver_gone = False
        self.error: OSError | None = None
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        threading.Thread(target=self._run, name="splice", daemon=True).start()

    def _run(self) -> None:
        try:
            self._move()
        except BrokenPipeError:
            self.receiver_gone = True  # the receiver exited early: its status and stderr tell why
        except OSError as e:
            self.error = e
        finally:
            for fd in (self._source, self._sink, self._wake_r):
                os.close(fd)
            self._report()
            self.done.set_result(None)

    def _move(self) -> None:
        """Move until the sender's EOF or until stop()."""
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        chunk_size = self._throttle.chunk if self._throttle else CHUNK_SIZE
        while True:
            try:
                n = os.splice(self._source, self._sink, chunk_size, flags=flags)
            except BlockingIOError:
                # Either pipe may be the reason (nothing to read, no room to write): wait for both in turn.
                if not self._wait(self._readable, self._source) or not self._wait(self._writable, self._sink):
                    return
                continue
            if n == 0:
                return  # the sender's EOF
            self.moved += n
            now = self.last_activity = time.monotonic()
            if now - self._reported_at >= _REPORT_INTERVAL:
                self._reported_at = now
                self._report()
            if self._throttle and (wait := self._throttle.delay(n)):
                self.last_activity = now + wait  # waiting on purpose is not a stall
                if self._woken.poll(wait * 1000):
                    return  # stop() was called

    def _wait(self, poller: select.poll, fd: int) -> bool:
        """Until `fd` is ready (or hung up, which the next splice reports); False once stop() was called."""
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                return False
            if fd in ready:
                return True

    def _report(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        """Hand what moved since the last report to on_bytes (on the event loop)."""
        n = self.moved - self.reported
        if n:
            self.reported += n
            self._on_bytes(n)

    def stop(self) -> None:
        """Make the thread end (it then closes the data pipes); idempotent, from the event loop."""
        if not self._stopped:
            self._stopped = True
            os.close(self._wake_w)


async def splice_between(
    send: Process,
    recv: Process,
    source: int,
    sink: int,
    *,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
    transient: Classifier = classify,
    speed_limit: int | None = None,
) -> PipeResult:
    """Move the stream from `source` (the read end of the pipe `send` writes to) into `sink` (the write end
    of the pipe `recv` reads) until EOF, counting it. On a stall or cancel the sender is killed and the
    receiver's stream cut (it is killed too if it does not exit within a few seconds); when the receiver
    fails, the sender is killed. Takes ownership of both fds: they are closed when this returns."""
    loop = asyncio.get_running_loop()
    mover = _Splicer(source, sink, loop, on_bytes, _throttle(speed_limit))
    done = asyncio.wrap_future(mover.done)
    stalled = False

    def kill() -> None:
        send.kill()
        recv.kill()

    async def watchdog(timeout: float) -> None:
        while True:
            idle = time.monotonic() - mover.last_activity
            if idle >= timeout:
                return
            await asyncio.sleep(min(timeout - idle, 1.0) + 0.01)

    async def abort() -> None:
        # The receiver is not killed outright: cutting its stream makes it fail on its own, and a receive
        # that fails cleans up before its `zfs` exits (zfs-fuse discards a partial dataset only after it sees
        # the EOF, asynchronously to a killed `zfs`), so the next run finds a settled target.
        send.kill()
        mover.stop()
        await done
        try:
            await asyncio.wait_for(recv.wait(), _ABORT_GRACE)
        except (CallError, TimeoutError):
            recv.kill()

    guard = asyncio.ensure_future(watchdog(stall_timeout)) if stall_timeout else None
    try:
        await asyncio.wait({done} | ({guard} if guard else set()), return_when=asyncio.FIRST_COMPLETED)
        if not done.done():  # the watchdog fired: no byte moved for stall_timeout
            stalled = True
            await abort()
        elif mover.receiver_gone:
            send.kill()
        elif mover.error is not None:
            kill()
        wait_for = None if not (stalled or mover.receiver_gone or mover.error) else _REAP_TIMEOUT
        codes = await _reap(send, wait_for), await _reap(recv, wait_for)
    except BaseException:
        with contextlib.suppress(BaseException):
            await abort()
        kill()  # whatever interrupted the abort: nothing keeps running
        mover.stop()
        with contextlib.suppress(BaseException):
            await done
            await asyncio.gather(_reap(send), _reap(recv))
        raise
    finally:
        mover.stop()
        mover.flush()
        if guard is not None:
            guard.cancel()
    lost = f"the local pipe failed: {mover.error}" if mover.error is not None else None
    return _verdict(send, recv, codes, mover.moved, stalled_after=stall_timeout if stalled else None, lost=lost,
                    receiver_gone=mover.receiver_gone, transient=transient)


def _pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer where the system allows it (fewer wake-ups per MiB moved)."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size or the user's quota: keep the default
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK_SIZE)
    return r, w


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


async def run_pipeline(
    start_send: StartStage,
    start_recv: StartStage,
    *,
    splice: bool,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
    transient: Classifier = classify,
    speed_limit: int | None = None,
) -> PipeResult:
    """Start the receiver first (so the sender never writes into nothing), then the sender, then move the
    stream: with `splice` (both stages local processes, see `can_splice`) through two pipes of ours by
    `splice_between`, else through the runners' pipes by `copy_between`."""
    if not splice:
        recv = await start_recv(True)
        try:
            send = await start_send(True)
        except BaseException:
            recv.kill()
            with contextlib.suppress(BaseException):
                await _reap(recv)
            raise
        return await copy_between(send, recv, on_bytes=on_bytes, stall_timeout=stall_timeout, transient=transient,
                                  speed_limit=speed_limit)

    recv_r, recv_w = _pipe()
    send_r, send_w = _pipe()
    try:
        recv = await start_recv(recv_r)
    except BaseException:
        _close(recv_r, recv_w, send_r, send_w)
        raise
    os.close(recv_r)  # the receiver has its copy; ours would keep the pipe readable after it died
    try:
        send = await start_send(send_w)
    except BaseException:
        recv.kill()
        _close(recv_w, send_r, send_w)  # the receiver (or zfs-fuse's daemon for it) sees EOF
        with contextlib.suppress(BaseException):
            await _reap(recv)
        raise
    os.close(send_w)  # likewise: the sender's exit must be our EOF
    return await splice_between(send, recv, send_r, recv_w, on_bytes=on_bytes, stall_timeout=stall_timeout,
                                transient=transient, speed_limit=speed_limit)


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


def could_not_start(stage: str, error: CallError) -> PipeFailed:
    """The failure to report when a stage's command could not be started at all."""
    transient = error.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT)
    role = "receiver" if stage == "receive" else "sender"
    return PipeFailed(stage, f"could not start the {role}: {error.errmsg}", transient=transient)


async def start_and_copy(
    source: Runner,
    send_argv: Sequence[str],
    target: Runner,
    recv_argv: Sequence[str],
    *,
    on_bytes: ByteCounter,
    stall_timeout: float | None,
) -> PipeResult:
    """`send_argv` on `source` into `recv_argv` on `target` (see `run_pipeline`)."""

    async def start_recv(stdin: bool | int) -> Process:
        try:
            return await target.start(recv_argv, stdin=stdin)
        except CallError as e:
            raise could_not_start("receive", e) from e

    async def start_send(stdout: bool | int) -> Process:
        try:
            return await source.start(send_argv, stdout=stdout)
        except CallError as e:
            raise could_not_start("send", e) from e

    return await run_pipeline(start_send, start_recv, splice=can_splice(source, target), on_bytes=on_bytes,
                              stall_timeout=stall_timeout)
