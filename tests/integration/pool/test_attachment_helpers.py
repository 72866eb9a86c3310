"""Issue 13 item 7: TrueNAS's private attachment helpers `pool.dataset.query_attachment_delegate` and
`pool.dataset.attachments_with_path`, on the tasks `attachments.py` knows, with real zfs-fuse pools."""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.pool.test_attachments import datasets, push_task, snapshot_task


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


async def test_attachments_with_path_reads_mountpoints_and_truenas_paths(
        client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data/child", f"{dst.name}/copy")
    task = await snapshot_task(client, f"{src.name}/data")
    replication = await push_task(client, f"{src.name}/data", f"{dst.name}/copy")
    both = [{"type": "Snapshot Task", "service": None, "attachments": [task["dataset"]]},
            {"type": "Replication", "service": None, "attachments": [replication["name"]]}]
    data = src.mountpoint / "data"

    # The dataset's mountpoint, an ancestor's, and TrueNAS's /mnt/<dataset> name the same tasks.
    assert await client.call("pool.dataset.attachments_with_path", str(data)) == both
    assert await client.call("pool.dataset.attachments_with_path", str(src.mountpoint)) == both
    assert await client.call("pool.dataset.attachments_with_path", f"/mnt/{src.name}/data") == both
    # A LOCAL task uses its target too.
    assert await client.call("pool.dataset.attachments_with_path", str(dst.mountpoint / "copy")) == both[1:]
    # Below the tasks' dataset: only with check_parent (the tasks consume the path as part of their tree).
    assert await client.call("pool.dataset.attachments_with_path", str(data / "child")) == []
    assert await client.call("pool.dataset.attachments_with_path", str(data / "child"), True) == both
    # exact_match: tasks on that very dataset only.
    assert await client.call("pool.dataset.attachments_with_path", str(src.mountpoint), False, True) == []
    assert await client.call("pool.dataset.attachments_with_path", str(data), False, True) == both
    # Paths that name no dataset.
    assert await client.call("pool.dataset.attachments_with_path", "") == []
    assert await client.call("pool.dataset.attachments_with_path", "relative/path") == []


async def test_query_attachment_delegate_returns_the_delegates_entries(
        client: Client, pool: FilePool, local_zfs: Zfs):
    await datasets(local_zfs, f"{pool.name}/on", f"{pool.name}/off")
    active = await snapshot_task(client, f"{pool.name}/on")
    quiet = await snapshot_task(client, f"{pool.name}/off", enabled=False)
    path = str(pool.mountpoint)

    found = await client.call("pool.dataset.query_attachment_delegate", "snapshottask", path, True)
    assert found == [await client.call("pool.snapshottask.get_instance", active["id"])]
    disabled = await client.call("pool.dataset.query_attachment_delegate", "snapshottask", path, False)
    assert [e["id"] for e in disabled] == [quiet["id"]]
    assert await client.call("pool.dataset.query_attachment_delegate", "replication", path, True) == []

    with pytest.raises(CallError) as unknown:
        await client.call("pool.dataset.query_attachment_delegate", "nfs", path, True)
    assert "Unknown attachment delegate 'nfs'" in str(unknown.value)


async def test_the_helpers_are_private_as_on_truenas(server: TestServer, pool: FilePool):
    await server.add_user("reader", "pw-reader", ["DATASET_READ", "DATASET_WRITE"])
    reader = await server.client("reader", "pw-reader")
    for call in (("pool.dataset.attachments_with_path", str(pool.mountpoint)),
                 ("pool.dataset.query_attachment_delegate", "snapshottask", str(pool.mountpoint), True)):
        with pytest.raises(CallError) as denied:
            await reader.call(*call)
        assert denied.value.errno == errno.EACCES
