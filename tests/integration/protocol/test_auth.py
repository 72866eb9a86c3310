"""Authentication, sessions and the unauthenticated surface (reference §1.3, §1.4, §1.7, §1.8)."""
from __future__ import annotations

import asyncio
import time

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.store.secrets import hash_password, verify_password
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.integration.protocol.conftest import Raw, Sampled

NOT_AUTHENTICATED = "[ENOTAUTHENTICATED] Not authenticated"


def password(username: str = ADMIN, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    return {"mechanism": "PASSWORD_PLAIN", "username": username, "password": password}


def assert_call_error(answer: dict, errno_: int, reason: str | None = None) -> None:
    assert answer["error"]["code"] == -32001, answer
    assert answer["error"]["data"]["error"] == errno_
    if reason is not None:
        assert answer["error"]["data"]["reason"] == reason


# Options and the unauthenticated surface ---------------------------------------------------------------

async def test_set_options_without_login_returns_the_full_dict(raw) -> None:
    peer: Raw = await raw()
    assert await peer.result("core.set_options", {}) == {
        "legacy_jobs": True, "private_methods": False, "py_exceptions": False,
    }
    assert await peer.result("core.set_options", {"legacy_jobs": False, "unknown": 1}) == {
        "legacy_jobs": False, "private_methods": False, "py_exceptions": False,
    }
    assert (await peer.result("core.set_options", {"py_exceptions": True}))["legacy_jobs"] is False
    bad = await peer.call("core.set_options", {"legacy_jobs": "no"})
    assert bad["error"]["data"]["extra"][0][0] == "options.legacy_jobs"


async def test_ping_and_mechanisms_need_no_login(raw) -> None:
    peer = await raw()
    assert await peer.result("core.ping") == "pong"
    assert set(await peer.result("auth.mechanism_choices")) >= {"PASSWORD_PLAIN", "API_KEY_PLAIN", "TOKEN_PLAIN"}


@pytest.mark.parametrize("method, params", [
    ("core.get_jobs", []),
    ("core.get_methods", []),
    ("auth.me", []),
    ("auth.generate_token", []),
    ("core.subscribe", ["core.get_jobs"]),
])
async def test_other_methods_answer_207_before_login(raw, method, params) -> None:
    peer = await raw()
    assert_call_error(await peer.call(method, *params), 207, NOT_AUTHENTICATED)
    assert (await peer.call(method, *params))["error"]["data"]["errname"] == "ENOTAUTHENTICATED"


# Logins -------------------------------------------------------------------------------------------------

async def test_legacy_login(raw) -> None:
    peer = await raw()
    assert await peer.result("auth.login", ADMIN, "wrong") is False
    assert_call_error(await peer.call("auth.me"), 207)
    assert await peer.result("auth.login", ADMIN, ADMIN_PASSWORD) is True
    assert (await peer.result("auth.me"))["pw_name"] == ADMIN


async def test_login_ex_password(raw) -> None:
    peer = await raw()
    assert await peer.result("auth.login_ex", password(password="wrong")) == {"response_type": "AUTH_ERR"}
    assert await peer.result("auth.login_ex", password(username="nobody")) == {"response_type": "AUTH_ERR"}
    answer = await peer.result("auth.login_ex", password())
    assert answer["response_type"] == "SUCCESS"
    assert answer["authenticator"] == "LEVEL_1"
    assert answer["user_info"]["pw_name"] == ADMIN
    assert "FULL_ADMIN" in answer["user_info"]["privilege"]["roles"]
    assert answer["reconnect_token"] is None


async def test_login_ex_without_user_info_and_with_reconnect_token(raw) -> None:
    peer = await raw()
    answer = await peer.result("auth.login_ex", {
        **password(), "login_options": {"user_info": False, "reconnect_token": True},
    })
    assert answer["user_info"] is None
    other = await raw()
    token_login = await other.result("auth.login_ex", {"mechanism": "TOKEN_PLAIN", "token": answer["reconnect_token"]})
    assert token_login["response_type"] == "SUCCESS"


async def test_login_ex_rejects_unknown_mechanisms(raw) -> None:
    peer = await raw()
    answer = await peer.call("auth.login_ex", {"mechanism": "KERBEROS", "rfc_str": "x"})
    assert answer["error"]["code"] == -32602
    assert_call_error(await peer.call("auth.me"), 207)


async def test_api_keys(raw, server: TestServer) -> None:
    await server.add_user("operator", "operator-pw", ["READONLY_ADMIN"])
    key = await server.app.accounts.create_api_key("ci", "operator")
    key_id = key.partition("-")[0]

    peer = await raw()
    assert await peer.result("auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": ADMIN, "api_key": key}) == {
        "response_type": "AUTH_ERR"}
    assert await peer.result("auth.login_ex", {
        "mechanism": "API_KEY_PLAIN", "username": "operator", "api_key": f"{key_id}-not-the-secret"}) == {
        "response_type": "AUTH_ERR"}
    answer = await peer.result("auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": "operator", "api_key": key})
    assert answer["response_type"] == "SUCCESS"
    assert answer["user_info"]["pw_name"] == "operator"

    legacy = await raw()
    assert await legacy.result("auth.login_with_api_key", "999-nope") is False
    assert await legacy.result("auth.login_with_api_key", key) is True
    me = await legacy.result("auth.me")
    assert me["pw_name"] == "operator"
    assert "READONLY_ADMIN" in me["privilege"]["roles"]


