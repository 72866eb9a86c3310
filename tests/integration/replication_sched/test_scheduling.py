"""When replication tasks run by themselves (issue 6, "Scheduling"): on their own `schedule`, right after a
bound periodic snapshot task took its snapshots, never twice at once (one queued rerun at most)."""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.replication_sched.conftest import (
    SCHEMA,
    SshHold,
    StateEvents,
    eventually,
    push_task,
    run_jobs,
    snapshot,
    snapshot_names,
)

EVERY_DAY_AT_0230 = {"minute": "30", "hour": "2", "dom": "*", "month": "*", "dow": "*"}


def at(hour: int, minute: int, day: int = 1) -> datetime:
    """A minute of March 2026 in the server's timezone (what the real scheduler passes)."""
    return datetime(2026, 3, day, hour, minute).astimezone()


async def settled(server: TestServer, task_id: int, count: int) -> list[str]:
    """Wait until the task has had `count` run jobs and all of them ended; their final states."""
    await eventually(lambda: len(jobs := run_jobs(server, task_id)) >= count and all(j.state.finished for j in jobs),
                     what=f"{count} finished run(s) of task {task_id}")
    return [j.state.value for j in run_jobs(server, task_id)]


async def test_a_task_runs_on_its_own_schedule_and_only_then(
    server: TestServer, client: Client, states: StateEvents, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, "auto-2026-03-01_01-00")
    task = await client.call("replication.create", push_task(source, target, auto=True, schedule=EVERY_DAY_AT_0230))
    # Not due, disabled or not `auto`: nothing runs.
    other = await client.call("replication.create", push_task(
        source, f"{dst_pool.name}/other", name="disabled", auto=True, schedule=EVERY_DAY_AT_0230, enabled=False))
    manual = await client.call("replication.create", push_task(source, f"{dst_pool.name}/manual", name="manual"))

    await server.app.scheduler.tick(at(2, 29))
    await asyncio.sleep(0.2)
    assert run_jobs(server, task["id"]) == []

    await server.app.scheduler.tick(at(2, 30))
    assert await settled(server, task["id"], 1) == ["SUCCESS"]
    assert states.names(task["id"]) == ["RUNNING", "FINISHED"]
    entry = await client.call("replication.get_instance", task["id"])
    assert entry["state"]["state"] == "FINISHED"
    assert entry["job"]["id"] == run_jobs(server, task["id"])[0].id
    assert await snapshot_names(local_zfs, target) == {f"{target}@auto-2026-03-01_01-00"}

    await server.app.scheduler.tick(at(2, 31))
    await asyncio.sleep(0.2)
    assert len(run_jobs(server, task["id"])) == 1
    assert run_jobs(server, other["id"]) == run_jobs(server, manual["id"]) == []


async def test_a_snapshot_task_and_a_bound_auto_task_keep_a_target_in_sync_with_no_calls(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(f"{source}/child", parents=True)
    hourly = await client.call("pool.snapshottask.create", {
        "dataset": source, "recursive": True, "naming_schema": SCHEMA,
        "schedule": {"minute": "0", "hour": "*", "dom": "*", "month": "*", "dow": "*"},
    })
    task = await client.call("replication.create", push_task(
        source, target, auto=True, recursive=True, periodic_snapshot_tasks=[hourly["id"]],
        also_include_naming_schema=[]))

    await server.app.scheduler.tick(at(10, 0))
    assert await settled(server, task["id"], 1) == ["SUCCESS"]
    await server.app.scheduler.tick(at(10, 1))  # no snapshot taken: no run
    await server.app.scheduler.tick(at(11, 0))
    assert await settled(server, task["id"], 2) == ["SUCCESS", "SUCCESS"]

    assert await snapshot_names(local_zfs, target) == {
        f"{target}{child}@auto-2026-03-01_{hour}-00" for child in ("", "/child") for hour in ("10", "11")}
    entry = await client.call("replication.get_instance", task["id"])
    assert entry["state"]["state"] == "FINISHED"
    assert entry["state"]["last_snapshot"].endswith("@auto-2026-03-01_11-00")


async def test_a_running_task_is_not_started_twice_and_one_rerun_is_queued(
    server: TestServer, client: Client, states: StateEvents, held_ssh: tuple[int, SshHold],
    pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    credentials, hold = held_ssh
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, "auto-2026-03-01_01-00")
    every_minute = {"minute": "*", "hour": "*", "dom": "*", "month": "*", "dow": "*"}
    task = await client.call("replication.create", push_task(
        source, target, transport="SSH", ssh_credentials=credentials, auto=True, schedule=every_minute))

    hold.freeze()
    await server.app.scheduler.tick(at(3, 0))
    await states.wait_for(task["id"], "RUNNING")
    # Three more due minutes while it runs: one rerun is queued, the others are dropped.
    for minute in (1, 2, 3):
        await server.app.scheduler.tick(at(3, minute))
    # Asked by hand meanwhile: refused, and the refusal does not disturb the run.
    with pytest.raises(ClientException, match="Task is already running"):
        await client.call("replication.run", task["id"], job=True)
    assert [j.state.value for j in run_jobs(server, task["id"])] == ["RUNNING", "FAILED"]
    assert (await client.call("replication.get_instance", task["id"]))["job"]["state"] == "RUNNING"

    hold.release()
    assert await settled(server, task["id"], 3) == ["SUCCESS", "FAILED", "SUCCESS"]
    await asyncio.sleep(0.3)
    assert len(run_jobs(server, task["id"])) == 3
    assert states.names(task["id"]) == ["RUNNING", "FINISHED", "RUNNING", "FINISHED"]
    assert await snapshot_names(local_zfs, target) == {f"{target}@auto-2026-03-01_01-00"}
