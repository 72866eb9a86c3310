"""Ids are never handed out twice (issue 13 item 5): a task created after another was deleted gets an id of its
own and starts clean (`job` null, `state` PENDING), in one process and across a restart; job ids likewise; and
a `replication.run` job never attaches to a task created after it."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.replication_api.conftest import SCHEMA

SNAPSHOT = "snap-2026-01-02-03-04"


async def two_pool_task(zfs: Zfs, pools: tuple[FilePool, FilePool], name: str = "task") -> dict[str, Any]:
    """A LOCAL push from a dataset with one snapshot on the first pool to the second pool."""
    source = f"{pools[0].name}/src"
    if not await zfs.exists(source):
        await zfs.create_dataset(source)
        await zfs.create_snapshots(source, SNAPSHOT)
    return {
        "name": name, "direction": "PUSH", "transport": "LOCAL", "source_datasets": [source],
        "target_dataset": f"{pools[1].name}/{name}", "recursive": False, "also_include_naming_schema": [SCHEMA],
        "auto": False, "retention_policy": "NONE",
    }


async def run(client: Client, task_id: int) -> dict[str, Any]:
    """Run a task to its end; its entry afterwards."""
    await client.call("replication.run", task_id, job=True)
    return await client.call("replication.get_instance", task_id)


def assert_starts_clean(entry: dict[str, Any]) -> None:
    assert (entry["job"], entry["state"]) == (None, {"state": "PENDING"})


async def test_a_task_created_after_a_run_task_was_deleted_gets_a_new_id_and_starts_clean(
    client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    first = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair))
    ran = await run(client, first["id"])
    assert (ran["job"]["state"], ran["state"]["state"]) == ("SUCCESS", "FINISHED")
    await client.call("replication.delete", first["id"])

    second = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair))

    assert second["id"] > first["id"]
    assert_starts_clean(second)
    assert_starts_clean(await client.call("replication.get_instance", second["id"]))
    assert [t["id"] for t in await client.call("replication.query")] == [second["id"]]


async def test_ids_of_deleted_rows_stay_used_across_a_restart(
    server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    client = await server.client()
    kept = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair, "kept"))
    newest = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair, "newest"))
    last_job = (await run(client, newest["id"]))["job"]["id"]
    await client.call("replication.delete", newest["id"])
    snapshot_tasks = [await client.call("pool.snapshottask.create", {
        "dataset": f"{pool_pair[0].name}/src", "naming_schema": SCHEMA, "lifetime_value": lifetime,
    }) for lifetime in (1, 2)]
    await client.call("pool.snapshottask.delete", snapshot_tasks[-1]["id"])
    key = await client.call("keychaincredential.create", {
        "name": "key", "type": "SSH_KEY_PAIR",
        "attributes": await client.call("keychaincredential.generate_ssh_key_pair")})
    await client.call("keychaincredential.delete", key["id"])
    # The newest job history row goes too (history is trimmed): its id stays used all the same.
    await server.app.store.delete("jobs", last_job)

    await server.restart()
    client = await server.client()

    again = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair, "newest"))
    assert again["id"] > newest["id"]
    assert_starts_clean(again)
    assert (await client.call("replication.get_instance", kept["id"]))["name"] == "kept"
    snapshot_task = await client.call("pool.snapshottask.create", {
        "dataset": f"{pool_pair[0].name}/src", "naming_schema": SCHEMA})
    assert snapshot_task["id"] > snapshot_tasks[-1]["id"]
    assert (await client.call("pool.snapshottask.get_instance", snapshot_task["id"]))["state"]["state"] == "PENDING"
    key_again = await client.call("keychaincredential.create", {
        "name": "key", "type": "SSH_KEY_PAIR",
        "attributes": await client.call("keychaincredential.generate_ssh_key_pair")})
    assert key_again["id"] > key["id"]
    job = (await run(client, again["id"]))["job"]
    assert job["id"] > last_job


async def test_a_run_of_an_id_no_task_had_yet_is_not_the_job_of_the_task_that_gets_it(
    client: Client, server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    first = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair, "first"))
    with pytest.raises(CallError, match="does not exist"):
        await client.call("replication.run", first["id"] + 1, job=True)
    events: list[dict[str, Any]] = []
    await client.subscribe("replication.query", events.append)

    second = await client.call("replication.create", await two_pool_task(local_zfs, pool_pair, "second"))

    assert second["id"] == first["id"] + 1
    assert_starts_clean(second)
    # The partial CHANGED events of its state carry no stranger's job either.
    await server.app.service("replication").set_state(second["id"], {"state": "ERROR", "error": "Test."})
    changed = await client.call("replication.get_instance", second["id"])
    assert (changed["job"], changed["state"]["state"]) == (None, "ERROR")
    for _ in range(200):
        state_events = [e for e in events if e.get("msg") == "changed" and "state" in e.get("fields", {})]
        if state_events:
            break
        await asyncio.sleep(0.02)
    assert [(e["id"], e["fields"]["state"]["job"]) for e in state_events] == [(second["id"], None)]
