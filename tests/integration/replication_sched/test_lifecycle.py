"""What happens around runs: restoring data with the task `restore` creates, aborting a run, and the task's
`state` / `last_snapshot` outliving a restart and disabling (reference §2.1.3, §3)."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_sched.conftest import (
    MIB,
    SshHold,
    StateEvents,
    job_log,
    push_task,
    snapshot,
    snapshot_names,
    ssh_credentials,
)

FIRST, SECOND = "auto-2026-03-01_10-00", "auto-2026-03-02_10-00"


async def contents(zfs: Zfs, dataset: str) -> dict[str, str]:
    """File name -> sha256 of every file in a mounted dataset."""
    mountpoint = Path((await zfs.get_properties(dataset, ["mountpoint"]))["mountpoint"])

    def digest() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mountpoint.iterdir() if p.is_file()}

    return await asyncio.to_thread(digest)


async def test_restore_then_run_brings_the_data_back(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, backup = f"{src_pool.name}/src", f"{dst_pool.name}/backup"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, FIRST, size=MIB)
    await snapshot(local_zfs, source, SECOND, size=MIB)
    original = await contents(local_zfs, source)
    assert len(original) == 2
    task = await client.call("replication.create", push_task(source, backup))
    await client.call("replication.run", task["id"], job=True)

    restored_at = f"{src_pool.name}/restored"
    restore = await client.call("replication.restore", task["id"],
                                {"name": "bring back", "target_dataset": restored_at})
    assert (restore["direction"], restore["source_datasets"], restore["enabled"]) == ("PULL", [backup], False)
    # A disabled task runs by hand.
    await client.call("replication.run", restore["id"], job=True)

    assert await snapshot_names(local_zfs, restored_at) == {f"{restored_at}@{FIRST}", f"{restored_at}@{SECOND}"}
    assert await contents(local_zfs, restored_at) == original
    entry = await client.call("replication.get_instance", restore["id"])
    assert entry["state"]["state"] == "FINISHED"
    # As TrueNAS: the last snapshot is named on the source side of the task (here, the backup).
    assert entry["state"]["last_snapshot"] == f"{backup}@{SECOND}"


async def test_an_aborted_run_ends_aborted_in_error_and_the_next_run_succeeds(
    server: TestServer, client: Client, states: StateEvents, held_ssh: tuple[int, SshHold],
    pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    credentials, hold = held_ssh
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, FIRST, size=MIB)
    task = await client.call("replication.create", push_task(
        source, target, transport="SSH", ssh_credentials=credentials))

    hold.freeze()
    run = asyncio.create_task(client.call("replication.run", task["id"], job=True))
    await states.wait_for(task["id"], "RUNNING")
    job_id = (await client.call("replication.get_instance", task["id"]))["job"]["id"]
    await client.call("core.job_abort", job_id)
    # The abort is delivered by now; let any cleanup that talks to the remote (killing what it started) finish.
    hold.release()
    with pytest.raises(ClientException) as aborted:
        await asyncio.wait_for(run, 30)

    [job] = await client.call("core.get_jobs", [["id", "=", job_id]])
    assert job["state"] == "ABORTED", aborted.value
    error = await states.wait_for(task["id"], "ERROR")
    assert error["error"] == "Replication was aborted."
    entry = await client.call("replication.get_instance", task["id"])
    assert (entry["state"]["state"], entry["state"]["error"]) == ("ERROR", "Replication was aborted.")
    assert "Aborted" in await job_log(server, job_id)

    await client.call("replication.run", task["id"], job=True)
    assert (await client.call("replication.get_instance", task["id"]))["state"]["state"] == "FINISHED"
    assert await snapshot_names(local_zfs, target) == {f"{target}@{FIRST}"}


async def test_an_abort_while_waiting_for_a_slot_leaves_error_not_waiting(
    server: TestServer, client: Client, states: StateEvents, held_ssh: tuple[int, SshHold],
    pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    credentials, hold = held_ssh
    src_pool, dst_pool = pool_pair
    for name in ("a", "b"):
        await local_zfs.create_dataset(f"{src_pool.name}/{name}")
        await snapshot(local_zfs, f"{src_pool.name}/{name}", FIRST)
    held = await client.call("replication.create", push_task(
        f"{src_pool.name}/a", f"{dst_pool.name}/a", name="held", transport="SSH", ssh_credentials=credentials))
    waiting = await client.call("replication.create", push_task(f"{src_pool.name}/b", f"{dst_pool.name}/b"))
    await client.call("replication.config.update", {"max_parallel_replication_tasks": 1})

    hold.freeze()
    first = asyncio.create_task(client.call("replication.run", held["id"], job=True))
    await states.wait_for(held["id"], "RUNNING")
    second = asyncio.create_task(client.call("replication.run", waiting["id"], job=True))
    await states.wait_for(waiting["id"], "WAITING")
    await client.call("core.job_abort", (await client.call("replication.get_instance", waiting["id"]))["job"]["id"])
    with pytest.raises(ClientException):
        await asyncio.wait_for(second, 30)

    entry = await client.call("replication.get_instance", waiting["id"])
    assert (entry["state"]["state"], entry["state"]["error"]) == ("ERROR", "Replication was aborted.")
    assert entry["job"]["state"] == "ABORTED"
    hold.release()
    assert await first is None


async def test_state_and_last_snapshot_survive_a_restart_and_disabling(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot(local_zfs, source, FIRST)
    task = await client.call("replication.create", push_task(source, target))
    await client.call("replication.run", task["id"], job=True)
    before = await client.call("replication.get_instance", task["id"])
    assert before["state"]["state"] == "FINISHED"
    assert before["state"]["last_snapshot"] == f"{source}@{FIRST}"

    await server.restart()
    client = await server.client()
    after = await client.call("replication.get_instance", task["id"])
    assert after["state"] == before["state"]
    assert (after["job"]["id"], after["job"]["state"]) == (before["job"]["id"], "SUCCESS")

    disabled = await client.call("replication.update", task["id"], {"enabled": False})
    assert disabled["state"] == before["state"]

    # A run that sends nothing new keeps the last snapshot sent.
    await client.call("replication.run", task["id"], job=True)
    again = await client.call("replication.get_instance", task["id"])
    assert again["state"]["state"] == "FINISHED"
    assert again["state"]["datetime"] != before["state"]["datetime"]
    assert again["state"]["last_snapshot"] == f"{source}@{FIRST}"
    assert again["job"]["id"] != before["job"]["id"]


async def test_a_run_that_cannot_start_its_transport_ends_in_error(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
    sshd: SshdServer, ssh_client_key: dict[str, str],
) -> None:
    src_pool, dst_pool = pool_pair
    source = f"{src_pool.name}/src"
    await local_zfs.create_dataset(source)
    credentials = await ssh_credentials(client, sshd, ssh_client_key)
    task = await client.call("replication.create", push_task(
        source, f"{dst_pool.name}/copy", transport="SSH", ssh_credentials=credentials))
    # Deleting the credentials unbinds them: the task is disabled and has none, but can still be run by hand.
    await client.call("keychaincredential.delete", credentials, {"cascade": True})

    with pytest.raises(ClientException, match="SSH Credentials are required for non-local replication"):
        await client.call("replication.run", task["id"], job=True)
    entry = await client.call("replication.get_instance", task["id"])
    assert (entry["state"]["state"], entry["state"]["error"]) == (
        "ERROR", "SSH Credentials are required for non-local replication.")
