"""Many clients at once: no reply or event is lost (reference §1.2, §1.6, §1.9)."""
from __future__ import annotations

import asyncio
from typing import Any

from middlewared_plugin.client import Client
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer

CLIENTS = 50
PINGS = 20
PING_WAVE = 10
BULK_CALLS = 3


def drain(client: Client) -> list[dict[str, Any]]:
    notifications = []
    while not client.notifications.empty():
        notifications.append(client.notifications.get_nowait())
    return notifications


async def run_client(server: TestServer, index: int) -> dict[str, Any]:
    """One §1.9 client: connect, log in, subscribe to jobs, run a bulk job and pings all at once."""
    description = f"client {index}"
    async with Client(server.url, legacy_jobs=False) as client:
        assert await client.login_with_password(ADMIN, ADMIN_PASSWORD)
        await client.call("core.subscribe", "core.get_jobs")
        job = asyncio.ensure_future(client.call("core.bulk", "core.ping", [[]] * BULK_CALLS, description, job=True))
        # While the job runs, pings in waves that keep the connection under its 20 in-flight calls.
        pongs = []
        for _ in range(PINGS // PING_WAVE):
            pongs += await asyncio.gather(*(client.call("core.ping") for _ in range(PING_WAVE)))
        result = await job
        events = [n["params"] for n in drain(client) if n.get("method") == "collection_update"]
    own = [e for e in events if e["fields"]["arguments"][2:] == [description]]
    return {
        "result": result,
        "pongs": pongs,
        "job_ids": {e["id"] for e in own},
        "own": [(e["msg"], e["fields"]["state"]) for e in own],
    }


async def test_fifty_clients_lose_no_reply_and_no_event(server: TestServer) -> None:
    outcomes = await asyncio.wait_for(asyncio.gather(*(run_client(server, i) for i in range(CLIENTS))), 45)
    job_ids = set()
    for outcome in outcomes:
        assert outcome["pongs"] == ["pong"] * PINGS
        assert outcome["result"] == [{"job_id": None, "error": None, "result": "pong"}] * BULK_CALLS
        assert len(outcome["job_ids"]) == 1
        job_ids |= outcome["job_ids"]
        own = outcome["own"]
        assert len(own) >= 3
        assert own[0] == ("added", "WAITING")
        assert own[1] == ("changed", "RUNNING")
        assert own[-1] == ("changed", "SUCCESS")
    assert len(job_ids) == CLIENTS
    # Every job finished on the server as well.
    async with Client(server.socket_uri) as root:
        assert await root.call("core.get_jobs", [["state", "=", "SUCCESS"]], {"count": True}) == CLIENTS
