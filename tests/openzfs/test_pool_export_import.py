"""Pool export and import, and dataset deletion, on real OpenZFS: a server whose own ZFS is the VM's finds the
exported pool on the guest's disks with ZFS's own device search (no `-d`), and the tasks that use the pool
are disabled by the export, enabled again by the import, and deleted with a deleted dataset."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from middlewared_plugin.client import Client
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer, running_server
from tests.openzfs.support import local_zfs_over_ssh

POOL = "moving"
SCHEMA = "auto-%Y-%m-%d_%H-%M"


@pytest.fixture(scope="module")
async def server(openzfs_vm: OpenZFSVM) -> AsyncIterator[TestServer]:
    await openzfs_vm.run(["zpool", "create", "-f", POOL, openzfs_vm.disks[2]])
    try:
        async with running_server(scheduler_enabled=False, local_zfs_ssh=local_zfs_over_ssh(openzfs_vm)) as running:
            yield running
    finally:
        await openzfs_vm.run(["zpool", "destroy", "-f", POOL], check=False)


@pytest.fixture(scope="module")
async def client(server: TestServer) -> Client:
    return await server.client()


async def test_export_then_import_by_guid_brings_the_pool_and_its_tasks_back(client: Client, openzfs_vm: OpenZFSVM):
    await openzfs_vm.run(["zfs", "create", f"{POOL}/data"])
    task = await client.call("pool.snapshottask.create", {"dataset": f"{POOL}/data", "naming_schema": SCHEMA})
    pool = await client.call("pool.query", [["name", "=", POOL]], {"get": True})

    await client.call("pool.export", pool["id"], job=True)

    assert POOL not in await openzfs_vm.pools()
    assert not (await client.call("pool.snapshottask.get_instance", task["id"]))["enabled"]
    found = await client.call("pool.import_find", job=True)
    assert {"name": POOL, "guid": pool["guid"], "status": "ONLINE", "hostname": ""} in found

    await client.call("pool.import_pool", {"guid": pool["guid"]}, job=True)

    assert POOL in await openzfs_vm.pools()
    assert (await client.call("pool.snapshottask.get_instance", task["id"]))["enabled"]
    assert (await client.call("pool.query", [["name", "=", POOL]], {"get": True}))["guid"] == pool["guid"]


async def test_deleting_a_dataset_destroys_it_and_its_tasks(client: Client, openzfs_vm: OpenZFSVM):
    await openzfs_vm.run(["zfs", "create", "-p", f"{POOL}/gone/child"])
    task = await client.call("pool.snapshottask.create", {"dataset": f"{POOL}/gone/child", "naming_schema": SCHEMA})

    assert await client.call("pool.dataset.delete", f"{POOL}/gone", {"recursive": True}) is True

    listed = await openzfs_vm.run(["zfs", "list", "-H", "-o", "name", "-r", POOL])
    assert f"{POOL}/gone" not in listed.text.split()
    assert task["id"] not in {t["id"] for t in await client.call("pool.snapshottask.query")}
