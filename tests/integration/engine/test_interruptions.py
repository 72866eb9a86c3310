"""Interrupted transfers: a cancelled run and a crashed sshd leave a target that the next attempt completes."""
from __future__ import annotations

import asyncio

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshConnectionPool, runner_for_credentials
from middlewared_plugin.replication.engine import run_task
from middlewared_plugin.replication.executor import Progress
from middlewared_plugin.replication.transports.local import LocalTransport
from middlewared_plugin.replication.transports.ssh import SshTransport
from middlewared_plugin.zfs import Zfs
from tests.fixtures.sshd import SshdServer

from .conftest import Recorder, read, snap_name, snapshots, task, write, write_random

SIZE = 200 << 20


async def _big_source(zfs: Zfs, dataset: str) -> None:
    await zfs.create_dataset(dataset)
    await write_random(zfs, dataset, "random.bin", SIZE)
    await write(zfs, dataset, "marker", b"complete")
    await zfs.create_snapshots(dataset, snap_name(0))


async def test_abort_mid_stream_leaves_a_target_the_next_run_completes(
        zfs: Zfs, runner: LocalRunner, big_pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = big_pool_pair
    src, dst = f"{src_pool.name}/big", f"{dst_pool.name}/big"
    await _big_source(zfs, src)
    rec = Recorder()
    halfway = asyncio.Event()

    def progress(p: Progress) -> None:
        rec.on_progress(p)
        if p.bytes_sent > 40 << 20:
            halfway.set()

    run = asyncio.ensure_future(run_task(task(src, dst), LocalTransport(runner), progress=progress, log=rec.log))
    await asyncio.wait_for(halfway.wait(), 60)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert run.cancelled()
    assert rec.progress[-1].bytes_sent < SIZE  # really stopped mid-stream
    assert await _gone(lambda p: "zfs" in p and dst in p)  # nothing left running

    result = await run_task(task(src, dst), LocalTransport(runner), progress=rec.on_progress, log=rec.log)

    assert result.snapshots_sent == [f"{dst}@{snap_name(0)}"]
    assert await read(zfs, dst, "marker") == b"complete"
    assert await snapshots(zfs, dst) == [snap_name(0)]


async def test_sshd_killed_mid_transfer_then_restarted_the_retry_completes(
        zfs: Zfs, runner: LocalRunner, big_pool_pair: tuple[FilePool, FilePool], sshd_fresh: SshdServer,
        ssh_client_key: dict[str, str]):
    sshd_fresh.add_authorized_key(ssh_client_key["public_key"])
    pool = SshConnectionPool()
    remote = runner_for_credentials(sshd_fresh.credentials(ssh_client_key["private_key"], connect_timeout=3),
                                    pool=pool)
    src_pool, dst_pool = big_pool_pair
    src, dst = f"{src_pool.name}/big", f"{dst_pool.name}/big"
    await _big_source(zfs, src)
    rec = Recorder()
    killed = asyncio.Event()

    def progress(p: Progress) -> None:
        rec.on_progress(p)
        if p.bytes_sent > 40 << 20 and not killed.is_set():
            killed.set()

    async def crash_and_restart() -> None:
        await killed.wait()
        await asyncio.to_thread(sshd_fresh.kill)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(sshd_fresh.start)

    chaos = asyncio.ensure_future(crash_and_restart())
    try:
        result = await run_task(task(src, dst, transport="SSH", retries=5), SshTransport(runner, remote, "PUSH"),
                                progress=progress, log=rec.log, backoff_initial=0.5)
    finally:
        await chaos
        await pool.close_all()

    assert result.attempts >= 2
    assert any("Transient error, retry 1" in line for line in rec.lines)
    assert await read(zfs, dst, "marker") == b"complete"
    assert await snapshots(zfs, dst) == [snap_name(0)]
    last = rec.progress[-1]
    assert last.percent == 100.0 and last.bytes_sent > SIZE  # the lost partial stream counts as sent
    assert last.bytes_total == last.bytes_sent


async def _gone(match, timeout: float = 30.0) -> bool:
    """No process matches within `timeout`: a SIGKILLed `zfs receive` blocked in a zfs-fuse (FUSE) request
    only dies when that request returns, which a busy daemon can delay."""
    deadline = asyncio.get_running_loop().time() + timeout
    while [p for p in await _processes() if match(p)]:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _processes() -> list[str]:
    proc = await asyncio.create_subprocess_exec("ps", "-eo", "args", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode().splitlines()
