"""`max_parallel_replication_tasks` (reference §2.2): a task over the limit waits in WAITING with its reason,
shown in its state and its job, and starts when a slot frees up or the limit is raised."""
from __future__ import annotations

import asyncio
from typing import Any

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.replication_sched.conftest import (
    MIB,
    SshHold,
    StateEvents,
    eventually,
    push_task,
    snapshot,
    snapshot_names,
)

SLOT_REASON = "Waiting for a free replication slot (1 of 1 running)"
SNAP = "auto-2026-03-01_01-00"


async def two_tasks(client: Client, credentials: int, pools: tuple[FilePool, FilePool], zfs: Zfs,
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """An SSH task (the one the test holds) and a LOCAL one, on datasets that do not overlap."""
    src_pool, dst_pool = pools
    for name in ("a", "b"):
        await zfs.create_dataset(f"{src_pool.name}/{name}")
        await snapshot(zfs, f"{src_pool.name}/{name}", SNAP, size=MIB)
    held = await client.call("replication.create", push_task(
        f"{src_pool.name}/a", f"{dst_pool.name}/a", name="held", transport="SSH", ssh_credentials=credentials))
    other = await client.call("replication.create", push_task(f"{src_pool.name}/b", f"{dst_pool.name}/b", name="b"))
    return held, other


async def test_over_the_limit_a_task_waits_with_its_reason_until_the_other_finishes(
    server: TestServer, client: Client, states: StateEvents, held_ssh: tuple[int, SshHold],
    pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    credentials, hold = held_ssh
    held, other = await two_tasks(client, credentials, pool_pair, local_zfs)
    assert (await client.call("replication.config.update", {"max_parallel_replication_tasks": 1})
            )["max_parallel_replication_tasks"] == 1

    hold.freeze()
    first = asyncio.create_task(client.call("replication.run", held["id"], job=True))
    await states.wait_for(held["id"], "RUNNING")
    other_jobs: list[dict[str, Any]] = []
    second = asyncio.create_task(client.call("replication.run", other["id"], job=True, callback=other_jobs.append))

    waiting = await states.wait_for(other["id"], "WAITING")
    assert waiting["reason"] == SLOT_REASON
    await eventually(lambda: any(j["progress"]["description"] == SLOT_REASON for j in other_jobs),
                     what="the waiting job to show its reason")
    entry = await client.call("replication.get_instance", other["id"])
    assert (entry["state"]["state"], entry["state"]["reason"]) == ("WAITING", SLOT_REASON)
    assert entry["job"]["state"] == "RUNNING"  # the job runs; the task inside it waits for a slot
    assert (await client.call("replication.get_instance", held["id"]))["state"]["state"] == "RUNNING"
    await asyncio.sleep(0.3)
    assert states.names(other["id"]) == ["WAITING"]

    hold.release()
    assert await first is None and await second is None
    assert states.timeline() == [
        (held["id"], "RUNNING"), (other["id"], "WAITING"), (held["id"], "FINISHED"),
        (other["id"], "RUNNING"), (other["id"], "FINISHED")]
    src_pool, dst_pool = pool_pair
    for name in ("a", "b"):
        assert await snapshot_names(local_zfs, f"{dst_pool.name}/{name}") == {f"{dst_pool.name}/{name}@{SNAP}"}


async def test_raising_the_limit_starts_a_waiting_task_at_once(
    server: TestServer, client: Client, states: StateEvents, held_ssh: tuple[int, SshHold],
    pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    credentials, hold = held_ssh
    held, other = await two_tasks(client, credentials, pool_pair, local_zfs)
    await client.call("replication.config.update", {"max_parallel_replication_tasks": 1})

    hold.freeze()
    first = asyncio.create_task(client.call("replication.run", held["id"], job=True))
    await states.wait_for(held["id"], "RUNNING")
    second = asyncio.create_task(client.call("replication.run", other["id"], job=True))
    await states.wait_for(other["id"], "WAITING")

    await client.call("replication.config.update", {"max_parallel_replication_tasks": 2})
    assert await second is None
    assert states.names(other["id"]) == ["WAITING", "RUNNING", "FINISHED"]
    assert states.names(held["id"]) == ["RUNNING"]  # still held: the other one did not wait for it

    hold.release()
    assert await first is None
    assert states.names(held["id"]) == ["RUNNING", "FINISHED"]
