"""`state` and `job` of replication entries (reference §3): what the engine reports through `set_state`,
what survives a restart, and which `replication.run` job an entry points at."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from middlewared_plugin.jobs.job import Job
from tests.fixtures.server import TestServer
from tests.integration.replication_api.conftest import Env

FINISHED_AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
#: How clients receive it: ejson's `{"$date": ms}` (what the web UI reads as `state.datetime.$date`).
FINISHED_AT_WIRE = {"$date": 1714566600000}


async def _events(received: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        if len(received) >= count:
            break
        await asyncio.sleep(0.02)
    return received


async def test_a_new_task_is_pending_without_a_job(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task())
    assert (task["state"], task["job"]) == ({"state": "PENDING"}, None)


async def test_set_state_is_shown_published_and_kept_across_restart(env: Env, server: TestServer) -> None:
    task = await env.client.call("replication.create", await env.task())
    events: list[dict[str, Any]] = []
    await env.client.subscribe("replication.query", events.append)
    service = server.app.service("replication")

    await service.set_state(task["id"], {"state": "RUNNING", "datetime": FINISHED_AT,
                                         "last_snapshot": "tank/src@snap-2024-05-01-12-00"})
    await service.set_state(task["id"], {"state": "FINISHED", "datetime": FINISHED_AT, "warnings": []})
    expected = {"state": "FINISHED", "datetime": FINISHED_AT_WIRE, "warnings": [],
                "last_snapshot": "tank/src@snap-2024-05-01-12-00"}
    assert (await env.client.call("replication.get_instance", task["id"]))["state"] == expected

    # The partial CHANGED event carries `job` inside `state` (unlike query results).
    await _events(events, 2)
    assert [(e["msg"], e["id"]) for e in events] == [("changed", task["id"])] * 2
    assert events[1]["fields"] == {"state": {**expected, "job": None}}

    await server.restart()
    client = await server.client()
    assert (await client.call("replication.get_instance", task["id"]))["state"] == expected
    disabled = await client.call("replication.update", task["id"], {"enabled": False})
    assert disabled["state"] == expected


async def test_a_run_cut_short_by_a_restart_is_reported_as_interrupted(env: Env, server: TestServer) -> None:
    task = await env.client.call("replication.create", await env.task())
    service = server.app.service("replication")
    await service.set_state(task["id"], {"state": "ERROR", "datetime": FINISHED_AT, "error": "Pool is gone."})
    await service.set_state(task["id"], {"state": "RUNNING", "datetime": FINISHED_AT})
    assert (await env.client.call("replication.get_instance", task["id"]))["state"]["state"] == "RUNNING"
    await server.restart()
    client = await server.client()
    state = (await client.call("replication.get_instance", task["id"]))["state"]
    # Neither the state from before the run nor a RUNNING that nothing runs any more.
    assert state["state"] == "ERROR"
    assert state["error"].startswith("Interrupted: the server stopped during this run")


async def test_delete_forgets_the_state(env: Env, server: TestServer) -> None:
    task = await env.client.call("replication.create", await env.task())
    service = server.app.service("replication")
    await service.set_state(task["id"], {"state": "FINISHED", "datetime": FINISHED_AT, "warnings": []})
    await env.client.call("replication.delete", task["id"])
    await server.restart()
    assert server.app.service("replication").states.get(task["id"]) == {"state": "PENDING"}


async def test_job_is_the_latest_run_of_the_task_and_a_running_one_wins(env: Env, server: TestServer) -> None:
    task = await env.client.call("replication.create", await env.task())
    other = await env.client.call("replication.create", await env.task(name="other"))
    release = asyncio.Event()

    async def work(job: Job) -> None:
        await release.wait()

    def submit(task_id: int) -> Job:
        # Real jobs under the method name the engine will use; one lock keeps the second one WAITING.
        return server.app.jobs.submit("replication.run", [task_id, {}], work, credentials=None, lock="runs")

    running, queued, unrelated = submit(task["id"]), submit(task["id"]), submit(other["id"])
    await asyncio.sleep(0.05)
    assert (running.state.value, queued.state.value) == ("RUNNING", "WAITING")
    seen = await env.client.call("replication.get_instance", task["id"])
    assert (seen["job"]["id"], seen["job"]["state"]) == (running.id, "RUNNING")
    assert (await env.client.call("replication.get_instance", other["id"]))["job"]["id"] == unrelated.id

    release.set()
    for job in (running, queued, unrelated):
        await server.app.jobs.wait(job)
    seen = await env.client.call("replication.get_instance", task["id"])
    assert (seen["job"]["id"], seen["job"]["state"]) == (queued.id, "SUCCESS")
