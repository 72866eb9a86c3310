"""Issue 11 item 13 (second half): what a connection costs while open, and that closing it gives it all back.

Measured with tracemalloc around real WebSocket connections to the in-process server (client and server
sides both count, as both live in this process).
"""
from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect, unix_connect

from middlewared_plugin.protocol.connection import BaseConnection
from tests.fixtures.server import TestServer

CONNECTIONS = 500
KIB = 1024


@contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def traced_now(server: TestServer) -> int:
    """Traced bytes once the server is idle: the job records' database writes (queued on the store's thread)
    done and garbage collected."""
    last = None
    for _ in range(50):
        await asyncio.sleep(0.05)
        await server.app.store.get("jobs", 0)  # behind every write queued so far
        gc.collect()
        now = tracemalloc.get_traced_memory()[0]
        if last is not None and abs(now - last) < 64 * KIB:
            break
        last = now
    return now


async def live_connections(server: TestServer) -> list[BaseConnection]:
    """The server's connection objects still alive after the tested ones closed.

    Under pytest something outside the server keeps the most recent connection object until the next one is
    made (not in a plain script, and never more than one), so a last plain connection is opened first.
    """
    async with as_root(server) as ws:
        await call(ws, 0, "core.ping")
    for _ in range(50):
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, BaseConnection) and o.app is server.app
                 and o.session.options["legacy_jobs"] is False]
        if not alive:
            break
        await asyncio.sleep(0.1)
    return alive


async def call(ws: ClientConnection, id_: int, method: str, *params: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": list(params)}))
    while "id" not in (answer := json.loads(await ws.recv())) or answer["id"] != id_:
        pass
    return answer


@asynccontextmanager
async def as_root(server: TestServer) -> AsyncIterator[ClientConnection]:
    """A connection over the unix socket, where uid 0 is logged in as root without a password round."""
    async with unix_connect(str(server.app.settings.unix_socket), "ws://localhost/api/current") as ws:
        yield ws


async def test_item13_a_connection_whose_held_back_job_failed_is_freed_on_close(server: TestServer) -> None:
    async def one() -> None:
        async with as_root(server) as ws:
            await call(ws, 1, "core.set_options", {"legacy_jobs": False})
            # A job that fails (no such job to wait for); the call's response is held back until then.
            answer = await call(ws, 2, "core.job_wait", 10 ** 9)
            assert answer["error"]["code"] == -32001, answer

    for _ in range(10):  # warm-up: caches, first-use imports
        await one()
    jobs_before = len(server.app.jobs.jobs)
    with traced():
        before = await traced_now(server)
        for _ in range(CONNECTIONS):
            await one()
        grown = await traced_now(server) - before
    failed = [j for j in list(server.app.jobs.jobs.values())[jobs_before:]
              if getattr(j, "method", None) == "core.job_wait"]
    assert len(failed) == CONNECTIONS and all(j.raised is not None for j in failed)
    # The failed jobs are remembered (with their own traceback), their callers' connections are not.
    assert await live_connections(server) == []
    assert grown < CONNECTIONS * 16 * KIB, f"{grown / CONNECTIONS / KIB:.1f} KiB kept per closed connection"


async def test_item13_idle_connections_are_cheap_and_give_their_memory_back(server: TestServer) -> None:
    async with as_root(server):
        pass  # warm-up
    with traced():
        before = await traced_now(server)
        opened = []
        for i in range(CONNECTIONS // 5):
            # The library's default client, which offers permessage-deflate.
            ws = await connect(server.url)
            await call(ws, i, "core.set_options", {"legacy_jobs": False})  # what live_connections looks for
            opened.append(ws)
        per_connection = (await traced_now(server) - before) / len(opened)
        for ws in opened:
            await ws.close()
        del ws, opened
        kept = await traced_now(server) - before
    # Both ends count here; a compressing pair costs about 130 KiB, a plain one about 45.
    assert per_connection < 64 * KIB, f"{per_connection / KIB:.1f} KiB per idle connection"
    assert await live_connections(server) == []
    assert kept < CONNECTIONS // 5 * 4 * KIB, f"{kept / KIB:.0f} KiB kept after closing every connection"
