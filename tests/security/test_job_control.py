"""Issue 11 item 4: who may abort a job, rewrite its progress, or wait for it.

A read-only user sees an admin's `replication.run` (the method's `read_roles`) but may not abort it: a user
acts only on jobs it started, unless it holds the write role of the job's namespace. `core.job_update` is
private (full admins only). `core.job_wait` refuses its own id (it would wait forever) and later ids.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.replication.admission import Footprint
from tests.fixtures.server import TestServer

PASSWORD = "user-password"


def local_task(pool: FilePool) -> dict[str, Any]:
    """A local push task in `pool`; its runs never get far here (the slot is taken)."""
    return {
        "name": "nightly", "direction": "PUSH", "transport": "LOCAL", "source_datasets": [f"{pool.name}/src"],
        "target_dataset": f"{pool.name}/dst", "recursive": False,
        "also_include_naming_schema": ["snap-%Y-%m-%d-%H-%M"], "auto": False, "retention_policy": "NONE",
    }


@contextlib.asynccontextmanager
async def slot_taken(server: TestServer, task: dict[str, Any]) -> AsyncIterator[None]:
    """Another run holds the replication slot for the task's target: its runs wait (their job RUNNING)."""
    slots = server.app.service("replication").runs.slots
    taken, release = asyncio.Event(), asyncio.Event()
    other = Footprint("other", "other", "PUSH", "", ("elsewhere",), task["target_dataset"])

    async def hold() -> None:
        async with slots.slot(other, lambda _: None):
            taken.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await taken.wait()
    try:
        yield
    finally:
        release.set()
        await holder


async def job_of(client: Client, job_id: int) -> dict[str, Any]:
    return await client.call("core.get_jobs", [["id", "=", job_id]], {"get": True})


async def job_when(client: Client, job_id: int, done: Callable[[dict[str, Any]], bool],
                   timeout: float = 10) -> dict[str, Any]:
    """The job's record once `done(record)` holds; looked at again on each job event."""
    changed = asyncio.Event()
    subscription = await client.subscribe("core.get_jobs", lambda _: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while not done(job := await job_of(client, job_id)):
                await changed.wait()
                changed.clear()
    finally:
        await client.unsubscribe(subscription)
    return job


async def wait_for_state(client: Client, job_id: int, states: tuple[str, ...], timeout: float = 10) -> dict[str, Any]:
    return await job_when(client, job_id, lambda job: job["state"] in states, timeout)


async def user(server: TestServer, name: str, roles: list[str]) -> Client:
    await server.add_user(name, PASSWORD, roles)
    return await server.client(name, PASSWORD, legacy_jobs=True)


async def test_a_reader_may_neither_abort_nor_rewrite_an_admins_run(server: TestServer, pool: FilePool) -> None:
    admin = await server.client(legacy_jobs=True)
    task = await admin.call("replication.create", local_task(pool))
    reader = await user(server, "reader", ["READONLY_ADMIN"])
    other_writer = await user(server, "snapper", ["READONLY_ADMIN", "SNAPSHOT_TASK_WRITE"])
    operator = await user(server, "operator", ["REPLICATION_TASK_WRITE"])
    async with slot_taken(server, task):
        job_id = await admin.call("replication.run", task["id"])
        waiting = await job_when(admin, job_id, lambda job: job["progress"]["description"].startswith("Waiting"))
        progress = waiting["progress"]
        # The reader sees the run (read_roles) ...
        assert (await job_of(reader, job_id))["method"] == "replication.run"
        # ... but may not stop it, nor may a writer of another namespace.
        for client in (reader, other_writer):
            with pytest.raises(ClientException) as raised:
                await client.call("core.job_abort", job_id)
            assert raised.value.errno == errno.EPERM
        with pytest.raises(ClientException) as raised:
            await reader.call("core.job_update", job_id, {"progress": {"percent": 99, "description": "pwned"}})
        assert raised.value.errno == errno.EACCES
        await asyncio.sleep(0.2)  # an abort or update would have landed by now
        job = await job_of(admin, job_id)
        assert (job["state"], job["progress"]) == ("RUNNING", progress)
        # The write role of the job's namespace lets a user act on runs it did not start.
        assert await operator.call("core.job_abort", job_id) is None
        assert (await wait_for_state(admin, job_id, ("ABORTED",)))["state"] == "ABORTED"


async def test_a_user_still_aborts_its_own_job(server: TestServer, pool: FilePool) -> None:
    admin = await server.client()
    task = await admin.call("replication.create", local_task(pool))
    operator = await user(server, "operator", ["REPLICATION_TASK_WRITE"])
    async with slot_taken(server, task):
        job_id = await operator.call("replication.run", task["id"])
        await wait_for_state(operator, job_id, ("RUNNING",))
        assert await operator.call("core.job_abort", job_id) is None
        assert (await wait_for_state(operator, job_id, ("ABORTED",)))["state"] == "ABORTED"


async def test_job_wait_refuses_its_own_id(server: TestServer) -> None:
    client = await server.client(legacy_jobs=True)
    before = await client.call("core.bulk", "core.ping", [])
    await wait_for_state(client, before, ("SUCCESS",))
    # The next job is the waiter itself: it would hold its caller's call slot forever.
    waiter = await client.call("core.job_wait", before + 1)
    assert waiter == before + 1
    failed = await wait_for_state(client, waiter, ("SUCCESS", "FAILED", "ABORTED"), timeout=5)
    assert failed["state"] == "FAILED"
    assert failed["exc_info"]["errno"] == errno.EINVAL
    # A job started before it can be waited for.
    assert await client.call("core.job_wait", before) == waiter + 1
    assert (await wait_for_state(client, waiter + 1, ("SUCCESS",)))["result"] == []  # the bulk of no calls
