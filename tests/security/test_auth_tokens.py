"""Issue 11 item 13 (tokens): `auth.generate_token` tokens expire and their number and size are bounded.

As on TrueNAS, `ttl` (default 600, `null` meaning that default) is how long a token lives unused: it expires
`ttl` seconds after it was made or last used to log in. The lifetime asked for is bounded, expired tokens
are dropped from memory, a session may hold only so many live tokens (and all sessions together only so
many), and a token's `attrs` are small.

The server's clock for tokens is moved forward instead of waiting minutes (only the accounts module's
clock: the event loop keeps the real one).
"""
from __future__ import annotations

import errno
import time
from typing import Any

import pytest

from middlewared_plugin.auth import accounts
from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer


class Clock:
    """The accounts module's `time`, running `offset` seconds ahead of the real one."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(accounts, "time", fake)
    return fake


async def token_login(server: TestServer, token: str) -> bool:
    client = await server.client(None)
    answer = await client.call("auth.login_ex", {"mechanism": "TOKEN_PLAIN", "token": token})
    return answer["response_type"] == "SUCCESS"


async def invalid(client: Client, *params: Any) -> list[str]:
    """The attributes an `auth.generate_token` call that must be invalid is refused for."""
    with pytest.raises(ValidationErrors) as refused:
        await client.call("auth.generate_token", *params)
    return [attribute for attribute, _message, _errno in refused.value.triples()]


async def busy(client: Client, *params: Any) -> str:
    """The reason an `auth.generate_token` call that must find no room is refused with (EBUSY)."""
    with pytest.raises(ClientException) as refused:
        await client.call("auth.generate_token", *params)
    assert refused.value.errno == errno.EBUSY, refused.value
    return refused.value.reason


@pytest.mark.parametrize("ttl", [0, -1, 24 * 3600 + 1, 10**12])
async def test_the_lifetime_asked_for_is_bounded(server: TestServer, ttl: int) -> None:
    admin = await server.client()
    assert await invalid(admin, ttl) == ["ttl"]


async def test_a_null_ttl_is_the_default_lifetime_not_for_ever(server: TestServer, clock: Clock) -> None:
    admin = await server.client()
    token, kept = await admin.call("auth.generate_token", None), await admin.call("auth.generate_token", None)
    clock.offset = 590
    assert await token_login(server, kept)

    clock.offset = 601

    assert not await token_login(server, token)
    assert await token_login(server, kept)  # used at 590: it lives until 1190


async def test_a_token_expires_ttl_seconds_after_its_last_use(server: TestServer, clock: Clock) -> None:
    admin = await server.client()
    token = await admin.call("auth.generate_token", 100)
    for offset in (80, 160, 240):
        clock.offset = offset
        assert await token_login(server, token), offset

    clock.offset = 341

    assert not await token_login(server, token)


async def test_expired_tokens_are_dropped_from_memory(server: TestServer, clock: Clock) -> None:
    admin = await server.client()
    for _ in range(20):
        await admin.call("auth.generate_token", 10, {"note": "x" * 1000})
    clock.offset = 11

    await admin.call("auth.generate_token", 10)

    assert len(server.app.accounts._tokens) == 1


async def test_a_session_holds_a_bounded_number_of_tokens(server: TestServer, clock: Clock) -> None:
    admin, other = await server.client(), await server.client()
    for _ in range(accounts.MAX_TOKENS_PER_SESSION):
        await admin.call("auth.generate_token", 60)

    reason = await busy(admin, 60)

    assert f"{accounts.MAX_TOKENS_PER_SESSION} authentication tokens" in reason
    await other.call("auth.generate_token", 60)  # another session has its own allowance
    clock.offset = 61  # once they expire, the session may make new ones
    await admin.call("auth.generate_token", 60)


async def test_all_sessions_together_hold_a_bounded_number_of_tokens(
    server: TestServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts, "MAX_TOKENS", 3)
    clients = [await server.client() for _ in range(4)]
    for client in clients[:3]:
        await client.call("auth.generate_token")

    assert "Too many authentication tokens" in await busy(clients[3])


@pytest.mark.parametrize("attrs", [
    {"blob": "x" * 5000},
    {f"key{i}": i for i in range(1000)},
    {"deep": [[["x" * 100] * 10] * 10]},
])
async def test_attrs_are_small(server: TestServer, attrs: dict[str, Any]) -> None:
    admin = await server.client()
    assert await invalid(admin, 600, attrs) == ["attrs"]
    assert len(server.app.accounts._tokens) == 0
    await admin.call("auth.generate_token", 600, {"note": "x" * 3000})  # a reasonable size is fine
