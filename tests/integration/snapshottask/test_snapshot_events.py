"""Periodic snapshot tasks announce on `pool.snapshot.query` (issue 13, item 4): the snapshots they take
(ADDED, with the query entry) and the ones their retention destroys (REMOVED)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task


async def test_taken_and_expired_snapshots_are_announced(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    events: list[dict[str, Any]] = []
    await client.subscribe("pool.snapshot.query", events.append)
    # Two tasks sharing the tree and schema: the child's snapshot is the parent's (announced once).
    await create_task(client, dataset=tree.root, recursive=True, exclude=[f"{tree.root}/b"],
                      lifetime_value=1, lifetime_unit="DAY", schedule={"minute": "0"})
    await create_task(client, dataset=f"{tree.root}/a", lifetime_value=1, lifetime_unit="DAY",
                      schedule={"minute": "0"})
    await tree.zfs.create_snapshots(tree.root, "auto-2031-01-01_00-00", recursive=True)

    await stepped.app.scheduler.tick(datetime(2031, 1, 3, 0, 0))
    await client.ping()

    taken = [f"{tree.root}@auto-2031-01-03_00-00", f"{tree.root}/a@auto-2031-01-03_00-00"]
    expired = {f"{tree.root}@auto-2031-01-01_00-00", f"{tree.root}/a@auto-2031-01-01_00-00"}
    assert [(e["msg"], e["id"]) for e in events if e["msg"] == "added"] == [("added", name) for name in taken]
    assert {e["id"] for e in events if e["msg"] == "removed"} == expired
    assert len(events) == len(taken) + len(expired)
    queried = {e["id"]: e for e in await client.call("pool.snapshot.query", [["id", "in", taken]])}
    assert [e["fields"] for e in events if e["msg"] == "added"] == [queried[name] for name in taken]
    assert set(await tree.names()) & expired == set()


async def test_a_dropped_empty_snapshot_is_not_announced(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=f"{tree.root}/a", allow_empty=False, naming_schema="e-%Y%m%d%H%M")
    events: list[dict[str, Any]] = []
    await client.subscribe("pool.snapshot.query", events.append)
    for minute in (10, 11):  # nothing written in between: the second one is empty and dropped
        stepped.app.scheduler.clock = lambda minute=minute: datetime(2031, 1, 1, 0, minute)
        await client.call("pool.snapshottask.run", task["id"], job=True)
    await client.ping()
    assert [(e["msg"], e["id"]) for e in events] == [("added", f"{tree.root}/a@e-203101010010")]
