"""`pool.dataset.query` / `pool.snapshot.query` events (issue 13, item 4): subscribable with TrueNAS's roles,
ADDED / CHANGED / REMOVED for what this server creates and destroys, ids are names, fields the query entry."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError
from middlewared_plugin.zfs import Zfs


async def subscribed(client: Client, name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    await client.subscribe(name, events.append)
    return events


def seen(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["msg"], e["id"]) for e in events]


async def test_both_collections_are_subscribable_with_their_read_roles(server):
    await server.add_user("datasets", "pw-datasets", ["DATASET_READ"])
    await server.add_user("snapshots", "pw-snapshots", ["SNAPSHOT_READ"])
    datasets = await server.client("datasets", "pw-datasets")
    snapshots = await server.client("snapshots", "pw-snapshots")
    assert await datasets.subscribe("pool.dataset.query", lambda e: None)
    assert await snapshots.subscribe("pool.snapshot.query", lambda e: None)
    for client, event in ((datasets, "pool.snapshot.query"), (snapshots, "pool.dataset.query")):
        with pytest.raises(CallError) as raised:
            await client.subscribe(event, lambda e: None)
        assert raised.value.errno == errno.EACCES


async def test_snapshot_create_and_delete_send_added_and_removed(server, pool, local_zfs: Zfs):
    root = f"{pool.name}/data"
    await local_zfs.create_dataset(f"{root}/child", parents=True)
    client = await server.client()
    events = await subscribed(client, "pool.snapshot.query")
    entry = await client.call("pool.snapshot.create", {"dataset": root, "name": "s1", "recursive": True})
    assert seen(events) == [("added", f"{root}@s1"), ("added", f"{root}/child@s1")]
    queried = {e["id"]: e for e in await client.call("pool.snapshot.query", [["snapshot_name", "=", "s1"]])}
    assert [e["fields"] for e in events] == [queried[f"{root}@s1"], queried[f"{root}/child@s1"]]
    assert events[0]["fields"] == entry

    events.clear()
    await client.call("pool.snapshot.delete", f"{root}@s1", {"recursive": True})
    assert sorted(seen(events)) == [("removed", f"{root}/child@s1"), ("removed", f"{root}@s1")]
    assert all("fields" not in e for e in events)


async def test_a_deferred_delete_of_a_held_snapshot_removes_nothing_yet(server, pool, local_zfs: Zfs):
    await local_zfs.create_snapshots(pool.name, "held")
    await local_zfs.hold("keep", [f"{pool.name}@held"])
    client = await server.client()
    events = await subscribed(client, "pool.snapshot.query")
    await client.call("pool.snapshot.delete", f"{pool.name}@held", {"defer": True})
    await client.ping()
    assert events == []  # still there until the hold is released
    await local_zfs.release("keep", [f"{pool.name}@held"])


async def test_dataset_delete_removes_the_tree_and_its_snapshots(server, pool, local_zfs: Zfs):
    root = f"{pool.name}/gone"
    await local_zfs.create_dataset(f"{root}/child", parents=True)
    await local_zfs.create_snapshots(root, "s", recursive=True)
    client = await server.client()
    dataset_events = await subscribed(client, "pool.dataset.query")
    snapshot_events = await subscribed(client, "pool.snapshot.query")
    await client.call("pool.dataset.delete", root, {"recursive": True})
    # Children before parents: a client's tree never holds an orphan.
    assert seen(dataset_events) == [("removed", f"{root}/child"), ("removed", root)]
    assert sorted(seen(snapshot_events)) == [("removed", f"{root}/child@s"), ("removed", f"{root}@s")]


async def test_replication_create_dataset_announces_it_with_its_parents(server, pool, local_zfs: Zfs):
    client = await server.client()
    events = await subscribed(client, "pool.dataset.query")
    await client.call("replication.create_dataset", f"{pool.name}/new/deeper", "LOCAL", None)
    assert seen(events) == [("added", f"{pool.name}/new"), ("added", f"{pool.name}/new/deeper")]
    queried = await client.call("pool.dataset.query", [["id", "=", f"{pool.name}/new/deeper"]], {"get": True})
    assert events[1]["fields"] == queried
