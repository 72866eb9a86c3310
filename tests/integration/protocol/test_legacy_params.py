"""Issue 13 item 8: `/websocket` takes the parameters of TrueNAS 24.10's API (TrueNAS converts legacy calls
from its v24.10 models). Of our methods only `replication.run` differs: 24.10 took `really_run` as a second
positional boolean, where the current API takes `options: {really_run}`."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.integration.protocol.test_legacy_websocket import Ddp

SCHEMA = "snap-%Y-%m-%d-%H-%M"


@pytest.fixture
async def peer(server: TestServer) -> AsyncIterator[Ddp]:
    """A connected, logged-in legacy peer."""
    async with connect(f"ws://127.0.0.1:{server.port}/websocket", max_size=None) as ws:
        ddp = Ddp(ws)
        await ddp.connect()
        await ddp.login()
        yield ddp


async def local_task(server: TestServer, pool: FilePool, zfs: Zfs) -> dict[str, Any]:
    """A LOCAL push of one snapshot, run by hand."""
    source = f"{pool.name}/src"
    await zfs.create_dataset(source)
    await zfs.create_snapshots(source, "snap-2026-01-01-00-00")
    client = await server.client()
    return await client.call("replication.create", {
        "name": "legacy", "direction": "PUSH", "transport": "LOCAL", "source_datasets": [source],
        "target_dataset": f"{pool.name}/dst", "recursive": False, "also_include_naming_schema": [SCHEMA],
        "auto": False, "retention_policy": "NONE",
    })


async def finished_job(peer: Ddp, job_id: int) -> dict[str, Any]:
    for _ in range(200):
        [job] = await peer.result("core.get_jobs", [["id", "=", job_id]])
        if job["state"] in ("SUCCESS", "FAILED", "ABORTED"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def test_replication_run_takes_really_run_as_the_second_positional_parameter(
    server: TestServer, peer: Ddp, pool: FilePool, local_zfs: Zfs,
) -> None:
    task = await local_task(server, pool, local_zfs)

    job_id = await peer.result("replication.run", task["id"], True)

    job = await finished_job(peer, job_id)
    assert job["arguments"] == [task["id"], {"really_run": True}]
    assert job["state"] == "SUCCESS", job
    # TrueNAS's `replication.run` declares no job description (see test_job_description.py).
    assert job["description"] is None
    assert await local_zfs.exists(f"{pool.name}/dst@snap-2026-01-01-00-00")


async def test_calls_in_the_current_shape_and_other_methods_pass_through(
    server: TestServer, peer: Ddp, pool: FilePool, local_zfs: Zfs,
) -> None:
    task = await local_task(server, pool, local_zfs)

    job_id = await peer.result("replication.run", task["id"], {"really_run": True})
    assert (await finished_job(peer, job_id))["arguments"] == [task["id"], {"really_run": True}]
    # Only booleans are the v24.10 shape: anything else is validated as the current API's `options`.
    refused = await peer.call("replication.run", task["id"], "yes")
    assert refused["error"]["type"] == "VALIDATION"
    assert refused["error"]["extra"][0][0] == "options"
