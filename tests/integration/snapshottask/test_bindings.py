"""Snapshot tasks bound to replication tasks: disabling or deleting them is refused while that would
break an enabled replication (reference §2.3, §4)."""
from __future__ import annotations

from typing import Any

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task


async def push(client: Client, tree: Tree, name: str, tasks: list[int], **extra: Any) -> dict[str, Any]:
    return await client.call("replication.create", {
        "name": name, "direction": "PUSH", "transport": "LOCAL", "source_datasets": [tree.root],
        "target_dataset": f"{tree.pool.name}/copy", "recursive": False, "auto": True,
        "retention_policy": "NONE", "periodic_snapshot_tasks": tasks, **extra,
    })


async def test_disabling_a_task_bound_to_an_enabled_replication_fails(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    bound = await create_task(client, dataset=tree.root)
    unbound = await create_task(client, dataset=tree.root, naming_schema="other-%Y%m%d%H%M")
    replication = await push(client, tree, "r1", [bound["id"]])
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshottask.update", bound["id"], {"enabled": False})
    [error] = raised.value.errors
    assert error.attribute == "periodic_snapshot_update.enabled"
    assert f"bound to enabled replication task {replication['id']}" in error.errmsg
    assert (await client.call("pool.snapshottask.update", unbound["id"], {"enabled": False}))["enabled"] is False
    await client.call("replication.update", replication["id"], {"enabled": False})
    assert (await client.call("pool.snapshottask.update", bound["id"], {"enabled": False}))["enabled"] is False


async def test_deleting_the_last_task_of_an_enabled_push_fails(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    first = await create_task(client, dataset=tree.root)
    second = await create_task(client, dataset=tree.root, naming_schema="other-%Y%m%d%H%M")
    replication = await push(client, tree, "r1", [first["id"], second["id"]])
    assert await client.call("pool.snapshottask.delete", first["id"]) is True
    after = await client.call("replication.get_instance", replication["id"])
    assert [t["id"] for t in after["periodic_snapshot_tasks"]] == [second["id"]]
    with pytest.raises(ClientException, match="last periodic snapshot task") as raised:
        await client.call("pool.snapshottask.delete", second["id"])
    assert "enabled replication task 'r1'" in str(raised.value)
    assert [t["id"] for t in await client.call("pool.snapshottask.query")] == [second["id"]]
