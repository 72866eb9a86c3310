"""Tasks attached to datasets and pools (reference §4): deleting a dataset deletes the tasks that use it,
exporting a pool disables them (deletes them with `cascade`) and importing it enables them again; the
attachment listings show the enabled ones. Real zfs-fuse pools on files, found again by `zpool import -d`."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.replication_api.conftest import create_ssh_credentials

SCHEMA = "snap-%Y-%m-%d-%H-%M"


@pytest.fixture
def server(importing_server: TestServer) -> TestServer:
    return importing_server


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


async def datasets(zfs: Zfs, *names: str) -> None:
    for name in names:
        await zfs.create_dataset(name, parents=True)


async def snapshot_task(client: Client, dataset: str, **fields: Any) -> dict[str, Any]:
    return await client.call("pool.snapshottask.create", {"dataset": dataset, "naming_schema": SCHEMA, **fields})


async def push_task(client: Client, source: str, target: str, **fields: Any) -> dict[str, Any]:
    return await client.call("replication.create", {
        "name": f"{source} to {target}", "direction": "PUSH", "transport": "LOCAL", "source_datasets": [source],
        "target_dataset": target, "recursive": False, "also_include_naming_schema": [SCHEMA], "auto": False,
        "retention_policy": "NONE", **fields,
    })


async def ids(client: Client, namespace: str) -> set[int]:
    return {entry["id"] for entry in await client.call(f"{namespace}.query")}


async def enabled(client: Client, namespace: str, id: int) -> bool:
    return (await client.call(f"{namespace}.get_instance", id))["enabled"]


async def pool_id(client: Client, name: str) -> int:
    return (await client.call("pool.query", [["name", "=", name]], {"get": True}))["id"]


# --- listings ---------------------------------------------------------------------------------------------


async def test_pool_query_gives_each_imported_pool_a_stable_id(client: Client, pool: FilePool):
    entry = await client.call("pool.query", [["name", "=", pool.name]], {"get": True})
    assert entry["status"] == "ONLINE" and entry["healthy"] is True
    assert entry["path"] == str(pool.mountpoint)
    assert entry["guid"].isdigit()
    assert (await client.call("pool.query", [["id", "=", entry["id"]]], {"get": True}))["name"] == pool.name


async def test_dataset_attachments_list_enabled_tasks_by_type(client: Client, pool_pair: tuple[FilePool, FilePool],
                                                             local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data", f"{src.name}/quiet", f"{dst.name}/copy")
    await snapshot_task(client, f"{src.name}/data")
    await snapshot_task(client, f"{src.name}/quiet", enabled=False)
    replication = await push_task(client, f"{src.name}/data", f"{dst.name}/copy")

    assert await client.call("pool.dataset.attachments", f"{src.name}/data") == [
        {"type": "Snapshot Task", "service": None, "attachments": [f"{src.name}/data"]},
        {"type": "Replication", "service": None, "attachments": [replication["name"]]},
    ]
    # A disabled task is not reported; a LOCAL task uses its target too.
    assert await client.call("pool.dataset.attachments", f"{src.name}/quiet") == []
    assert await client.call("pool.attachments", await pool_id(client, dst.name)) == [
        {"type": "Replication", "service": None, "attachments": [replication["name"]]},
    ]


async def test_an_ssh_task_is_attached_only_on_its_local_side(client: Client, pool_pair: tuple[FilePool, FilePool],
                                                             local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data", f"{dst.name}/copy")
    _, credentials = await create_ssh_credentials(client)
    pull = await client.call("replication.create", {
        "name": "pull", "direction": "PULL", "transport": "SSH", "ssh_credentials": credentials,
        "source_datasets": [f"{src.name}/data"], "target_dataset": f"{dst.name}/copy", "recursive": False,
        "naming_schema": [SCHEMA], "auto": False, "retention_policy": "NONE",
    })

    assert await client.call("pool.dataset.attachments", f"{src.name}/data") == []  # the remote side
    assert await client.call("pool.dataset.attachments", dst.name) == [
        {"type": "Replication", "service": None, "attachments": [pull["name"]]},
    ]


# --- dataset deletion -------------------------------------------------------------------------------------


async def test_deleting_a_source_dataset_deletes_the_tasks_that_use_it(
        client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data/child", f"{src.name}/other", f"{dst.name}/copy")
    on_child = await snapshot_task(client, f"{src.name}/data/child")
    elsewhere = await snapshot_task(client, f"{src.name}/other")
    replication = await push_task(client, f"{src.name}/data/child", f"{dst.name}/copy", auto=True,
                                  periodic_snapshot_tasks=[on_child["id"]], also_include_naming_schema=[])

    assert await client.call("pool.dataset.delete", f"{src.name}/data", {"recursive": True}) is True

    assert not await local_zfs.exists(f"{src.name}/data")
    assert await ids(client, "replication") == set()
    assert await ids(client, "pool.snapshottask") == {elsewhere["id"]}
    assert replication["id"] not in await ids(client, "replication")


async def test_deleting_a_child_keeps_a_recursive_task_on_its_parent(client: Client, pool: FilePool,
                                                                     local_zfs: Zfs):
    await datasets(local_zfs, f"{pool.name}/parent/child")
    parent = await snapshot_task(client, f"{pool.name}/parent", recursive=True)

    await client.call("pool.dataset.delete", f"{pool.name}/parent/child")

    assert await ids(client, "pool.snapshottask") == {parent["id"]}


async def test_a_dataset_zfs_refuses_to_destroy_keeps_its_tasks(client: Client, pool: FilePool, local_zfs: Zfs):
    await datasets(local_zfs, f"{pool.name}/parent/child")
    task = await snapshot_task(client, f"{pool.name}/parent")

    with pytest.raises(ClientException) as refused:
        await client.call("pool.dataset.delete", f"{pool.name}/parent")  # has children, not recursive

    assert "child" in str(refused.value)
    assert await local_zfs.exists(f"{pool.name}/parent/child")
    assert await ids(client, "pool.snapshottask") == {task["id"]}


async def test_a_busy_dataset_is_not_deleted_and_what_was_unmounted_on_the_way_is_mounted_back(
        server: TestServer, client: Client, pool: FilePool, local_zfs: Zfs):
    server.app.settings.dataset_busy_timeout = 1.0  # refused after 1 s of retries rather than the default 10
    await datasets(local_zfs, f"{pool.name}/tree/deep/er", f"{pool.name}/tree/busy")
    task = await snapshot_task(client, f"{pool.name}/tree", recursive=True)

    # zfs-fuse cannot unmount within `zfs destroy`: the tree is unmounted deepest first, and `tree/busy` refuses.
    with (pool.mountpoint / "tree" / "busy" / "open-file").open("w"), pytest.raises(ClientException) as refused:
        await client.call("pool.dataset.delete", f"{pool.name}/tree", {"recursive": True})

    assert "busy" in str(refused.value)
    mounted = await local_zfs.get_properties(f"{pool.name}/tree/deep/er", ["mounted"])
    assert mounted["mounted"] == "yes"
    assert await ids(client, "pool.snapshottask") == {task["id"]}


async def test_deleting_a_pool_root_is_refused(client: Client, pool: FilePool):
    # A missing dataset is TrueNAS's InstanceNotFound: test_truenas_compat.py.
    with pytest.raises(CallError) as refused:
        await client.call("pool.dataset.delete", pool.name)
    assert refused.value.errno == errno.EINVAL


async def test_deleting_datasets_is_a_role_of_its_own(server: TestServer, pool: FilePool, local_zfs: Zfs):
    await datasets(local_zfs, f"{pool.name}/data")
    await server.add_user("writer", "pw-writer", ["DATASET_WRITE"])
    writer = await server.client("writer", "pw-writer")

    with pytest.raises(CallError) as refused:
        await writer.call("pool.dataset.delete", f"{pool.name}/data")

    assert refused.value.errno == errno.EACCES
    assert await local_zfs.exists(f"{pool.name}/data")


# --- export and import ------------------------------------------------------------------------------------


async def test_export_disables_the_pools_tasks_and_import_enables_them_again(
        client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data", f"{dst.name}/copy")
    snapshots = await snapshot_task(client, f"{src.name}/data")
    replication = await push_task(client, f"{src.name}/data", f"{dst.name}/copy", auto=True,
                                  periodic_snapshot_tasks=[snapshots["id"]], also_include_naming_schema=[])
    guid = (await client.call("pool.query", [["name", "=", src.name]], {"get": True}))["guid"]

    await client.call("pool.export", await pool_id(client, src.name), job=True)

    assert src.name not in {p.name for p in await local_zfs.pools()}
    assert await client.call("pool.query", [["name", "=", src.name]]) == []
    assert not await enabled(client, "replication", replication["id"])
    assert not await enabled(client, "pool.snapshottask", snapshots["id"])
    found = await client.call("pool.import_find", job=True)
    assert {"name": src.name, "guid": guid, "status": "ONLINE", "hostname": ""} in found

    assert await client.call("pool.import_pool", {"guid": guid}, job=True) is True

    assert await local_zfs.exists(f"{src.name}/data")
    assert (await client.call("pool.query", [["name", "=", src.name]], {"get": True}))["status"] == "ONLINE"
    assert await enabled(client, "pool.snapshottask", snapshots["id"])
    assert await enabled(client, "replication", replication["id"])


async def test_export_with_cascade_deletes_the_pools_tasks(client: Client, pool_pair: tuple[FilePool, FilePool],
                                                          local_zfs: Zfs):
    src, dst = pool_pair
    await datasets(local_zfs, f"{src.name}/data", f"{dst.name}/copy", f"{dst.name}/own")
    await snapshot_task(client, f"{src.name}/data")
    await push_task(client, f"{src.name}/data", f"{dst.name}/copy")
    kept = await snapshot_task(client, f"{dst.name}/own")

    await client.call("pool.export", await pool_id(client, src.name), {"cascade": True}, job=True)

    assert await ids(client, "replication") == set()
    assert await ids(client, "pool.snapshottask") == {kept["id"]}


async def test_importing_an_unknown_guid_is_enoent(client: Client, pool: FilePool):
    with pytest.raises(ClientException) as failed:
        await client.call("pool.import_pool", {"guid": "1234"}, job=True)
    assert failed.value.errno == errno.ENOENT


@pytest.mark.parametrize("options", [{}, {"cascade": True}])
async def test_a_pool_that_cannot_be_exported_keeps_its_tasks_as_they_were(client: Client, pool: FilePool,
                                                                           local_zfs: Zfs, options: dict[str, bool]):
    await datasets(local_zfs, f"{pool.name}/data", f"{pool.name}/quiet")
    active = await snapshot_task(client, f"{pool.name}/data")
    quiet = await snapshot_task(client, f"{pool.name}/quiet", enabled=False)

    with (pool.mountpoint / "data" / "open-file").open("w"), pytest.raises(ClientException) as refused:
        # busy: a file is open
        await client.call("pool.export", await pool_id(client, pool.name), options, job=True)

    assert "busy" in str(refused.value)
    assert pool.name in {p.name for p in await local_zfs.pools()}
    assert await enabled(client, "pool.snapshottask", active["id"])
    assert not await enabled(client, "pool.snapshottask", quiet["id"])
