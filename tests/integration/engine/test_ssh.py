"""SSH replication through the real sshd on 127.0.0.1 (the "remote" zfs is the same zfs-fuse daemon, so a push
from pool A over SSH into pool B is a real remote replication): both data paths, push and pull, odd names."""
from __future__ import annotations

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.engine import make_transport, run_task
from middlewared_plugin.replication.transports.ssh import DataPath, SshTransport
from middlewared_plugin.zfs import Zfs

from .conftest import Recorder, read, snap_name, snapshots, task, write


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_push_recursive_full_then_incremental(zfs: Zfs, runner: LocalRunner, remote: SshRunner,
                                                    pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    src_pool, dst_pool = pool_pair
    root, dst = f"{src_pool.name}/tree", f"{dst_pool.name}/from-afar"
    await zfs.create_dataset(f"{root}/child")
    await write(zfs, f"{root}/child", "f", b"over ssh")
    await zfs.create_snapshots(root, snap_name(0), recursive=True)
    transport = SshTransport(runner, remote, "PUSH", data_path=data_path)
    definition = task(root, dst, transport="SSH", recursive=True)
    rec = Recorder()

    await run_task(definition, transport, progress=rec.on_progress, log=rec.log)
    await write(zfs, f"{root}/child", "g", b"more")
    await zfs.create_snapshots(root, snap_name(1), recursive=True)
    result = await run_task(definition, transport, progress=rec.on_progress, log=rec.log)

    assert result.snapshots_sent == [f"{dst}@{snap_name(1)}", f"{dst}/child@{snap_name(1)}"]
    assert await snapshots(zfs, f"{dst}/child") == [snap_name(0), snap_name(1)]
    assert await read(zfs, f"{dst}/child", "g") == b"more"
    # control commands ran on the remote runner, the receive on the far side of the SSH data path
    assert any(line.startswith(f"[{remote.name}] zfs") for line in rec.lines)
    assert rec.progress[-1].percent == 100.0 and rec.progress[-1].bytes_sent == rec.progress[-1].bytes_total
    await transport.close()


async def test_pull_over_ssh(zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/remote-data", f"{dst_pool.name}/pulled"
    await zfs.create_dataset(src)
    await write(zfs, src, "f", b"pulled over ssh")
    for i in range(3):
        await zfs.create_snapshots(src, snap_name(i))
    definition = task(src, dst, transport="SSH", direction="PULL", naming_schema=["auto-%Y-%m-%d_%H-%M"],
                      also_include_naming_schema=[])
    transport = make_transport(definition, local=runner, remote=remote)
    assert isinstance(transport, SshTransport) and transport.source is remote and transport.target is runner
    rec = Recorder()

    result = await run_task(definition, transport, progress=rec.on_progress, log=rec.log)

    assert result.snapshots_sent == [f"{dst}@{snap_name(i)}" for i in range(3)]
    assert await read(zfs, dst, "f") == b"pulled over ssh"


@pytest.mark.parametrize("data_path", list(DataPath))
async def test_names_with_spaces_and_colons_are_not_interpreted(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool], data_path: DataPath):
    # ZFS names allow letters, digits and "_-.: " only; spaces and colons are what a shell would split or
    # misread, and a word-split argv would make zfs fail or touch another dataset.
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/my data: v1.0", f"{dst_pool.name}/copy of my data"
    schema = "snap %Y-%m-%d %H:%M"
    await zfs.create_dataset(src)
    await write(zfs, src, "f", b"odd names")
    await zfs.create_snapshots(src, "snap 2024-05-01 10:00")
    definition = task(src, dst, transport="SSH", also_include_naming_schema=[schema])
    rec = Recorder()

    await run_task(definition, SshTransport(runner, remote, "PUSH", data_path=data_path),
                   progress=rec.on_progress, log=rec.log)

    assert await snapshots(zfs, dst) == ["snap 2024-05-01 10:00"]
    assert await read(zfs, dst, "f") == b"odd names"
    assert [d.name for d in await zfs.list_datasets(dst_pool.name)] == [dst_pool.name, dst]
