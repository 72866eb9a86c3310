"""The whole engine over SSH+NETCAT (control over SSH, data over a plain TCP connection): a recursive tree,
push and pull, each active side, full then incremental — chosen by `make_transport` from the task as the
service does."""
from __future__ import annotations

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.engine import make_transport, run_task
from middlewared_plugin.replication.transports.netcat import NetcatTransport
from middlewared_plugin.zfs import Zfs

from .conftest import Recorder, read, snap_name, snapshots, task, write


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
@pytest.mark.parametrize("active_side", ["LOCAL", "REMOTE"])
async def test_recursive_tree_full_then_incremental(zfs: Zfs, runner: LocalRunner, remote: SshRunner,
                                                    pool_pair: tuple[FilePool, FilePool], direction: str,
                                                    active_side: str):
    src_pool, dst_pool = pool_pair
    root, dst = f"{src_pool.name}/tree", f"{dst_pool.name}/copy"
    await zfs.create_dataset(f"{root}/child/grandchild")
    await write(zfs, f"{root}/child/grandchild", "f", b"netcat tree")
    await zfs.create_snapshots(root, snap_name(0), recursive=True)
    schema = {"also_include_naming_schema": ["auto-%Y-%m-%d_%H-%M"]} if direction == "PUSH" else {
        "naming_schema": ["auto-%Y-%m-%d_%H-%M"], "also_include_naming_schema": []}
    definition = task(root, dst, transport="SSH+NETCAT", direction=direction, recursive=True,
                      netcat_active_side=active_side, netcat_active_side_listen_address="127.0.0.1",
                      netcat_passive_side_connect_address="127.0.0.1", **schema)
    transport = make_transport(definition, local=runner, remote=remote)
    assert isinstance(transport, NetcatTransport)
    rec = Recorder()

    first = await run_task(definition, transport, progress=rec.on_progress, log=rec.log)
    await write(zfs, f"{root}/child/grandchild", "g", b"second")
    await zfs.create_snapshots(root, snap_name(1), recursive=True)
    second = await run_task(definition, transport, progress=rec.on_progress, log=rec.log)

    assert sorted(first.snapshots_sent) == sorted(
        f"{dst}{suffix}@{snap_name(0)}" for suffix in ("", "/child", "/child/grandchild"))
    assert sorted(second.snapshots_sent) == sorted(
        f"{dst}{suffix}@{snap_name(1)}" for suffix in ("", "/child", "/child/grandchild"))
    assert await snapshots(zfs, f"{dst}/child/grandchild") == [snap_name(0), snap_name(1)]
    assert await read(zfs, f"{dst}/child/grandchild", "g") == b"second"
    # Byte progress works on this transport too.
    assert rec.progress[-1].bytes_sent > 0 and rec.progress[-1].percent == 100.0
    await transport.close()
