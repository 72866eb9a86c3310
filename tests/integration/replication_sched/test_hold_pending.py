"""`hold_pending_snapshots`: periodic snapshot retention on the source keeps what a PUSH task has not sent yet
and its last common snapshot, then lets them go once they are replicated."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer

from .conftest import push_task

SCHEMA = "auto-%Y-%m-%d_%H-%M"
ZONE = ZoneInfo("UTC")


def at(hour: int) -> datetime:
    return datetime(2026, 3, 1, hour, 0, tzinfo=ZONE)


def name(hour: int) -> str:
    return f"auto-2026-03-01_{hour:02d}-00"


async def names(zfs: Zfs, dataset: str) -> list[str]:
    return [s.name for s in await zfs.list_snapshots(dataset, recursive=False)]


async def test_unsent_snapshots_and_the_base_outlive_their_lifetime_until_replicated(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    snapshot_task = await client.call("pool.snapshottask.create", {
        "dataset": source, "recursive": False, "naming_schema": SCHEMA, "lifetime_value": 1,
        "lifetime_unit": "HOUR", "schedule": {"minute": "0", "hour": "*"},
    })
    task = await client.call("replication.create", push_task(
        source, target, periodic_snapshot_tasks=[snapshot_task["id"]], also_include_naming_schema=[],
        hold_pending_snapshots=True, retention_policy="SOURCE"))
    scheduler = server.app.scheduler

    await scheduler.tick(at(0))
    await client.call("replication.run", task["id"], job=True)  # name(0) is now the common base
    for hour in (1, 2, 3):
        await scheduler.tick(at(hour))

    # Past their one-hour lifetime, yet kept: name(0) is the base, name(1..3) were never sent.
    assert await names(local_zfs, source) == [name(h) for h in (0, 1, 2, 3)]

    await client.call("replication.run", task["id"], job=True)
    await scheduler.tick(at(4))

    # Replicated now: only the new base name(3) and the newest name(4) stay on the source.
    assert await names(local_zfs, source) == [name(3), name(4)]
    assert await names(local_zfs, target) == [name(h) for h in (0, 1, 2, 3)]


async def test_without_hold_pending_the_lifetime_alone_decides(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    snapshot_task = await client.call("pool.snapshottask.create", {
        "dataset": source, "recursive": False, "naming_schema": SCHEMA, "lifetime_value": 1,
        "lifetime_unit": "HOUR", "schedule": {"minute": "0", "hour": "*"},
    })
    task = await client.call("replication.create", push_task(
        source, target, periodic_snapshot_tasks=[snapshot_task["id"]], also_include_naming_schema=[],
        retention_policy="SOURCE"))

    await server.app.scheduler.tick(at(0))
    await client.call("replication.run", task["id"], job=True)
    for hour in (1, 2, 3):
        await server.app.scheduler.tick(at(hour))

    # Everything an hour old or more is gone, the sent base name(0) included; only the newest stays.
    assert await names(local_zfs, source) == [name(3)]
