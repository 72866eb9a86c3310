"""The spliced data path: two local processes joined by pipes of ours, the stream moved by splice(2).

LOCAL (and SSH's OPENSSH data path) use it whenever both stages are local processes; these tests pin down
what it must keep from the asyncio copy: every byte counted, pipefail, stall detection, and an abort that
leaves nothing running.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.replication.transports.base import PipeFailed
from middlewared_plugin.replication.transports.local import LocalTransport, can_splice
from middlewared_plugin.zfs import Zfs
from middlewared_plugin.zfs.commands import recv_argv, send_argv

from .conftest import read, snap_name, snapshots, write, write_random


class Counter:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)

    @property
    def total(self) -> int:
        return sum(self.calls)


def test_local_runners_take_the_spliced_path(runner: LocalRunner):
    assert can_splice(runner)
    assert can_splice(runner, LocalRunner())


async def test_the_stream_arrives_unchanged_and_every_byte_is_counted(runner: LocalRunner, tmp_path: Path):
    source, copy = tmp_path / "source", tmp_path / "copy"
    data = os.urandom((24 << 20) + 12345)  # not a multiple of any buffer size
    source.write_bytes(data)
    counted = Counter()
    started = time.monotonic()

    result = await LocalTransport(runner).pipe(["cat", str(source)], ["dd", f"of={copy}", "bs=1M", "status=none"],
                                               on_bytes=counted)

    elapsed = time.monotonic() - started
    assert result.bytes == counted.total == len(data)
    assert copy.read_bytes() == data
    # Reports are coalesced (about every 50 ms), not one per pipe buffer.
    assert len(counted.calls) <= elapsed / 0.05 + 2


async def test_a_zfs_stream_is_counted_to_its_exact_size(zfs: Zfs, runner: LocalRunner,
                                                         pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random.bin", 8 << 20)
    await write(zfs, src, "marker", b"spliced")
    await zfs.create_snapshots(src, snap_name(0))
    stream = len((await runner.run(send_argv(f"{src}@{snap_name(0)}"))).stdout)
    counted = Counter()

    result = await LocalTransport(runner).pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(dst), on_bytes=counted)

    assert result.bytes == counted.total == stream
    assert await snapshots(zfs, dst) == [snap_name(0)]
    assert await read(zfs, dst, "marker") == b"spliced"


async def test_abort_mid_stream_kills_both_stages_and_leaves_nothing_running(
        zfs: Zfs, runner: LocalRunner, big_pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = big_pool_pair
    src, dst = f"{src_pool.name}/big", f"{dst_pool.name}/big"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random.bin", 96 << 20)
    await zfs.create_snapshots(src, snap_name(0))
    transport = LocalTransport(runner)
    moving = asyncio.Event()
    counted = Counter()

    def on_bytes(n: int) -> None:
        counted(n)
        if counted.total > 8 << 20:
            moving.set()

    pipe = asyncio.ensure_future(transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(dst),
                                                on_bytes=on_bytes))
    await asyncio.wait_for(moving.wait(), 60)
    pipe.cancel()
    await asyncio.gather(pipe, return_exceptions=True)

    assert pipe.cancelled()
    assert counted.total < 96 << 20  # really stopped mid-stream
    assert not [t for t in threading.enumerate() if t.name == "splice"]
    assert await _gone(lambda p: p.startswith("zfs ") and (src in p or dst in p))
    assert not await zfs.exists(f"{dst}@{snap_name(0)}")  # nothing half-received shows up as a snapshot
    # The pool still receives. (Into another dataset: zfs-fuse can report the aborted receive's target
    # "busy" for minutes, with the asyncio copy too; test_interruptions shows the engine's retry completing it.)
    again = Counter()
    result = await transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(f"{dst_pool.name}/again"),
                                  on_bytes=again)
    assert result.bytes == again.total > counted.total


async def test_a_failing_receiver_fails_the_pipe_with_its_stderr(zfs: Zfs, runner: LocalRunner,
                                                                 pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src = f"{src_pool.name}/data"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random.bin", 4 << 20)
    await zfs.create_snapshots(src, snap_name(0))
    missing_parent = f"{dst_pool.name}/no/such/parent"

    with pytest.raises(PipeFailed) as failed:
        await LocalTransport(runner).pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(missing_parent),
                                          on_bytes=Counter())

    assert failed.value.stage == "receive"
    assert failed.value.transient is False
    assert "zfs exited with status" in failed.value.errmsg
    assert f"{dst_pool.name}/no" in failed.value.errmsg  # zfs recv's own complaint about the missing parent


async def test_a_sender_that_goes_quiet_is_a_stall(runner: LocalRunner):
    marker = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # a sleep only this test runs
    started = time.monotonic()

    with pytest.raises(PipeFailed) as failed:
        await LocalTransport(runner).pipe(["sleep", marker], ["dd", "of=/dev/null", "status=none"],
                                          on_bytes=Counter(), stall_timeout=1.0)

    assert failed.value.stage == "transport" and failed.value.transient
    assert "stalled" in failed.value.errmsg
    assert time.monotonic() - started < 10
    assert await _gone(lambda p: p == f"sleep {marker}")


async def test_a_killed_send_is_reaped_although_zfs_fuse_holds_its_pipe(
        zfs: Zfs, runner: LocalRunner, pool: FilePool):
    src = f"{pool.name}/data"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random.bin", 8 << 20)
    await zfs.create_snapshots(src, snap_name(0))
    send = await runner.start(send_argv(f"{src}@{snap_name(0)}"), stdout=True)
    assert await send.read(65536)  # zfs-fuse's daemon now writes into our pipe and waits for room

    send.kill()

    # The daemon, not the killed `zfs`, holds the pipe's write end: only closing ours ends the wait.
    assert await asyncio.wait_for(send.wait(), 30) != 0


async def _gone(match, timeout: float = 30.0) -> bool:
    """No process matches within `timeout` (a SIGKILLed `zfs` blocked in a FUSE request dies only when the
    request returns)."""
    deadline = time.monotonic() + timeout
    while [p for p in await _processes() if match(p)]:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _processes() -> list[str]:
    return (await LocalRunner().run(["ps", "-eo", "args"])).text.splitlines()
