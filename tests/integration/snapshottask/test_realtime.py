"""The issue's "Done when": with the real-time scheduler running, a task on `minute="*"` takes a snapshot
within about a minute, and an expired one disappears. The only slow test of the suite (up to ~65 s)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task


async def test_every_minute_task_snapshots_and_expires_on_its_own(server: TestServer, tree: Tree) -> None:
    assert server.app.settings.scheduler_enabled
    client = await server.client()
    schema = "rt-%Y-%m-%d_%H-%M"
    expired = (datetime.now() - timedelta(hours=3)).strftime(schema)
    await tree.zfs.create_snapshots(tree.root, expired)
    task = await create_task(client, dataset=tree.root, naming_schema=schema, lifetime_value=1,
                             lifetime_unit="HOUR", schedule={"minute": "*"})

    deadline = asyncio.get_running_loop().time() + 65
    names = await tree.names()
    while names == [f"{tree.root}@{expired}"] and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(1)
        names = await tree.names()
    # Retention runs right after the snapshot; give it a moment to finish.
    for _ in range(10):
        if f"{tree.root}@{expired}" not in names:
            break
        await asyncio.sleep(1)
        names = await tree.names()

    assert len(names) == 1 and names[0].startswith(f"{tree.root}@rt-"), names
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "FINISHED" and state["last_snapshot"] == names[0]
