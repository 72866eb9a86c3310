"""`pool.snapshottask.run`: one snapshot now, with the task state and events the UI follows (§2.3, §3)."""
from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import Any

import pytest

from middlewared_plugin.client import ClientException
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.integration.snapshottask.conftest import Tree, create_task

NOW = datetime(2030, 5, 6, 7, 8, 9)


def fix_clock(server: TestServer, when: datetime) -> None:
    server.app.scheduler.clock = lambda: when


async def test_run_takes_one_snapshot_named_from_the_clock(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    assert await client.call("pool.snapshottask.run", task["id"], job=True) is None
    assert await tree.names() == [f"{tree.root}@auto-2030-05-06_07-08"]
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "FINISHED"
    assert isinstance(state["datetime"]["$date"], int)  # the wire shape the UI reads
    assert state["last_snapshot"] == f"{tree.root}@auto-2030-05-06_07-08"


async def test_second_run_in_the_same_minute_fails_and_keeps_state(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    await client.call("pool.snapshottask.run", task["id"], job=True)
    before = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    with pytest.raises(ClientException, match=r"already existed.*ran on schedule") as raised:
        await client.call("pool.snapshottask.run", task["id"], job=True)
    assert f"Snapshot {tree.root}@auto-2030-05-06_07-08 already existed" in str(raised.value)
    after = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert after == before and after["state"] == "FINISHED"
    assert len(await tree.names()) == 1


async def test_recursive_run_with_excludes_is_one_transaction(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, recursive=True, exclude=[f"{tree.root}/b"],
                             naming_schema="snap-%Y%m%d.%H%M")
    await client.call("pool.snapshottask.run", task["id"], job=True)
    snaps = await tree.snapshots()
    assert sorted(s.full_name for s in snaps) == [
        f"{tree.root}/a@snap-20300506.0708", f"{tree.root}@snap-20300506.0708",
    ]
    assert len({s.createtxg for s in snaps}) == 1
    assert await tree.names(f"{tree.root}/b") == []


async def test_run_of_disabled_task_fails(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, enabled=False)
    with pytest.raises(ClientException, match="Task is not enabled"):
        await client.call("pool.snapshottask.run", task["id"], job=True)
    assert await tree.names() == []
    assert (await client.call("pool.snapshottask.get_instance", task["id"]))["state"] == {"state": "PENDING"}


async def test_run_of_task_whose_dataset_vanished_fails_with_error_state(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=f"{tree.root}/a")
    await tree.zfs.set_properties(f"{tree.root}/a", {"mountpoint": "none"})  # unmounted: not busy
    await tree.zfs.destroy_dataset(f"{tree.root}/a")
    with pytest.raises(ClientException, match=f"Dataset {tree.root}/a does not exist"):
        await client.call("pool.snapshottask.run", task["id"], job=True)
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "ERROR"
    assert state["error"] == f"Dataset {tree.root}/a does not exist"


async def test_run_publishes_partial_state_events(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    events: list[dict[str, Any]] = []
    await client.subscribe("pool.snapshottask.query", events.append)
    await client.call("pool.snapshottask.run", task["id"], job=True)
    await client.ping()
    assert all(e["msg"] == "changed" and e["id"] == task["id"] and set(e["fields"]) == {"state"} for e in events)
    assert [e["fields"]["state"]["state"] for e in events] == ["RUNNING", "FINISHED"]
    assert events[1]["fields"]["state"]["last_snapshot"] == f"{tree.root}@auto-2030-05-06_07-08"
    assert isinstance(events[1]["fields"]["state"]["datetime"]["$date"], int)


async def test_empty_snapshots_are_not_kept_without_allow_empty(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=f"{tree.root}/a", allow_empty=False, naming_schema="e-%Y%m%d%H%M")
    a = f"{tree.root}/a"

    async def run_at(minute: int) -> str:
        fix_clock(stepped, NOW.replace(minute=minute))
        await client.call("pool.snapshottask.run", task["id"], job=True)
        return (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]["last_snapshot"]

    tree.write(a, "f", b"x" * 5000)
    assert await run_at(10) == f"{a}@e-203005060710"  # the first snapshot is never empty
    assert await run_at(11) == f"{a}@e-203005060710"  # nothing changed: dropped, last_snapshot unchanged
    tree.write(a, "g", b"new file")
    assert await run_at(12) == f"{a}@e-203005060712"
    tree.write(a, "g", b"new data")  # same size, same place: only the content differs
    assert await run_at(13) == f"{a}@e-203005060713"
    assert await run_at(14) == f"{a}@e-203005060713"
    assert await tree.names(a) == [f"{a}@e-203005060710", f"{a}@e-203005060712", f"{a}@e-203005060713"]


async def test_recursive_snapshot_is_empty_only_when_every_dataset_is(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root, recursive=True, allow_empty=False,
                             naming_schema="r-%Y%m%d%H%M")
    datasets = [tree.root, f"{tree.root}/a", f"{tree.root}/b", f"{tree.root}/b/deep"]

    async def run_at(minute: int) -> None:
        fix_clock(stepped, NOW.replace(minute=minute))
        await client.call("pool.snapshottask.run", task["id"], job=True)

    await run_at(20)
    tree.write(f"{tree.root}/b/deep", "f", b"deep change")
    await run_at(21)  # only one dataset changed: kept everywhere
    for i, dataset in enumerate(datasets):
        tree.write(dataset, "g", b"change %d" % i)
    await run_at(22)
    await run_at(23)  # nothing changed anywhere: dropped everywhere
    names = sorted({s.name for s in await tree.snapshots()})
    assert names == ["r-203005060720", "r-203005060721", "r-203005060722"]
    assert len(await tree.snapshots()) == 3 * len(datasets)


async def test_delete_forgets_persisted_state(stepped: TestServer, tree: Tree) -> None:
    fix_clock(stepped, NOW)
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    await client.call("pool.snapshottask.run", task["id"], job=True)
    assert [doc["key"] for _, doc in await stepped.app.store.all("task_state")] == [
        f"periodic_snapshot_task_{task['id']}",
    ]
    await client.call("pool.snapshottask.delete", task["id"])
    assert await stepped.app.store.all("task_state") == []
    assert await tree.names() == [f"{tree.root}@auto-2030-05-06_07-08"]  # deleting a task keeps its snapshots


async def test_midclt_job_prints_progress_and_finishes(stepped: TestServer, tree: Tree) -> None:
    client = await stepped.client()
    task = await create_task(client, dataset=tree.root)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "middlewared_plugin.midclt", "--uri", stepped.url, "-U", ADMIN, "-P", ADMIN_PASSWORD,
        "call", "-j", "pool.snapshottask.run", str(task["id"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert f"Took snapshot {tree.root}@auto-" in stderr.decode()
    assert "100%" in stderr.decode()
    state = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert state["state"] == "FINISHED"
    assert len(await tree.names()) == 1
