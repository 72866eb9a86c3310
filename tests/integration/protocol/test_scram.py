"""API key login by SCRAM-SHA-512 through `auth.login_ex` (what TrueNAS's clients use by default for `-K`):
RFC 5802 messages with the user `<username>:<key id>` and the key's secret as password, as TrueNAS documents
the exchange. The client side here is scramp's, driven by hand on a bare WebSocket, and then our `Client`."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import sys

import pytest
import scramp

from middlewared_plugin.client import ClientException
from middlewared_plugin.errors import ENOTAUTHENTICATED
from tests.fixtures.server import TestServer
from tests.integration.protocol.conftest import Raw

USER = "operator"


@pytest.fixture
async def api_key(server: TestServer) -> str:
    await server.add_user(USER, "operator-pw", ["READONLY_ADMIN"])
    return await server.app.accounts.create_api_key("ci", USER)


def scram_client(key: str, username: str = USER) -> scramp.ScramClient:
    key_id, _, secret = key.partition("-")
    return scramp.ScramClient(["SCRAM-SHA-512"], f"{username}:{key_id}", secret)


def message(scram_type: str, rfc_str: str) -> dict[str, str]:
    return {"mechanism": "SCRAM", "scram_type": scram_type, "rfc_str": rfc_str}


async def test_scram_is_offered(raw) -> None:
    assert "SCRAM" in await (await raw()).result("auth.mechanism_choices")


async def test_a_key_logs_in_by_scram_and_the_server_proves_it_knows_the_key(raw, api_key: str) -> None:
    peer: Raw = await raw()
    client = scram_client(api_key)

    first = await peer.result("auth.login_ex", message("CLIENT_FIRST_MESSAGE", client.get_client_first()))

    assert (first["response_type"], first["scram_type"]) == ("SCRAM_RESPONSE", "SERVER_FIRST_RESPONSE")
    fields = dict(f.split("=", 1) for f in first["rfc_str"].split(","))
    assert len(base64.b64decode(fields["s"])) == 16 and fields["i"] == "500000"
    client.set_server_first(first["rfc_str"])
    final = await peer.result("auth.login_ex", message("CLIENT_FINAL_MESSAGE", client.get_client_final()))

    assert (final["response_type"], final["scram_type"]) == ("SCRAM_RESPONSE", "SERVER_FINAL_RESPONSE")
    client.set_server_final(final["rfc_str"])  # raises unless the server's signature is right
    assert final["user_info"]["pw_name"] == USER
    assert (await peer.result("auth.me"))["pw_name"] == USER


async def test_a_wrong_secret_is_refused_and_the_session_stays_anonymous(raw, api_key: str) -> None:
    peer: Raw = await raw()
    key_id = api_key.partition("-")[0]
    client = scram_client(f"{key_id}-not-the-secret")
    first = await peer.result("auth.login_ex", message("CLIENT_FIRST_MESSAGE", client.get_client_first()))
    client.set_server_first(first["rfc_str"])

    final = await peer.result("auth.login_ex", message("CLIENT_FINAL_MESSAGE", client.get_client_final()))

    assert final == {"response_type": "AUTH_ERR"}
    assert (await peer.call("auth.me"))["error"]["data"]["error"] == 207


@pytest.mark.parametrize("user", ["admin:{id}", f"{USER}:999", USER, "garbage"])
async def test_an_unknown_key_or_another_users_key_is_refused_at_once(raw, api_key: str, user: str) -> None:
    key_id = api_key.partition("-")[0]
    client = scramp.ScramClient(["SCRAM-SHA-512"], user.format(id=key_id), "whatever")
    answer = await (await raw()).result("auth.login_ex", message("CLIENT_FIRST_MESSAGE", client.get_client_first()))
    assert answer == {"response_type": "AUTH_ERR"}


async def test_a_final_message_without_a_first_one_is_refused(raw, api_key: str) -> None:
    answer = await (await raw()).result("auth.login_ex", message("CLIENT_FINAL_MESSAGE", "c=biws,r=abc,p=eHl6"))
    assert answer == {"response_type": "AUTH_ERR"}


async def test_a_key_made_before_scram_gains_it_at_its_next_plain_login(server: TestServer, api_key: str) -> None:
    key_id = int(api_key.partition("-")[0])
    stored = await server.app.store.get("api_keys", key_id)
    await server.app.store.update("api_keys", key_id, {k: v for k, v in stored.items() if k != "scram"})
    client = await server.client(None)
    assert await client.login_with_api_key(api_key, USER) is False  # SCRAM: nothing to check against yet

    assert await client.login_with_api_key(api_key, USER, plain=True) is True

    assert await (await server.client(None)).login_with_api_key(api_key, USER) is True


async def test_our_client_logs_in_by_scram_without_sending_the_key(server: TestServer, api_key: str) -> None:
    key_id = int(api_key.partition("-")[0])
    stored = await server.app.store.get("api_keys", key_id)
    # The plain check can no longer succeed: only SCRAM can log this key in now.
    await server.app.store.update("api_keys", key_id, {**stored, "key": "not-the-hash"})
    client = await server.client(None)

    assert await client.login_with_api_key(api_key, USER) is True

    assert (await client.call("auth.me"))["pw_name"] == USER


async def test_our_client_refuses_a_server_that_does_not_know_the_key(server: TestServer, api_key: str) -> None:
    key_id = int(api_key.partition("-")[0])
    stored = await server.app.store.get("api_keys", key_id)
    forged = base64.b64encode(os.urandom(64)).decode()
    await server.app.store.update("api_keys", key_id, {**stored, "scram": {**stored["scram"], "server_key": forged}})
    client = await server.client(None)

    with pytest.raises(ClientException) as refused:
        await client.login_with_api_key(api_key, USER)

    assert refused.value.errno == ENOTAUTHENTICATED


@pytest.mark.parametrize("flags", [[], ["--plain"]])
async def test_midclt_logs_in_with_an_api_key(server: TestServer, api_key: str, flags: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "middlewared_plugin.midclt", "--uri", server.url, "-U", USER, "-K", api_key, *flags,
        "call", "auth.me", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["pw_name"] == USER
