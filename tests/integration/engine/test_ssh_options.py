"""An SSH task's `compression` and `speed_limit` (API reference §2.1.1), through the real sshd on 127.0.0.1.

Compression puts the compressor behind `zfs send` and the decompressor in front of `zfs recv`, on whichever
host each runs; pipefail semantics must survive the extra stage, on this host (two local processes) and on
the peer (one `sh` pipeline). The speed limit paces our copy without passing for a stall.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.engine import make_transport, run_task
from middlewared_plugin.replication.transports.base import PipeFailed
from middlewared_plugin.replication.transports.ssh import COMPRESSORS, DataPath, SshTransport
from middlewared_plugin.zfs import Zfs
from middlewared_plugin.zfs.commands import recv_argv, send_argv
from tests.fixtures.sshd import SshdServer

from .conftest import SCHEMA, Recorder, read, snap_name, snapshots, task, write, write_random

MiB = 1 << 20


def ignore(_: int) -> None:
    pass


async def guids(zfs: Zfs, dataset: str) -> dict[str, int]:
    return {s.name: s.guid for s in await zfs.list_snapshots(dataset, recursive=False)}


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
@pytest.mark.parametrize("compression", list(COMPRESSORS))
async def test_each_compressor_replicates_full_and_incremental(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool],
        compression: str, direction: str):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/copy"
    await zfs.create_dataset(src)
    await write(zfs, src, "text", b"compress me " * 50000)
    await zfs.create_snapshots(src, snap_name(0))
    await write(zfs, src, "more", b"and then some")
    await zfs.create_snapshots(src, snap_name(1))
    # a pull selects the peer's snapshots by `naming_schema`
    schemas = {} if direction == "PUSH" else {"naming_schema": [SCHEMA], "also_include_naming_schema": []}
    definition = task(src, dst, transport="SSH", direction=direction, compression=compression, **schemas)
    transport = make_transport(definition, local=runner, remote=remote)
    assert isinstance(transport, SshTransport) and transport.compression is COMPRESSORS[compression]

    result = await run_task(definition, transport, progress=Recorder().on_progress, log=Recorder().log)
    await transport.close()

    assert result.snapshots_sent == [f"{dst}@{snap_name(0)}", f"{dst}@{snap_name(1)}"]
    assert await guids(zfs, dst) == await guids(zfs, src)
    assert await read(zfs, dst, "text") == b"compress me " * 50000
    assert await read(zfs, dst, "more") == b"and then some"
    # what crossed our pipe is the compressed stream: far smaller than the 600 kB of text
    assert 0 < result.bytes_sent < 300_000


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
async def test_compression_over_the_asyncssh_data_path(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], direction: str):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/copy"
    await zfs.create_dataset(src)
    await write(zfs, src, "f", b"through asyncssh " * 1000)
    await zfs.create_snapshots(src, snap_name(0))
    transport = SshTransport(runner, remote, direction, data_path=DataPath.ASYNCSSH, compression="PIGZ")
    # PUSH: local chain `zfs send | pigz -c` into a remote `sh` pipeline; PULL the other way round
    result = await transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(dst), on_bytes=ignore)
    await transport.close()

    assert result.bytes > 0
    assert await guids(zfs, dst) == await guids(zfs, src)
    assert await read(zfs, dst, "f") == b"through asyncssh " * 1000


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_a_failing_remote_receive_behind_the_decompressor_fails_with_zfs_message(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    src_pool, dst_pool = pool_pair
    src = f"{src_pool.name}/data"
    await zfs.create_dataset(src)
    await zfs.create_snapshots(src, snap_name(0))
    transport = SshTransport(runner, remote, "PUSH", data_path=data_path, compression="LZ4")

    with pytest.raises(PipeFailed) as raised:  # the parent of the target does not exist
        await transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(f"{dst_pool.name}/missing/copy"),
                             on_bytes=ignore)
    await transport.close()

    assert raised.value.stage == "receive" and not raised.value.transient
    assert raised.value.errmsg.startswith("receive (zfs exited with status ")
    assert "cannot receive" in raised.value.errmsg
    assert await zfs.list_datasets(f"{dst_pool.name}", recursive=True) != []  # the pool is still usable


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_a_failing_remote_send_before_the_compressor_is_not_hidden_by_it(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    # In plain sh `zfs send | lz4 -c` exits with lz4's status (0): the pipeline must report zfs's instead.
    src_pool, dst_pool = pool_pair
    transport = SshTransport(runner, remote, "PULL", data_path=data_path, compression="LZ4")

    with pytest.raises(PipeFailed) as raised:
        await transport.pipe(send_argv(f"{src_pool.name}/nothing@here"), recv_argv(f"{dst_pool.name}/copy"),
                             on_bytes=ignore)
    await transport.close()

    assert raised.value.stage == "send"
    assert raised.value.errmsg.startswith("send (zfs exited with status ")
    assert f"cannot open '{src_pool.name}/nothing': dataset does not exist" in raised.value.errmsg
    assert await snapshots(zfs, dst_pool.name) == []


async def test_a_failing_local_receive_behind_the_local_decompressor_names_zfs(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src = f"{src_pool.name}/data"
    await zfs.create_dataset(src)
    await zfs.create_snapshots(src, snap_name(0))
    transport = SshTransport(runner, remote, "PULL", compression="PLZIP")

    with pytest.raises(PipeFailed) as raised:
        await transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(f"{dst_pool.name}/missing/copy"),
                             on_bytes=ignore)
    await transport.close()

    assert raised.value.stage == "receive"
    assert raised.value.errmsg.startswith("receive (zfs exited with status ")
    assert "cannot receive" in raised.value.errmsg


async def test_a_missing_compressor_is_named_with_its_host(remote: SshRunner, tmp_path: Path):
    bare = LocalRunner(env={"PATH": str(tmp_path)})  # a host without lz4 (nor anything else)
    transport = SshTransport(bare, remote, "PUSH", compression="LZ4")

    with pytest.raises(CallError) as raised:
        await transport.pipe(["true"], ["true"], on_bytes=ignore)

    assert "'lz4'" in raised.value.errmsg and "on local" in raised.value.errmsg
    assert not isinstance(raised.value, PipeFailed) or not raised.value.transient


async def test_an_unknown_compression_is_refused(runner: LocalRunner, remote: SshRunner):
    with pytest.raises(ValueError, match="LZ4, PIGZ, PLZIP"):
        SshTransport(runner, remote, "PUSH", compression="ZSTD")


async def _timed_pipe(transport: SshTransport, src: str, dst: str, **kw: float) -> tuple[int, float]:
    counted: list[int] = []
    started = time.monotonic()
    result = await transport.pipe(send_argv(src), recv_argv(dst), on_bytes=counted.append, **kw)
    elapsed = time.monotonic() - started
    await transport.close()
    assert sum(counted) == result.bytes
    return result.bytes, elapsed


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_speed_limit_paces_the_stream_without_passing_for_a_stall(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    src_pool, dst_pool = pool_pair
    src = f"{src_pool.name}/data"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random", 8 * MiB)
    await zfs.create_snapshots(src, snap_name(0))
    limited = SshTransport(runner, remote, "PUSH", data_path=data_path, speed_limit=2 * MiB)

    # a stall timeout far below the run time: waiting on purpose is not a stall
    sent, elapsed = await _timed_pipe(limited, f"{src}@{snap_name(0)}", f"{dst_pool.name}/limited",
                                      stall_timeout=1.0)

    assert sent >= 8 * MiB
    assert elapsed >= 3.5
    assert await read(zfs, f"{dst_pool.name}/limited", "random") == await read(zfs, src, "random")

    unlimited = SshTransport(runner, remote, "PUSH", data_path=data_path)
    sent, elapsed = await _timed_pipe(unlimited, f"{src}@{snap_name(0)}", f"{dst_pool.name}/unlimited")
    assert sent >= 8 * MiB and elapsed < 3.5


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_a_throttled_transfer_is_cancelled_promptly(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/copy"
    await zfs.create_dataset(src)
    await write_random(zfs, src, "random", 4 * MiB)
    await zfs.create_snapshots(src, snap_name(0))
    transport = SshTransport(runner, remote, "PUSH", data_path=data_path, speed_limit=256 * 1024)
    counted: list[int] = []
    pipe = asyncio.ensure_future(transport.pipe(send_argv(f"{src}@{snap_name(0)}"), recv_argv(dst),
                                                on_bytes=counted.append))
    await asyncio.sleep(1.5)
    assert 0 < sum(counted) < 1 * MiB  # moving, slowly

    started = time.monotonic()
    pipe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pipe
    await transport.close()

    assert time.monotonic() - started < 8
    assert await zfs.list_datasets(dst_pool.name, recursive=True)  # the pool answers: nothing holds it


async def test_api_task_with_compression_and_speed_limit_runs_without_unapplied_warnings(
        server, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs, sshd: SshdServer,
        ssh_client_key: dict[str, str]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(src)
    await write(local_zfs, src, "f", b"via the api " * 10000)
    await local_zfs.create_snapshots(src, snap_name(0))
    client = await server.client()
    key = await client.call("keychaincredential.create", {
        "name": "key", "type": "SSH_KEY_PAIR", "attributes": {"private_key": ssh_client_key["private_key"]}})
    credentials = await client.call("keychaincredential.create", {
        "name": "peer", "type": "SSH_CREDENTIALS",
        "attributes": {"host": sshd.host, "port": sshd.port, "username": "root", "private_key": key["id"],
                       "remote_host_key": sshd.remote_host_key}})
    created = await client.call("replication.create", {
        "name": "compressed", "direction": "PUSH", "transport": "SSH", "ssh_credentials": credentials["id"],
        "source_datasets": [src], "target_dataset": dst, "recursive": False,
        "also_include_naming_schema": [SCHEMA], "auto": False, "retention_policy": "NONE",
        "compression": "LZ4", "speed_limit": 64 * MiB})

    await client.call("replication.run", created["id"], job=True)

    after = await client.call("replication.get_instance", created["id"])
    assert after["state"]["state"] == "FINISHED", after["state"]
    assert after["state"]["warnings"] == []
    assert await read(local_zfs, dst, "f") == b"via the api " * 10000
    log = await server.app.jobs.read_log(server.app.jobs.get(after["job"]["id"]))
    assert "not applied" not in log and "uncompressed" not in log
    # The task log shows the pipeline as it runs: compressor after the send, decompressor before the receive.
    assert "| lz4 -c |" in log and "| lz4 -dc |" in log and "limited to" in log
