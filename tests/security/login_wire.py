"""Bare WebSocket peers for the login tests: from any loopback source address, JSON-RPC or legacy protocol,
with calls pipelined (all sent before any answer is read) as an attacker would send them."""
from __future__ import annotations

import itertools
import json
import re
from contextlib import AsyncExitStack
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.fixtures.server import TestServer

RATE_LIMITED = re.compile(r"^\[EBUSY\] Rate Limit Exceeded: too many failed login attempts; retry in (\d+) seconds$")

_ids = itertools.count(1)


class Peer:
    def __init__(self, ws: ClientConnection, legacy: bool):
        self.ws = ws
        self.legacy = legacy

    async def pipeline(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """Send every call, then read their answers (in call order): JSON-RPC responses, or legacy results."""
        ids = [next(_ids) for _ in calls]
        for id_, (method, params) in zip(ids, calls, strict=True):
            if self.legacy:
                message = {"msg": "method", "id": id_, "method": method, "params": params}
            else:
                message = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
            await self.ws.send(json.dumps(message))
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < len(ids):
            message = json.loads(await self.ws.recv())
            if message.get("id") in ids and (not self.legacy or message.get("msg") == "result"):
                answers[message["id"]] = message
        return [answers[id_] for id_ in ids]

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        [answer] = await self.pipeline([(method, list(params))])
        return answer


class Peers:
    """Opens peers on a server and closes them all at the end (`async with`)."""

    def __init__(self, server: TestServer):
        self.server = server
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Peers:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(*exc)

    async def open(self, source: str = "127.0.0.1", *, legacy: bool = False) -> Peer:
        url = f"ws://127.0.0.1:{self.server.port}/websocket" if legacy else self.server.url
        ws = await self._stack.enter_async_context(connect(url, max_size=None, local_addr=(source, 0)))
        peer = Peer(ws, legacy)
        if legacy:
            await ws.send(json.dumps({"msg": "connect", "version": "1", "support": ["1"]}))
            assert json.loads(await ws.recv())["msg"] == "connected"
        return peer


def error_reason(answer: dict[str, Any]) -> str | None:
    """The error reason of a JSON-RPC or legacy answer; None when it has a result."""
    if "result" in answer:
        return None
    return answer["error"]["reason"] if "msg" in answer else answer["error"]["data"]["reason"]


def retry_after(answer: dict[str, Any]) -> int:
    """The seconds a rate-limit refusal says to wait (fails the test if it is no such refusal)."""
    reason = error_reason(answer)
    match = RATE_LIMITED.match(reason or "")
    assert match is not None, answer
    return int(match.group(1))


def is_rate_limited(answer: dict[str, Any]) -> bool:
    return RATE_LIMITED.match(error_reason(answer) or "") is not None
