"""`pool.snapshottask` CRUD through the public API (reference §2.3 and the §4 snapshot-task checklist)."""
from __future__ import annotations

from typing import Any

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer
from tests.integration.snapshottask.conftest import Tree, create_task


def attributes(error: ValidationErrors) -> dict[str, str]:
    return {e.attribute: e.errmsg for e in error.errors}


async def test_create_fills_truenas_defaults_and_reads_back(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    assert task["recursive"] is False
    assert (task["lifetime_value"], task["lifetime_unit"]) == (2, "WEEK")
    assert task["enabled"] is True and task["allow_empty"] is True and task["exclude"] == []
    assert task["naming_schema"] == "auto-%Y-%m-%d_%H-%M"
    assert task["schedule"] == {"minute": "00", "hour": "*", "dom": "*", "month": "*", "dow": "*",
                                "begin": "00:00", "end": "23:59"}
    assert task["vmware_sync"] is False
    assert task["state"] == {"state": "PENDING"}
    assert task["schedule_description"] == "At 00 minutes past the hour"
    assert await client.call("pool.snapshottask.get_instance", task["id"]) == task
    # Computed fields are not stored.
    stored = await stepped.app.store.get("pool_snapshottask", task["id"])
    assert stored is not None and not {"state", "vmware_sync", "schedule_description"} & set(stored)


async def test_update_persists_lifetime_and_schedule(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    updated = await client.call("pool.snapshottask.update", task["id"], {
        "lifetime_value": 5, "lifetime_unit": "WEEK", "schedule": {"minute": "30", "hour": "2"},
    })
    assert (updated["lifetime_value"], updated["lifetime_unit"]) == (5, "WEEK")
    assert updated["schedule"]["minute"] == "30" and updated["schedule"]["hour"] == "2"
    assert updated["schedule"]["begin"] == "00:00"
    await stepped.restart()
    client = await stepped.client()
    again = await client.call("pool.snapshottask.get_instance", task["id"])
    assert again["schedule"]["minute"] == "30" and again["lifetime_value"] == 5


@pytest.mark.parametrize(("fields", "attribute", "message"), [
    ({"dataset": "{pool}/missing"}, "periodic_snapshot_create.dataset", "Dataset not found"),
    ({"dataset": ""}, "periodic_snapshot_create.dataset", "Dataset not found"),
    ({"dataset": "{root}", "exclude": ["{root}/a"]}, "periodic_snapshot_create.exclude",
     "Excluding datasets is not necessary for non-recursive periodic snapshot tasks"),
    ({"dataset": "{root}", "recursive": True, "exclude": ["{pool}/other"]}, "periodic_snapshot_create.exclude.0",
     "Excluded dataset should be a child or other descendant of the selected dataset"),
    ({"dataset": "{root}", "recursive": True, "exclude": ["{root}/a", "{root}"]},
     "periodic_snapshot_create.exclude.1",
     "Excluded dataset should be a child or other descendant of the selected dataset"),
    ({"dataset": "{root}", "naming_schema": "auto-%Y-%m-%d"}, "data.naming_schema",
     "Value error, %H must be present in snapshot naming schema"),
    ({"dataset": "{root}", "naming_schema": "auto/%Y-%m-%d_%H-%M"}, "data.naming_schema",
     "Value error, / is not an allowed character in ZFS snapshot name"),
    ({"dataset": "{root}", "lifetime_unit": "FORTNIGHT"}, "data.lifetime_unit", None),
    ({"dataset": "{root}", "lifetime_value": "2"}, "data.lifetime_value", None),
    ({"dataset": "{root}", "schedule": {"minute": "61"}}, "data.schedule", None),
    ({"dataset": "{root}", "schedule": {"begin": "25:00"}}, "data.schedule", None),
    ({"dataset": "{root}", "vmware_sync": True}, "data.vmware_sync", None),
])
async def test_create_validation(
    stepped: TestServer, tree: Tree, fields: dict[str, Any], attribute: str, message: str | None,
) -> None:
    client = await stepped.client()
    data = {k: (v.format(pool=tree.pool.name, root=tree.root) if isinstance(v, str) else
                [x.format(pool=tree.pool.name, root=tree.root) for x in v] if k == "exclude" else v)
            for k, v in fields.items()}
    with pytest.raises(ValidationErrors) as raised:
        await create_task(client, **data)
    found = attributes(raised.value)
    assert attribute in found, found
    if message is not None:
        assert found[attribute] == message
    assert await client.call("pool.snapshottask.query") == []


async def test_zvol_or_snapshot_is_not_a_dataset_for_a_task(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    await tree.zfs.create_snapshots(tree.root, "manual")
    with pytest.raises(ValidationErrors) as raised:
        await create_task(client, dataset=f"{tree.root}@manual")
    assert attributes(raised.value) == {"periodic_snapshot_create.dataset": "Dataset not found"}


async def test_update_validates_the_merged_entry(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, recursive=True, exclude=[f"{tree.root}/a"])
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshottask.update", task["id"], {"recursive": False})
    assert attributes(raised.value) == {
        "periodic_snapshot_update.exclude":
            "Excluding datasets is not necessary for non-recursive periodic snapshot tasks",
    }
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshottask.update", task["id"], {"unknown": 1})
    assert "data.unknown" in attributes(raised.value)
    assert (await client.call("pool.snapshottask.get_instance", task["id"]))["recursive"] is True


async def test_counts(stepped: TestServer) -> None:
    client = await stepped.client()
    assert await client.call("pool.snapshottask.max_count") == 512
    assert await client.call("pool.snapshottask.max_total_count") == 10000


async def test_delete_with_fixate_of_a_task_without_snapshots(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    assert await client.call("pool.snapshottask.delete_will_change_retention_for", task["id"]) == {}
    assert await client.call("pool.snapshottask.delete", task["id"], {"fixate_removal_date": True}) is True
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshottask.get_instance", task["id"])
    assert "does not exist" in str(raised.value)
    assert await stepped.app.store.all("task_state") == []


async def test_crud_events(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    events: list[dict[str, Any]] = []
    await client.subscribe("pool.snapshottask.query", events.append)
    task = await create_task(client, dataset=tree.root)
    await client.call("pool.snapshottask.update", task["id"], {"enabled": False})
    await client.call("pool.snapshottask.delete", task["id"])
    await client.ping()
    assert [(e["msg"], e["id"]) for e in events] == [
        ("added", task["id"]), ("changed", task["id"]), ("removed", task["id"]),
    ]
    assert events[0]["fields"]["state"] == {"state": "PENDING"}


async def test_reader_cannot_write(stepped: TestServer, tree: Tree) -> None:
    await stepped.add_user("reader", "reader-pass", ["SNAPSHOT_TASK_READ"])
    admin = await stepped.client()
    task = await create_task(admin, dataset=tree.root)
    reader: Client = await stepped.client("reader", "reader-pass")
    assert [t["id"] for t in await reader.call("pool.snapshottask.query")] == [task["id"]]
    with pytest.raises(ClientException) as raised:
        await reader.call("pool.snapshottask.run", task["id"], job=True)
    assert raised.value.errno == 13
