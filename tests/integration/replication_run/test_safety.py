"""Issue 12 §2/§3 through the API: a recursive LOCAL task with `readonly: IGNORE` keeps running, and a task
that may discard target changes says in its log and summary that it did."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from middlewared_plugin.client import Client, ClientException

from .test_run import local_task, make_source


async def _log(server, client: Client, task_id: int) -> str:
    job = (await client.call("replication.get_instance", task_id))["job"]
    return await server.app.jobs.read_log(server.app.jobs.get(job["id"])) or ""


async def test_recursive_ignore_task_runs_a_second_and_a_third_time(server, pool_pair, local_zfs):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=0)
    target = f"{dst_pool.name}/copy"
    client = await server.client()
    task = await client.call("replication.create", local_task(source, target, readonly="IGNORE"))

    for day in (1, 2, 3):
        if day > 1:
            await local_zfs.create_snapshots(source, f"auto-2026-11-0{day}_00-00", recursive=True)
        await client.call("replication.run", task["id"], job=True)
        state = (await client.call("replication.get_instance", task["id"]))["state"]
        assert state["state"] == "FINISHED", state
        assert state["last_snapshot"] == f"{source}/child@auto-2026-11-0{day}_00-00"
        assert "0 destroyed, 0 rolled back" in await _log(server, client, task["id"])
    for dataset in (target, f"{target}/child"):
        names = [s.name for s in await local_zfs.list_snapshots(dataset, recursive=False)]
        assert names == [f"auto-2026-11-0{day}_00-00" for day in (1, 2, 3)]


async def _write_on_target(local_zfs, target: str) -> None:
    """The user makes the target writable again and writes to it."""
    await local_zfs.set_properties(target, {"readonly": "off"})
    await local_zfs.runner.run(["zfs", "unmount", target])
    await local_zfs.mount(target)
    mountpoint = (await local_zfs.get_properties(target, ["mountpoint"]))["mountpoint"]
    await asyncio.to_thread(Path(mountpoint, "users-file").write_bytes, b"mine")


@pytest.mark.parametrize("allow_from_scratch", [True, False])
async def test_target_changes_are_discarded_only_with_permission_and_counted(
        server, pool_pair, local_zfs, allow_from_scratch):
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool.name, ["auto-2026-11-01_00-00"], data_mb=0)
    target = f"{dst_pool.name}/copy"
    client = await server.client()
    task = await client.call("replication.create", local_task(source, target, recursive=False,
                                                              allow_from_scratch=allow_from_scratch))
    await client.call("replication.run", task["id"], job=True)
    await _write_on_target(local_zfs, target)
    await local_zfs.create_snapshots(source, "auto-2026-11-02_00-00")

    if allow_from_scratch:
        await client.call("replication.run", task["id"], job=True)
        log = await _log(server, client, task["id"])
        assert (f"Rolled back {target} to auto-2026-11-01_00-00, discarding the changes made on the target "
                f"since that snapshot (amount unknown") in log
        assert "0 destroyed, 1 rolled back" in log
        assert (await client.call("replication.get_instance", task["id"]))["state"]["state"] == "FINISHED"
    else:
        with pytest.raises(ClientException) as refused:
            await client.call("replication.run", task["id"], job=True)
        assert f"Target {target} was modified since its snapshot auto-2026-11-01_00-00" in str(refused.value)
        state = (await client.call("replication.get_instance", task["id"]))["state"]
        assert state["state"] == "ERROR" and "allow from scratch" in state["error"]
        mountpoint = (await local_zfs.get_properties(target, ["mountpoint"]))["mountpoint"]
        assert await asyncio.to_thread(Path(mountpoint, "users-file").read_bytes) == b"mine"
