"""Fixtures of the protocol suite: the real server with the test-only services, and raw WebSocket peers."""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.integration.protocol.sample_services import SampleService, SampleThingService, install


@dataclass
class Sampled:
    server: TestServer
    svc: SampleService
    things: SampleThingService


@pytest.fixture
async def sampled(server: TestServer) -> AsyncIterator[Sampled]:
    svc, things = await install(server.app, SampleService, SampleThingService)
    # Let every blocked sample method finish before the server stops.
    yield Sampled(server, svc, things)
    svc.gate.set()


#: Request ids of `Raw.call`, unique across all peers of a run.
_request_ids = itertools.count(1)


class Raw:
    """A bare WebSocket peer: sends exactly what it is given and hands back every message in order."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.received.append(message)
        return message

    async def nothing_within(self, seconds: float) -> bool:
        """True when no message arrives in `seconds`."""
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False

    async def until(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Read until a message satisfies `predicate`; returns it (everything read stays in `received`)."""
        for message in self.received:
            if predicate(message):
                return message
        while True:
            message = await self.recv(timeout)
            if predicate(message):
                return message

    async def job_event(self, job_id: int, state: str, timeout: float = 10.0) -> dict[str, Any]:
        """The `fields` of the first job event of `job_id` in `state` (already received or still to come)."""
        message = await self.until(lambda m: m.get("method") == "collection_update"
                                   and m["params"]["collection"] == "core.get_jobs"
                                   and m["params"]["id"] == job_id and m["params"]["fields"]["state"] == state,
                                   timeout)
        return message["params"]["fields"]

    async def call(self, method: str, *params: Any, id: Any = None) -> dict[str, Any]:
        """Send a request and return its response; notifications seen meanwhile stay in `received`."""
        id = id if id is not None else f"{method}-{next(_request_ids)}"
        await self.send({"jsonrpc": "2.0", "id": id, "method": method, "params": list(params)})
        return await self.response(id)

    async def response(self, id: Any, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = await self.recv(timeout)
            if message.get("id") == id and "method" not in message:
                return message

    async def result(self, method: str, *params: Any) -> Any:
        response = await self.call(method, *params)
        assert "error" not in response, response
        return response["result"]

    async def setup(self, *, legacy_jobs: bool = True, username: str = ADMIN, password: str = ADMIN_PASSWORD,
                    subscribe: bool = True) -> Raw:
        """The §1.9 handshake: options, login, then the `core.get_jobs` subscription."""
        await self.result("core.set_options", {"legacy_jobs": legacy_jobs})
        await self.login(username, password)
        if subscribe:
            await self.result("core.subscribe", "core.get_jobs")
        return self

    async def login(self, username: str = ADMIN, password: str = ADMIN_PASSWORD) -> None:
        answer = await self.result("auth.login_ex", {"mechanism": "PASSWORD_PLAIN", "username": username,
                                                     "password": password})
        assert answer["response_type"] == "SUCCESS"

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd  # what the server sent, not what our side answered
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    def events(self, collection: str = "core.get_jobs", id: Any = None) -> list[dict[str, Any]]:
        """Params of the `collection_update` notifications received so far."""
        return [
            m["params"] for m in self.received
            if m.get("method") == "collection_update" and m["params"]["collection"] == collection
            and (id is None or m["params"].get("id") == id)
        ]


@pytest.fixture
async def raw(server: TestServer) -> AsyncIterator[Any]:
    """A factory of raw peers on the server's TCP endpoint; all are closed at teardown."""
    opened: list[ClientConnection] = []

    async def open_raw(uri: str | None = None) -> Raw:
        ws = await connect(uri or server.url, max_size=None)
        opened.append(ws)
        return Raw(ws)

    yield open_raw
    for ws in opened:
        await ws.close()
