"""Issue 11 item 3: the failed-login rate limit holds under any concurrency, for every way of logging in.

Attempts take their slot before the credential is checked, per source address and per user: many sockets
with pipelined calls get no more guesses checked than one socket calling one at a time. Plain and SCRAM API
key logins, tokens, the legacy `auth.login*` methods and the legacy `/websocket` protocol all count alike. A
refusal says when to retry. An attacker guessing from several addresses slows down the user's logins
everywhere but where the user has logged in before, and only for a short time; the unix socket's root
session needs no login and is never refused.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
import scramp

from middlewared_plugin.client import Client
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.security.login_wire import Peers, is_rate_limited, retry_after

OPERATOR = "operator"
SOCKETS, PIPELINED = 10, 20


def password(username: str = ADMIN, secret: str = "wrong") -> dict[str, Any]:
    return {"mechanism": "PASSWORD_PLAIN", "username": username, "password": secret}


def scram_first(username: str, key_id: str) -> dict[str, Any]:
    client = scramp.ScramClient(["SCRAM-SHA-512"], f"{username}:{key_id}", "not-the-secret")
    return {"mechanism": "SCRAM", "scram_type": "CLIENT_FIRST_MESSAGE", "rfc_str": client.get_client_first()}


async def flood(peers: Peers, call: tuple[str, list[Any]], *, legacy: bool = False) -> list[dict[str, Any]]:
    """SOCKETS connections from 127.0.0.1, each sending PIPELINED copies of `call` at once; every answer."""
    sockets = [await peers.open(legacy=legacy) for _ in range(SOCKETS)]
    answers = await asyncio.gather(*(peer.pipeline([call] * PIPELINED) for peer in sockets))
    return [answer for per_socket in answers for answer in per_socket]


@pytest.fixture
async def api_key(server: TestServer) -> str:
    await server.add_user(OPERATOR, "operator-pw", ["READONLY_ADMIN"])
    return await server.app.accounts.create_api_key("ci", OPERATOR)


# Each case: the wrong attempt, what its checked-and-refused answer is, and the right attempt afterwards.
CASES = {
    "login_ex PASSWORD_PLAIN": (
        lambda key: ("auth.login_ex", [password()]),
        lambda result: result == {"response_type": "AUTH_ERR"},
        lambda key: ("auth.login_ex", [password(secret=ADMIN_PASSWORD)]),
    ),
    "auth.login": (
        lambda key: ("auth.login", [ADMIN, "wrong"]),
        lambda result: result is False,
        lambda key: ("auth.login", [ADMIN, ADMIN_PASSWORD]),
    ),
    "login_ex API_KEY_PLAIN": (
        lambda key: ("auth.login_ex", [{"mechanism": "API_KEY_PLAIN", "username": OPERATOR,
                                        "api_key": key.partition("-")[0] + "-wrong"}]),
        lambda result: result == {"response_type": "AUTH_ERR"},
        lambda key: ("auth.login_ex", [{"mechanism": "API_KEY_PLAIN", "username": OPERATOR, "api_key": key}]),
    ),
    "auth.login_with_api_key": (
        lambda key: ("auth.login_with_api_key", [key.partition("-")[0] + "-wrong"]),
        lambda result: result is False,
        lambda key: ("auth.login_with_api_key", [key]),
    ),
    # A SCRAM guess is checked at the second message; the first one, answered with the salt and
    # iterations, is what lets a guess be made, so it is what must be limited.
    "login_ex SCRAM": (
        lambda key: ("auth.login_ex", [scram_first(OPERATOR, key.partition("-")[0])]),
        lambda result: result["response_type"] == "SCRAM_RESPONSE",
        lambda key: ("auth.login_ex", [scram_first(OPERATOR, key.partition("-")[0])]),
    ),
    "login_ex TOKEN_PLAIN": (
        lambda key: ("auth.login_ex", [{"mechanism": "TOKEN_PLAIN", "token": "made-up"}]),
        lambda result: result == {"response_type": "AUTH_ERR"},
        None,
    ),
    "auth.login_with_token": (
        lambda key: ("auth.login_with_token", ["made-up"]),
        lambda result: result is False,
        None,
    ),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["jsonrpc", "legacy-websocket"])
@pytest.mark.parametrize("case", list(CASES))
async def test_concurrent_pipelined_attempts_get_no_more_checks_than_the_limit(
    server: TestServer, api_key: str, case: str, legacy: bool,
) -> None:
    wrong, checked_answer, right = CASES[case]
    limit = server.app.login_limiter.max_failures
    async with Peers(server) as peers:
        answers = await flood(peers, wrong(api_key), legacy=legacy)

        checked = [a for a in answers if "result" in a]
        assert all(checked_answer(a["result"]) for a in checked), checked
        assert len(checked) == limit, f"{len(checked)} of {len(answers)} attempts were checked"
        refused = [a for a in answers if "result" not in a]
        assert len(refused) == len(answers) - limit and all(is_rate_limited(a) for a in refused), refused[:3]
        if legacy:
            assert {(a["error"]["error"], a["error"]["errname"]) for a in refused} == {(16, "EBUSY")}
        else:
            assert {a["error"]["data"]["errname"] for a in refused} == {"EBUSY"}

        if right is not None:  # now even the right credential waits, on a new connection too
            [late] = await (await peers.open(legacy=legacy)).pipeline([right(api_key)])
            assert 0 < retry_after(late) <= server.app.login_limiter.window


async def test_the_unix_socket_root_session_is_not_limited(server: TestServer) -> None:
    async with Peers(server) as peers:
        await flood(peers, ("auth.login", [ADMIN, "wrong"]))
        assert is_rate_limited(await (await peers.open()).call("auth.login", ADMIN, ADMIN_PASSWORD))
    async with Client(server.socket_uri) as root:
        assert (await root.call("auth.me"))["pw_name"] == "root"


async def test_the_refusal_says_truly_when_to_retry(server: TestServer) -> None:
    server.app.login_limiter.window = 4.0
    async with Peers(server) as peers:
        peer = await peers.open()
        await peer.pipeline([("auth.login", [ADMIN, "wrong"])] * server.app.login_limiter.max_failures)
        wait = retry_after(await peer.call("auth.login", ADMIN, ADMIN_PASSWORD))
        assert 0 < wait <= 4

        await asyncio.sleep(wait)

        assert (await peer.call("auth.login", ADMIN, ADMIN_PASSWORD))["result"] is True


async def test_a_success_gives_its_slot_back(server: TestServer) -> None:
    limit = server.app.login_limiter.max_failures
    async with Peers(server) as peers:
        peer = await peers.open()
        for _ in range(2 * limit):
            assert (await peer.call("auth.login", ADMIN, ADMIN_PASSWORD))["result"] is True
        answers = await peer.pipeline([("auth.login", [ADMIN, "wrong"])] * (limit - 1))
        assert [a.get("result") for a in answers] == [False] * (limit - 1)
        assert (await peer.call("auth.login", ADMIN, ADMIN_PASSWORD))["result"] is True


async def test_a_scram_login_counts_until_its_proof_and_not_after(server: TestServer, api_key: str) -> None:
    for _ in range(server.app.login_limiter.max_failures + 2):
        assert await (await server.client(None)).login_with_api_key(api_key, OPERATOR) is True
    async with Peers(server) as peers:  # half-done exchanges count as failures
        peer = await peers.open()
        key_id = api_key.partition("-")[0]
        for _ in range(server.app.login_limiter.max_failures):
            assert (await peer.call("auth.login_ex", scram_first(OPERATOR, key_id)))["result"]["response_type"] \
                == "SCRAM_RESPONSE"
        assert is_rate_limited(await peer.call("auth.login_ex", scram_first(OPERATOR, key_id)))


async def test_many_good_logins_at_once_are_queued_not_refused(server: TestServer) -> None:
    async with Peers(server) as peers:
        answers = await flood(peers, ("auth.login_ex", [password(secret=ADMIN_PASSWORD)]))
        assert [(a.get("result") or {}).get("response_type") for a in answers] == ["SUCCESS"] * len(answers)


async def test_guessing_from_many_addresses_is_limited_per_user_but_not_where_the_user_logged_in(
    server: TestServer, api_key: str,
) -> None:
    limiter = server.app.login_limiter
    # A small allowance and a long first delay, so the test does not depend on how fast the machine is.
    limiter.user_free, limiter.user_delay = 6, 30.0
    async with Peers(server) as peers:
        home = await peers.open("127.0.0.1")
        assert (await home.call("auth.login", ADMIN, ADMIN_PASSWORD))["result"] is True

        # Four addresses, each far below its own limit, guess the admin's password at once.
        attackers = [await peers.open(f"127.0.0.{n}") for n in range(2, 6)]
        answers = [a for per in await asyncio.gather(*(
            p.pipeline([("auth.login", [ADMIN, "wrong"])] * 5) for p in attackers)) for a in per]
        assert sum("result" in a for a in answers) == limiter.user_free
        assert all(is_rate_limited(a) for a in answers if "result" not in a)

        # Another address now waits too, even with the right password...
        elsewhere = await peers.open("127.0.0.6")
        assert 0 < retry_after(await elsewhere.call("auth.login", ADMIN, ADMIN_PASSWORD)) <= limiter.user_delay
        # ...other users are not slowed down...
        assert (await elsewhere.call("auth.login_with_api_key", api_key))["result"] is True
        # ...and where the admin logged in before, the admin logs in at once.
        assert (await (await peers.open("127.0.0.1")).call("auth.login", ADMIN, ADMIN_PASSWORD))["result"] is True


async def test_the_per_user_delay_is_capped(server: TestServer) -> None:
    limiter = server.app.login_limiter
    limiter.user_free, limiter.user_delay, limiter.user_max_delay = 1, 1000.0, 5.0
    async with Peers(server) as peers:
        assert (await (await peers.open("127.0.0.2")).call("auth.login", ADMIN, "wrong"))["result"] is False
        wait = retry_after(await (await peers.open("127.0.0.3")).call("auth.login", ADMIN, ADMIN_PASSWORD))
        assert 0 < wait <= 5