async def test_tokens(raw) -> None:
    owner = await raw()
    await owner.login()
    reusable = await owner.result("auth.generate_token")
    single = await owner.result("auth.generate_token", 600, {}, True, True)
    short = await owner.result("auth.generate_token", 1)

    for _ in range(2):
        peer = await raw()
        assert (await peer.result("auth.login_ex", {"mechanism": "TOKEN_PLAIN", "token": reusable}))[
            "response_type"] == "SUCCESS"
        assert (await peer.result("auth.me"))["pw_name"] == ADMIN

    first, second = await raw(), await raw()
    assert await first.result("auth.login_with_token", single) is True
    assert await second.result("auth.login_with_token", single) is False

    await asyncio.sleep(1.2)
    late = await raw()
    assert await late.result("auth.login_ex", {"mechanism": "TOKEN_PLAIN", "token": short}) == {
        "response_type": "AUTH_ERR"}
    assert await late.result("auth.login_with_token", "made-up") is False


async def test_logout_ends_the_session(raw) -> None:
    peer = await raw()
    await peer.login()
    assert await peer.result("auth.logout") is True
    assert_call_error(await peer.call("core.get_jobs"), 207, NOT_AUTHENTICATED)


async def test_me_for_a_role_user(raw, server: TestServer) -> None:
    await server.add_user("reader", "reader-pw", ["READONLY_ADMIN"])
    peer = await raw()
    await peer.login("reader", "reader-pw")
    me = await peer.result("auth.me")
    assert me["pw_name"] == "reader"
    assert "FULL_ADMIN" not in me["privilege"]["roles"]
    assert "KEYCHAIN_CREDENTIAL_READ" in me["privilege"]["roles"]


# A refused login must not leave its credential check un-awaited (a leak the warning shows).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
async def test_failed_logins_are_rate_limited_per_address(raw, server: TestServer) -> None:
    limit = server.app.login_limiter.max_failures
    peer = await raw()
    for _ in range(limit):
        assert await peer.result("auth.login", ADMIN, "wrong") is False
    # Now even the right password is refused, on this and on a new connection from the same address.
    for blocked in (peer, await raw()):
        for method, params in (("auth.login", [ADMIN, ADMIN_PASSWORD]), ("auth.login_ex", [password()])):
            answer = await blocked.call(method, *params)
            assert_call_error(answer, 16)
            assert answer["error"]["data"]["reason"].startswith("[EBUSY] Rate Limit Exceeded: ")
            assert answer["error"]["data"]["errname"] == "EBUSY"


async def test_fewer_failures_than_the_limit_do_not_block(raw, server: TestServer) -> None:
    peer = await raw()
    for _ in range(server.app.login_limiter.max_failures - 1):
        assert await peer.result("auth.login", ADMIN, "wrong") is False
    assert await peer.result("auth.login", ADMIN, ADMIN_PASSWORD) is True


async def test_unix_socket_peer_running_as_root_is_root_without_login(server: TestServer) -> None:
    async with Client(server.socket_uri) as client:
        me = await client.call("auth.me")
        assert me["pw_name"] == "root"
        assert "FULL_ADMIN" in me["privilege"]["roles"]
        assert await client.call("core.get_jobs") == []


# Method listing -----------------------------------------------------------------------------------------

