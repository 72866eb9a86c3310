"""The legacy DDP-like protocol on `GET /websocket` (reference §1.10), spoken with raw WebSocket frames."""
from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed

from middlewared_plugin.protocol.connection import MAX_EXECUTING_CALLS, MAX_INFLIGHT_CALLS
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.integration.protocol.conftest import Sampled

CONNECT = {"msg": "connect", "version": "1", "support": ["1"]}
_ids = itertools.count(1)


class Ddp:
    """A bare legacy peer: sends what it is given and keeps every message it reads, in order."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.received.append(message)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        for message in self.received:
            if predicate(message):
                return message
        while True:
            message = await self.recv(timeout)
            if predicate(message):
                return message

    async def connect(self) -> str:
        await self.send(CONNECT)
        answer = await self.recv()
        assert answer["msg"] == "connected", answer
        return answer["session"]

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        """Send a `method` message; returns its `result` message (events read meanwhile stay in `received`)."""
        id_ = str(next(_ids))
        await self.send({"msg": "method", "id": id_, "method": method, "params": list(params)})
        return await self.until(lambda m: m.get("msg") == "result" and m.get("id") == id_)

    async def result(self, method: str, *params: Any) -> Any:
        answer = await self.call(method, *params)
        assert "error" not in answer, answer
        return answer["result"]

    async def login(self) -> None:
        assert await self.result("auth.login", ADMIN, ADMIN_PASSWORD) is True

    async def sub(self, name: str, id_: str = "s1") -> dict[str, Any]:
        await self.send({"msg": "sub", "id": id_, "name": name})
        return await self.until(
            lambda m: m == {"msg": "ready", "subs": [id_]} or (m.get("msg") == "nosub" and m.get("id") == id_)
        )

    def job_events(self, job_id: int) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("collection") == "core.get_jobs" and m.get("id") == job_id]

    async def closed(self) -> int | None:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), 5)
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None


@pytest.fixture
async def ddp(server: TestServer) -> AsyncIterator[Callable[..., Any]]:
    """A factory of legacy peers, not yet connected; all are closed at teardown."""
    opened: list[ClientConnection] = []

    async def open_peer() -> Ddp:
        ws = await connect(f"ws://127.0.0.1:{server.port}/websocket", max_size=None)
        opened.append(ws)
        return Ddp(ws)

    yield open_peer
    for ws in opened:
        await ws.close()


async def ready_peer(ddp: Callable[..., Any]) -> Ddp:
    peer = await ddp()
    await peer.connect()
    await peer.login()
    return peer


# Handshake ------------------------------------------------------------------------------------------------

async def test_connect_answers_connected_with_a_session_uuid(ddp) -> None:
    peer = await ddp()
    session = await peer.connect()
    assert str(uuid.UUID(session)) == session
    assert await peer.result("core.ping") == "pong"


async def test_anything_before_connect_fails_and_connect_still_works_after(ddp) -> None:
    peer = await ddp()
    await peer.send({"msg": "method", "id": "1", "method": "core.ping", "params": []})
    assert await peer.recv() == {"msg": "failed", "version": "1"}
    await peer.send({"msg": "ping", "id": "p"})
    assert await peer.recv() == {"msg": "failed", "version": "1"}
    await peer.connect()
    assert await peer.result("core.ping") == "pong"


async def test_a_wrong_version_fails(ddp) -> None:
    peer = await ddp()
    await peer.send({"msg": "connect", "version": "pre2", "support": ["pre2"]})
    assert await peer.recv() == {"msg": "failed", "version": "1"}
    await peer.send({"msg": "method", "id": "1", "method": "core.ping", "params": []})
    assert await peer.recv() == {"msg": "failed", "version": "1"}


async def test_ping_answers_pong_with_the_same_id(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    await peer.send({"msg": "ping", "id": "abc"})
    assert await peer.recv() == {"msg": "pong", "id": "abc"}


async def test_a_message_without_a_known_shape_is_a_bad_request(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    await peer.send({"msg": "method", "id": "1", "method": "core.ping", "params": {"named": 1}})
    answer = await peer.recv()
    assert answer["msg"] == "error"
    assert answer["offendingMessage"]["id"] == "1"
    await peer.send({"msg": "sub", "id": ["not", "a", "key"], "name": "core.get_jobs"})
    assert (await peer.recv())["msg"] == "error"
    assert await peer.result("core.ping") == "pong"


# Calls and errors ----------------------------------------------------------------------------------------

async def test_unauthenticated_call_is_error_207(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    error = (await peer.call("core.get_jobs"))["error"]
    assert error["error"] == 207
    assert error["errname"] == "ENOTAUTHENTICATED"
    assert error["type"] is None
    assert error["reason"] == "[ENOTAUTHENTICATED] Not authenticated"
    # Who has not logged in gets no traceback (TrueNAS sends one; issue 11 item 10).
    assert error["trace"] is None


async def test_login_with_auth_login_then_a_call(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    assert await peer.result("auth.login", ADMIN, "wrong password") is False
    await peer.login()
    assert (await peer.result("auth.me"))["pw_name"] == ADMIN
    assert isinstance(await peer.result("core.get_jobs"), list)


async def test_validation_errors_are_type_validation_errno_11_with_triples(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    error = (await peer.call("sample.nested", {"count": "three"}, True, "extra"))["error"]
    assert error["type"] == "VALIDATION"
    assert (error["error"], error["errname"]) == (11, "EAGAIN")
    assert error["extra"] == [["", "Too many arguments (expected 2, found 3)", 22]]
    error = (await peer.call("sample.nested", {"count": "three"}))["error"]
    assert error["type"] == "VALIDATION"
    assert error["error"] == 11
    assert error["extra"] == [["data.count", "Input should be a valid integer", 22]]
    assert error["reason"] == "[EINVAL] data.count: Input should be a valid integer"


async def test_a_single_validation_error_keeps_its_errno(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    error = (await peer.call("sample.thing.get_instance", 999))["error"]
    assert error["type"] == "VALIDATION"
    assert (error["error"], error["errname"]) == (2, "ENOENT")
    assert error["extra"] == [[None, "SampleThing 999 does not exist", 2]]


async def test_call_errors_carry_errno_and_no_type(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    error = (await peer.call("sample.fail_plain", 16))["error"]
    assert (error["error"], error["errname"], error["type"]) == (16, "EBUSY", None)
    assert error["reason"] == "[EBUSY] Sample failure"


async def test_unknown_method(ddp) -> None:
    peer = await ready_peer(ddp)
    error = (await peer.call("no.such_method"))["error"]
    assert (error["error"], error["errname"], error["type"]) == (201, "ENOMETHOD", None)
    assert "does not exist" in error["reason"]


# Jobs and subscriptions ---------------------------------------------------------------------------------

async def test_a_job_returns_its_id_and_core_get_jobs_events_follow_as_ddp(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    # Held-back jobs are a JSON-RPC option: on /websocket a job call answers with its id regardless.
    await peer.result("core.set_options", {"legacy_jobs": False})
    assert await peer.sub("core.get_jobs") == {"msg": "ready", "subs": ["s1"]}
    answer = await peer.call("sample.gated", "legacy")
    job_id = answer["result"]
    assert isinstance(job_id, int)
    added = await peer.until(lambda m: m.get("msg") == "added" and m.get("id") == job_id)
    assert added["collection"] == "core.get_jobs"
    assert added["fields"]["state"] == "WAITING"
    assert added["fields"]["method"] == "sample.gated"
    assert added["fields"]["message_ids"] == [answer["id"]]
    sampled.svc.gate.set()
    done = await peer.until(lambda m: m.get("msg") == "changed" and m.get("id") == job_id
                            and m["fields"]["state"] == "SUCCESS")
    assert done["fields"]["result"] == "legacy"
    assert set(done) == {"msg", "collection", "id", "fields"}


async def test_unsub_stops_events(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    await peer.sub("core.get_jobs")
    first = await peer.result("sample.with_secret", "u", "p")
    await peer.until(lambda m: m.get("id") == first and m.get("fields", {}).get("state") == "SUCCESS")
    await peer.send({"msg": "unsub", "id": "s1"})
    second = await peer.result("sample.with_secret", "u", "p")
    # Responses and events share one ordered queue: once a query sees the job done, its events were sent.
    for _ in range(100):
        if (await peer.result("core.get_jobs", [["id", "=", second]], {"get": True}))["state"] == "SUCCESS":
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the second job did not finish")
    assert peer.job_events(first)
    assert peer.job_events(second) == []


async def test_sub_before_login_is_refused_with_nosub_207(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    answer = await peer.sub("core.get_jobs")
    assert answer["msg"] == "nosub"
    assert answer["id"] == "s1"
    assert answer["error"]["error"] == 207


async def test_sub_to_an_unknown_event_is_refused(ddp) -> None:
    peer = await ready_peer(ddp)
    answer = await peer.sub("no.such_event")
    assert answer["msg"] == "nosub"
    assert answer["error"]["errname"] == "ENOENT"


async def test_sub_without_the_event_role_is_refused(ddp, server: TestServer) -> None:
    await server.add_user("reader", "reader-password", ["SNAPSHOT_TASK_READ"])
    peer = await ddp()
    await peer.connect()
    assert await peer.result("auth.login", "reader", "reader-password") is True
    answer = await peer.sub("replication.query")
    assert answer["msg"] == "nosub"
    assert answer["error"]["error"] == 13
    assert answer["error"]["reason"] == "[EACCES] Not authorized"


# Shared connection rules --------------------------------------------------------------------------------

async def test_unix_socket_root_is_logged_in_automatically(server: TestServer) -> None:
    path = server.socket_uri.removeprefix("ws+unix://")
    async with unix_connect(path, "ws://localhost/websocket") as ws:
        peer = Ddp(ws)
        await peer.connect()
        assert (await peer.result("auth.me"))["pw_name"] == "root"
        assert await peer.sub("core.get_jobs") == {"msg": "ready", "subs": ["s1"]}


async def test_more_than_8_kib_before_login_closes_1007(ddp) -> None:
    peer = await ddp()
    await peer.connect()
    await peer.send({"msg": "ping", "id": "p", "pad": "x" * 8 * 1024})
    assert await peer.closed() == 1007


async def test_ten_calls_execute_twenty_in_flight_and_the_21st_is_refused(ddp, sampled: Sampled) -> None:
    peer = await ready_peer(ddp)
    for i in range(MAX_INFLIGHT_CALLS + 1):
        await peer.send({"msg": "method", "id": f"b{i}", "method": "sample.block", "params": []})
    refused = await peer.recv()
    assert refused["id"] == f"b{MAX_INFLIGHT_CALLS}"
    assert refused["error"]["errname"] == "EBUSY"
    assert refused["error"]["reason"] == "Maximum number of concurrent calls (20) has exceeded"
    for _ in range(250):
        if sampled.svc.executing == MAX_EXECUTING_CALLS:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and no more start
    assert sampled.svc.executing == MAX_EXECUTING_CALLS
    sampled.svc.gate.set()
    answers = [await peer.recv() for _ in range(MAX_INFLIGHT_CALLS)]
    assert sorted(a["id"] for a in answers) == sorted(f"b{i}" for i in range(MAX_INFLIGHT_CALLS))
    assert all(a["result"] == "released" for a in answers)
