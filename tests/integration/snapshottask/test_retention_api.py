"""Retention helpers: which snapshots a change or a delete leaves without retention, and fixating their
removal dates in the removal-date property (reference §2.3, §4 retention items)."""
from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task

SCHEMA_1Y = "auto-%Y-%m-%d-%H-%M-1y"
SNAP = "auto-2021-04-12-06-30-1y"


async def yearly_task(client: Client, tree: Tree) -> dict[str, Any]:
    await tree.zfs.create_snapshots(tree.root, SNAP)
    return await create_task(client, dataset=tree.root, naming_schema=SCHEMA_1Y, lifetime_value=1,
                             lifetime_unit="YEAR", schedule={"minute": "30", "hour": "6"})


async def removal_property(client: Client) -> str:
    return await client.call("pool.snapshottask.removal_date_property")


async def test_removal_date_property_name(stepped: TestServer) -> None:
    client = await stepped.client()
    machine_id = (await asyncio.to_thread(Path("/etc/machine-id").read_bytes)).strip()
    expected = hashlib.sha256(machine_id).hexdigest()[:8]
    assert await removal_property(client) == f"org.truenas:destroy_at_{expected}"


async def test_update_will_change_retention_for(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    call = "pool.snapshottask.update_will_change_retention_for"
    assert await client.call(call, task["id"], {"naming_schema": "auto-%Y-%m-%d-%H-%M-365d"}) == {tree.root: [SNAP]}
    assert await client.call(call, task["id"], {"naming_schema": SCHEMA_1Y}) == {}
    assert await client.call(call, task["id"], {"lifetime_value": 2}) == {}
    assert await client.call("pool.snapshottask.delete_will_change_retention_for", task["id"]) == {
        tree.root: [SNAP],
    }


async def test_will_change_is_empty_when_the_dataset_is_gone(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=f"{tree.root}/a", naming_schema=SCHEMA_1Y)
    await tree.zfs.set_properties(f"{tree.root}/a", {"mountpoint": "none"})
    await tree.zfs.destroy_dataset(f"{tree.root}/a")
    assert await client.call("pool.snapshottask.update_will_change_retention_for", task["id"],
                             {"naming_schema": "auto-%Y-%m-%d-%H-%M-365d"}) == {}
    assert await client.call("pool.snapshottask.delete_will_change_retention_for", task["id"]) == {}
    assert await client.call("pool.snapshottask.delete", task["id"], {"fixate_removal_date": True}) is True


async def fixate_jobs(client: Client) -> list[dict[str, Any]]:
    return await client.call("core.get_jobs", [["method", "=", "pool.snapshottask.fixate_removal_date"]])


async def test_update_with_fixate_keeps_the_old_expiry(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    prop = await removal_property(client)
    await client.call("pool.snapshottask.update", task["id"],
                      {"naming_schema": "auto-%Y-%m-%d-%H-%M-365d", "fixate_removal_date": True})
    [job] = await fixate_jobs(client)
    assert job["state"] == "SUCCESS"
    assert job["arguments"][0] == {tree.root: [SNAP]}
    values = await tree.zfs.get_properties(f"{tree.root}@{SNAP}", [prop])
    assert values[prop] == "2022-04-12T06:30:00"

    # The fixated date rules from now on: the next retention destroys it, though no task owns its name.
    await stepped.app.scheduler.tick(datetime(2031, 1, 1, 6, 30))
    assert f"{tree.root}@{SNAP}" not in await tree.names()


async def test_update_without_retention_change_starts_no_job(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    await client.call("pool.snapshottask.update", task["id"], {"lifetime_value": 3, "fixate_removal_date": False})
    assert await fixate_jobs(client) == []


async def test_fixated_snapshot_is_kept_until_its_date(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    await client.call("pool.snapshottask.update", task["id"],
                      {"naming_schema": "auto-%Y-%m-%d-%H-%M-365d", "fixate_removal_date": True})
    # A task due every minute makes retention run at each tick.
    await create_task(client, dataset=f"{tree.root}/b", schedule={"minute": "*"})
    await stepped.app.scheduler.tick(datetime(2022, 4, 12, 6, 29))
    assert f"{tree.root}@{SNAP}" in await tree.names()
    await stepped.app.scheduler.tick(datetime(2022, 4, 12, 6, 31))
    assert f"{tree.root}@{SNAP}" not in await tree.names()


async def test_delete_with_fixate_writes_removal_dates(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    prop = await removal_property(client)
    assert await client.call("pool.snapshottask.delete", task["id"], {"fixate_removal_date": True}) is True
    [job] = await fixate_jobs(client)
    assert job["state"] == "SUCCESS"
    assert (await tree.zfs.get_properties(f"{tree.root}@{SNAP}", [prop]))[prop] == "2022-04-12T06:30:00"


@pytest.mark.parametrize("fixate", [False, None])
async def test_delete_without_fixate_writes_nothing(stepped: TestServer, tree: Tree, fixate: bool | None) -> None:
    client = await stepped.client()
    task = await yearly_task(client, tree)
    prop = await removal_property(client)
    args = [task["id"]] if fixate is None else [task["id"], {"fixate_removal_date": fixate}]
    assert await client.call("pool.snapshottask.delete", *args) is True
    assert await fixate_jobs(client) == []
    assert (await tree.zfs.get_properties(f"{tree.root}@{SNAP}", [prop]))[prop] is None
