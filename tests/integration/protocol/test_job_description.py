"""Issue 13 item 8: a job's `description` is what the method's `@job(description=...)` makes of its arguments
on TrueNAS, and none of the job methods we serve declares one there (replication.run, replication.run_onetime,
pool.snapshottask.run, pool.export, pool.import_pool, core.bulk, core.job_wait): their jobs show null, and the
task manager names them by method. `core.bulk`'s own `description` argument only words its progress."""
from __future__ import annotations

from tests.fixtures.server import TestServer


async def test_core_bulk_description_argument_is_progress_text_not_the_job_description(server: TestServer) -> None:
    client = await server.client()

    results = await client.call("core.bulk", "core.ping", [[], []], "pinging", job=True)

    assert [r["result"] for r in results] == ["pong", "pong"]
    [job] = await client.call("core.get_jobs", [["method", "=", "core.bulk"]])
    assert job["description"] is None
    assert "pinging" in job["progress"]["description"]