async def test_get_methods_lists_schemas_and_only_what_the_caller_may_call(raw, sampled: Sampled) -> None:
    await sampled.server.add_user("snapper", "snapper-pw", ["SNAPSHOT_TASK_READ"])
    admin = await raw()
    await admin.login()
    methods = await admin.result("core.get_methods")
    assert "core.job_update" not in methods  # private
    assert {"core.ping", "auth.login_ex", "sample.thing.create", "sample.thing.query"} <= set(methods)
    create = methods["sample.thing.create"]
    assert create["roles"] == ["KEYCHAIN_CREDENTIAL_WRITE"]
    assert create["job"] is False and methods["core.bulk"]["job"] is True
    assert methods["core.ping"]["no_auth_required"] is True
    [arg] = create["accepts"]
    assert arg["_name_"] == "sample_thing_create" and arg["_required_"] is True
    nested = methods["sample.nested"]["accepts"]
    assert [a["_name_"] for a in nested] == ["data", "flag"]
    assert nested[1]["type"] == "boolean" and nested[1]["_required_"] is False
    assert methods["sample.thing.query"]["filterable"] is True
    assert set(await admin.result("core.get_methods", "sample.thing")) == {
        f"sample.thing.{m}" for m in ("query", "get_instance", "create", "update", "delete")}

    limited = await raw()
    await limited.login("snapper", "snapper-pw")
    visible = await limited.result("core.get_methods")
    assert "core.ping" in visible and "core.get_jobs" in visible
    assert not any(name.startswith("sample.thing.") for name in visible)


# Subscriptions ------------------------------------------------------------------------------------------

async def test_subscribe_rules(raw, sampled: Sampled) -> None:
    await sampled.server.add_user("snapper", "snapper-pw", ["SNAPSHOT_TASK_READ"])
    peer = await raw()
    await peer.login("snapper", "snapper-pw")
    assert_call_error(await peer.call("core.subscribe", "sample.thing.query"), 13, "[EACCES] Not authorized")
    assert_call_error(await peer.call("core.subscribe", "*"), 13)
    sub_id = await peer.result("core.subscribe", "core.get_jobs")
    assert isinstance(sub_id, str) and len(sub_id) == 36


async def test_events_are_delivered_until_unsubscribe(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    sub_id = await peer.result("core.subscribe", "sample.thing.query")
    created = await peer.result("sample.thing.create", {"name": "one"})
    [event] = peer.events("sample.thing.query")
    assert event == {"msg": "added", "collection": "sample.thing.query", "id": created["id"], "fields": created}
    wire = [m for m in peer.received if m.get("method") == "collection_update"]
    assert wire[0]["jsonrpc"] == "2.0" and "id" not in wire[0]

    assert await peer.result("core.unsubscribe", sub_id) is None
    await peer.result("sample.thing.create", {"name": "two"})
    assert await peer.nothing_within(0.3)
    assert len(peer.events("sample.thing.query")) == 1


async def test_star_subscription_receives_every_event(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    await peer.result("core.subscribe", "*")
    await peer.result("sample.thing.create", {"name": "one"})
    assert [e["msg"] for e in peer.events("sample.thing.query")] == ["added"]


async def test_logout_drops_subscriptions(raw, sampled: Sampled) -> None:
    peer, writer = await raw(), await raw()
    await peer.login()
    await writer.login()
    await peer.result("core.subscribe", "sample.thing.query")
    await peer.result("auth.logout")
    await writer.result("sample.thing.create", {"name": "after-logout"})
    assert await peer.nothing_within(0.3)


async def test_password_checks_do_not_block_the_event_loop(raw) -> None:
    """Password hashing is slow on purpose; it must run off the event loop or every client stalls.

    Measured as CPU time of the loop's thread (this test shares the server's loop), which machine load
    does not distort: hashing on the loop would cost it one hash per login.
    """
    peers = [await raw() for _ in range(8)]
    began = time.thread_time()
    verify_password("probe", hash_password("probe"))
    one_hash = (time.thread_time() - began) / 2

    began = time.thread_time()
    results = await asyncio.gather(*(p.result("auth.login", ADMIN, ADMIN_PASSWORD) for p in peers))
    loop_cpu = time.thread_time() - began
    assert results == [True] * len(peers)
    assert loop_cpu < 2 * one_hash, (loop_cpu, one_hash)
