"""A replication run into this server's own pools announces what it did to the target (issue 13, item 4):
the datasets it created and the snapshots it received (ADDED), the ones retention destroyed (REMOVED)."""
from __future__ import annotations

from typing import Any

from middlewared_plugin.client import Client
from tests.integration.replication_run.test_run import local_task, make_source


async def test_runs_announce_target_datasets_and_snapshots(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00", "auto-2026-11-02_00-00"],
                               data_mb=1)
    target = f"{dst_pool.name}/backups/copy"  # `backups` does not exist yet either
    client: Client = await server.client()
    task = await client.call("replication.create", local_task(source, target))
    datasets: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    await client.subscribe("pool.dataset.query", datasets.append)
    await client.subscribe("pool.snapshot.query", snapshots.append)

    await client.call("replication.run", task["id"], job=True)
    await client.ping()
    created = [f"{dst_pool.name}/backups", target, f"{target}/child"]
    assert [(e["msg"], e["id"]) for e in datasets] == [("added", name) for name in created]
    received = {f"{d}@auto-2026-11-0{n}_00-00" for d in (target, f"{target}/child") for n in (1, 2)}
    assert {(e["msg"], e["id"]) for e in snapshots} == {("added", name) for name in received}
    queried = {e["id"]: e for e in await client.call("pool.dataset.query", [["id", "in", created]])}
    assert {e["id"]: e["fields"] for e in datasets} == queried

    # Next run: the source's retention took the oldest snapshot, so the target's goes too (policy SOURCE).
    await local_zfs.destroy_snapshots([f"{source}@auto-2026-11-01_00-00", f"{source}/child@auto-2026-11-01_00-00"])
    await local_zfs.create_snapshots(source, "auto-2026-11-03_00-00", recursive=True)
    datasets.clear()
    snapshots.clear()
    await client.call("replication.run", task["id"], job=True)
    await client.ping()
    assert {(e["msg"], e["id"]) for e in snapshots} == {
        *(("removed", f"{d}@auto-2026-11-01_00-00") for d in (target, f"{target}/child")),
        *(("added", f"{d}@auto-2026-11-03_00-00") for d in (target, f"{target}/child")),
    }
    assert {e["msg"] for e in datasets} <= {"changed"}  # space accounting moved; nothing came or went


async def test_a_run_nobody_watches_lists_the_target_no_extra_time(server, pool_pair, local_zfs, monkeypatch):
    # The events cost two listings of the target tree per run: paid only while a client subscribes to them.
    from middlewared_plugin.services import pool as pool_service
    listed: list[str] = []
    real_list_tree = pool_service.list_tree

    async def recording_list_tree(zfs, root):
        listed.append(root)
        return await real_list_tree(zfs, root)

    monkeypatch.setattr(pool_service, "list_tree", recording_list_tree)
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=1)
    target = f"{dst_pool.name}/copy"
    client: Client = await server.client()
    task = await client.call("replication.create", local_task(source, target))
    await client.subscribe("replication.query", lambda event: None)  # other subscriptions do not count

    await client.call("replication.run", task["id"], job=True)
    assert listed == []
    assert await local_zfs.exists(f"{target}@auto-2026-11-01_00-00")

    snapshots: list[dict[str, Any]] = []
    await client.subscribe("pool.snapshot.query", snapshots.append)
    await local_zfs.create_snapshots(source, "auto-2026-11-02_00-00", recursive=True)
    await client.call("replication.run", task["id"], job=True)
    await client.ping()
    assert listed == [target, target]
    assert ("added", f"{target}@auto-2026-11-02_00-00") in {(e["msg"], e["id"]) for e in snapshots}
