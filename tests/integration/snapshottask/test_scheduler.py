"""The minute handler: scheduled snapshots through a stepped clock, retention, state across restarts."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.services.base import Service
from middlewared_plugin.snapshots.retention import PeriodicSnapshotTaskOwner
from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task

DAY = datetime(2031, 1, 1)


async def step(server: TestServer, start: datetime, minutes: int) -> None:
    for i in range(minutes):
        await server.app.scheduler.tick(start + timedelta(minutes=i))


async def test_a_day_of_ticks_takes_the_scheduled_snapshots(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    await create_task(client, dataset=tree.root, schedule={"minute": "0", "hour": "*/6"})
    await create_task(client, dataset=f"{tree.root}/a", naming_schema="q-%Y%m%d-%H%M",
                      schedule={"minute": "*/15", "begin": "09:00", "end": "10:00"})
    disabled = await create_task(client, dataset=f"{tree.root}/b", enabled=False, schedule={"minute": "*"})
    await step(stepped, DAY, 24 * 60)
    assert await tree.names(tree.root, recursive=False) == [
        f"{tree.root}@auto-2031-01-01_{h}-00" for h in ("00", "06", "12", "18")
    ]
    assert await tree.names(f"{tree.root}/a") == [
        f"{tree.root}/a@q-20310101-{hm}" for hm in ("0900", "0915", "0930", "0945", "1000")
    ]
    assert await tree.names(f"{tree.root}/b") == []
    state = (await client.call("pool.snapshottask.get_instance", disabled["id"]))["state"]
    assert state == {"state": "PENDING"}


async def test_retention_destroys_exactly_the_expired_snapshots(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    await create_task(client, dataset=tree.root, recursive=True, exclude=[f"{tree.root}/b"],
                      lifetime_value=1, lifetime_unit="DAY", schedule={"minute": "0"})
    zfs = tree.zfs
    old = {
        "auto-2031-01-01_00-00": "expired",
        "auto-2031-01-01_01-00": "expired, but held",
        "auto-2031-01-01_23-00": "expired an hour ago",
        "auto-2031-01-01_00-30": "not on the schedule: not the task's",
        "auto-2031-01-02_05-00": "younger than a day",
        "manual-2031-01-01": "another naming schema",
    }
    for name in old:
        await zfs.create_snapshots(tree.root, name, recursive=True)
    await zfs.hold("keep", [f"{tree.root}@auto-2031-01-01_01-00"])
    other = f"{tree.pool.name}/other"
    await zfs.create_dataset(other)
    await zfs.create_snapshots(other, "auto-2031-01-01_00-00")

    await stepped.app.scheduler.tick(datetime(2031, 1, 3, 0, 0))

    remaining = set(await tree.names())
    a = f"{tree.root}/a"
    expected_gone = {
        f"{tree.root}@auto-2031-01-01_00-00", f"{tree.root}@auto-2031-01-01_23-00",
        f"{a}@auto-2031-01-01_00-00", f"{a}@auto-2031-01-01_23-00",
        f"{a}@auto-2031-01-01_01-00",  # the hold is on the parent's snapshot only
    }
    all_old = {f"{d}@{n}" for d in (tree.root, a, f"{tree.root}/b", f"{tree.root}/b/deep") for n in old}
    new = {f"{d}@auto-2031-01-03_00-00" for d in (tree.root, a)}
    assert remaining == (all_old - expected_gone) | new
    # Held, excluded (b and b/deep), unscheduled, young and foreign snapshots all stay.
    assert f"{tree.root}@auto-2031-01-01_01-00" in remaining
    assert f"{tree.root}/b@auto-2031-01-01_00-00" in remaining
    assert await zfs.list_snapshots(other) != []


async def test_the_newest_snapshot_of_a_schema_is_never_destroyed(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    await create_task(client, dataset=f"{tree.root}/a", lifetime_value=1, lifetime_unit="HOUR",
                      schedule={"minute": "0", "hour": "0"})
    await tree.zfs.create_snapshots(f"{tree.root}/a", "auto-2031-01-01_00-00")
    await tree.zfs.create_snapshots(f"{tree.root}/a", "auto-2031-01-02_00-00")
    # Both expired; the task on `a` is not due at 00:05, the one on `b` is and retention follows it.
    await create_task(client, dataset=f"{tree.root}/b", schedule={"minute": "5"})
    await stepped.app.scheduler.tick(datetime(2031, 1, 5, 0, 5))
    assert await tree.names(f"{tree.root}/a") == [f"{tree.root}/a@auto-2031-01-02_00-00"]


async def test_state_and_last_snapshot_survive_restart(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, schedule={"minute": "*"})
    await stepped.app.scheduler.tick(datetime(2031, 1, 1, 12, 34))
    before = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert before["state"] == "FINISHED"
    assert before["last_snapshot"] == f"{tree.root}@auto-2031-01-01_12-34"
    await client.call("pool.snapshottask.update", task["id"], {"enabled": False})
    await stepped.restart()
    client = await stepped.client()
    after = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert after == before


async def test_a_task_still_running_is_not_started_again(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, schedule={"minute": "*"})
    service = stepped.app.service("pool.snapshottask")
    await asyncio.gather(service.on_tick(datetime(2031, 1, 1, 0, 1)), service.on_tick(datetime(2031, 1, 1, 0, 2)))
    assert await tree.names() == [f"{tree.root}@auto-2031-01-01_00-01"]
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "FINISHED"


async def test_error_state_when_the_dataset_is_gone(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=f"{tree.root}/a", schedule={"minute": "*"})
    await tree.zfs.set_properties(f"{tree.root}/a", {"mountpoint": "none"})
    await tree.zfs.destroy_dataset(f"{tree.root}/a")
    await stepped.app.scheduler.tick(datetime(2031, 1, 1, 0, 1))
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "ERROR" and state["error"] == f"Dataset {tree.root}/a does not exist"


async def test_hooks_for_replication(stepped: TestServer, tree: Tree) -> None:
    """`on_snapshots_taken` hears of each run; `retention_owners` of any service can retain snapshots."""
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, lifetime_value=1, lifetime_unit="HOUR",
                             schedule={"minute": "*"})
    heard: list[tuple[int, list[str]]] = []

    async def taken(entry: dict[str, Any], snapshots: list[str]) -> None:
        heard.append((entry["id"], snapshots))

    class Keeper(Service):
        namespace = "test.keeper"

        async def retention_owners(self, datasets: list[str]) -> list[PeriodicSnapshotTaskOwner]:
            assert datasets == [tree.root]
            # A year-long owner of the same schema: it retains what the task's hour-long lifetime lets go.
            return [PeriodicSnapshotTaskOwner(tree.root, "auto-%Y-%m-%d_%H-%M", 1, "YEAR",
                                              schedule=Schedule(minute="0", hour="0"))]

    stepped.app.service("pool.snapshottask").on_snapshots_taken.append(taken)
    for name in ("auto-2030-12-31_00-00", "auto-2030-12-31_01-00"):
        await tree.zfs.create_snapshots(tree.root, name)
    stepped.app.register(Keeper(stepped.app))
    await stepped.app.scheduler.tick(datetime(2031, 1, 1, 0, 1))
    assert heard == [(task["id"], [f"{tree.root}@auto-2031-01-01_00-01"])]
    assert await tree.names() == [f"{tree.root}@auto-2030-12-31_00-00", f"{tree.root}@auto-2031-01-01_00-01"]
