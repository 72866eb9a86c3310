"""`replication.run` / `run_onetime` / `plan` through the API: jobs with live progress, task state, logs."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError, ValidationErrors

SCHEMA = "auto-%Y-%m-%d_%H-%M"


async def make_source(zfs, pool: str, snapshots: list[str], *, data_mb: int = 2) -> str:
    source = f"{pool}/src"
    await zfs.create_dataset(f"{source}/child", parents=True)
    for index, name in enumerate(snapshots):
        path = f"/var/tmp/{pool}-{index}"
        # Some data per snapshot so the stream has bytes to count.
        mountpoint = (await zfs.get_properties(source, ["mountpoint"]))["mountpoint"]
        await asyncio.to_thread(_write, f"{mountpoint}/file{index}", data_mb)
        await zfs.create_snapshots(source, name, recursive=True)
        del path
    return source


def _write(path: str, megabytes: int) -> None:
    import os
    with open(path, "wb") as f:
        f.write(os.urandom(megabytes * 1024 * 1024))


def local_task(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": "local push",
        "direction": "PUSH",
        "transport": "LOCAL",
        "source_datasets": [source],
        "target_dataset": target,
        "recursive": True,
        "also_include_naming_schema": [SCHEMA],
        "auto": False,
        "retention_policy": "SOURCE",
        **fields,
    }


async def test_run_replicates_with_progress_events_and_finished_state(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00", "auto-2026-11-02_00-00"])
    client: Client = await server.client()
    task = await client.call("replication.create", local_task(source, f"{dst_pool.name}/copy"))
    assert task["state"]["state"] == "PENDING"

    seen_states: list[str] = []
    await client.subscribe("replication.query", lambda e: seen_states.append(e["fields"]["state"]["state"])
                           if e.get("msg") == "changed" and "state" in e.get("fields", {}) else None)
    progress: list[dict[str, Any]] = []
    await client.call("replication.run", task["id"], job=True, callback=lambda job: progress.append(job["progress"]))

    after = await client.call("replication.get_instance", task["id"])
    assert after["state"]["state"] == "FINISHED"
    assert after["state"]["last_snapshot"].endswith("@auto-2026-11-02_00-00")
    assert after["job"]["state"] == "SUCCESS"
    assert "RUNNING" in seen_states and seen_states[-1] == "FINISHED"
    assert progress[-1]["percent"] == 100
    assert any(p["description"].startswith("Sending ") for p in progress)
    names = {s.full_name for s in await local_zfs.list_snapshots(f"{dst_pool.name}/copy")}
    assert f"{dst_pool.name}/copy/child@auto-2026-11-02_00-00" in names

    # A second run sends only what is new.
    await local_zfs.create_snapshots(source, "auto-2026-11-03_00-00", recursive=True)
    await client.call("replication.run", task["id"], job=True)
    job = (await client.call("replication.get_instance", task["id"]))["job"]
    log = await server.app.jobs.read_log(server.app.jobs.get(job["id"]))
    assert "auto-2026-11-03_00-00" in log
    # Every command is in the task log, the listings the plan came from included.
    assert "zfs get" in log or "zfs list" in log
    assert "auto-2026-11-01_00-00" not in log.split("Finished")[0].split("Listing")[-1]


async def test_disabled_task_can_still_be_run_by_hand(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=0)
    client = await server.client()
    task = await client.call("replication.create", local_task(source, f"{dst_pool.name}/copy", enabled=False))
    await client.call("replication.run", task["id"], job=True)
    assert (await client.call("replication.get_instance", task["id"]))["state"]["state"] == "FINISHED"


async def test_plan_preview_of_a_diverged_target_names_the_conflict_and_changes_nothing(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=0)
    client = await server.client()
    task = await client.call("replication.create", local_task(source, f"{dst_pool.name}/copy"))
    await client.call("replication.run", task["id"], job=True)
    # The target gets a snapshot of its own: it has diverged from the source.
    await local_zfs.create_snapshots(f"{dst_pool.name}/copy", "local-change")
    before = {s.full_name for s in await local_zfs.list_snapshots(dst_pool.name)}

    plan = await client.call("replication.plan", task["id"])

    assert plan["conflicts"], plan
    assert any("local-change" in c["message"] for c in plan["conflicts"])
    assert {s.full_name for s in await local_zfs.list_snapshots(dst_pool.name)} == before


async def test_run_onetime_replicates_without_saving_a_task(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=0)
    client = await server.client()
    definition = local_task(source, f"{dst_pool.name}/once")
    for key in ("name", "auto"):
        definition.pop(key)
    await client.call("replication.run_onetime", definition, job=True)
    assert await local_zfs.exists(f"{dst_pool.name}/once/child")
    assert await client.call("replication.query") == []


@pytest.mark.parametrize("exclude_mountpoint, expected", [(True, "inherited"), (False, "legacy")])
async def test_run_onetime_excludes_the_mountpoint_unless_told_not_to(
    server, pool_pair, local_zfs, exclude_mountpoint, expected,
):
    src_pool, dst_pool = pool_pair
    source = f"{src_pool.name}/legacy"
    await local_zfs.create_dataset(source, properties={"mountpoint": "legacy"})
    await local_zfs.create_snapshots(source, "auto-2026-11-01_00-00")
    client = await server.client()
    definition = local_task(source, f"{dst_pool.name}/once", recursive=False,
                            exclude_mountpoint_property=exclude_mountpoint)
    for key in ("name", "auto"):
        definition.pop(key)
    await client.call("replication.run_onetime", definition, job=True)
    mountpoint = (await local_zfs.get_properties(f"{dst_pool.name}/once", ["mountpoint"]))["mountpoint"]
    if expected == "legacy":
        assert mountpoint == "legacy"
    else:
        assert mountpoint != "legacy"


async def test_run_onetime_reports_validation_errors_with_its_prefix(server, pool_pair):
    client = await server.client()
    with pytest.raises(CallError) as raised:
        await client.call("replication.run_onetime", {
            "direction": "PUSH", "transport": "LOCAL", "source_datasets": ["x/y"], "target_dataset": "z",
            "recursive": False, "retention_policy": "NONE", "naming_schema": [SCHEMA],
        }, job=True)
    assert "replication_run_onetime.naming_schema" in str(raised.value)


async def test_plan_of_an_invalid_definition_names_its_fields(server):
    client = await server.client()
    with pytest.raises(ValidationErrors) as raised:
        await client.call("replication.plan", {"name": "x", "direction": "SIDEWAYS"})
    attributes = [error.attribute for error in raised.value]
    assert "replication_plan.direction" in attributes
    assert "replication_plan.int" not in attributes
