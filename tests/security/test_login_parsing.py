"""Issue 11 item 9 (logins): odd API key ids are a plain failed login, never an internal error.

An API key is `"<id>-<secret>"` and a SCRAM user `"<username>:<id>"`. The id is ASCII digits within the
store's 64-bit range: other scripts' digits (which Python's `int()` would take, and so log in with key 1
written as a full-width "１"), superscripts (which `str.isdigit` takes but `int()` refuses) and ids too large
for SQLite are refused like a wrong secret.
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.server import TestServer
from tests.security.login_wire import Peers

USER = "operator"
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

# Each makes an id out of the real key's id.
ODD_IDS = {
    "full-width digits": lambda key_id: key_id.translate(FULL_WIDTH),
    "arabic-indic digits": lambda key_id: key_id.translate(ARABIC_INDIC),
    "superscript": lambda key_id: "²",
    "digits then a superscript": lambda key_id: key_id + "²",
    "beyond 64 bits": lambda key_id: "99999999999999999999999",
    "just beyond 64 bits": lambda key_id: str(2**63),
    "empty": lambda key_id: "",
}


@pytest.fixture
async def api_key(server: TestServer) -> str:
    await server.add_user(USER, "operator-pw", ["READONLY_ADMIN"])
    return await server.app.accounts.create_api_key("ci", USER)


def result(answer: dict[str, Any]) -> Any:
    assert "error" not in answer, answer["error"]["data"]["reason"]
    return answer["result"]


@pytest.mark.parametrize("odd", list(ODD_IDS))
async def test_an_api_key_with_an_odd_id_is_a_failed_login(server: TestServer, api_key: str, odd: str) -> None:
    key_id, _, secret = api_key.partition("-")
    raw = f"{ODD_IDS[odd](key_id)}-{secret}"  # the real secret: only the id is odd
    async with Peers(server) as peers:
        peer = await peers.open()
        assert result(await peer.call("auth.login_with_api_key", raw)) is False
        assert result(await peer.call("auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": USER,
                                                        "api_key": raw})) == {"response_type": "AUTH_ERR"}
        assert result(await peer.call("auth.login_with_api_key", api_key)) is True  # the key itself works


@pytest.mark.parametrize("odd", list(ODD_IDS))
async def test_a_scram_user_with_an_odd_key_id_is_a_failed_login(server: TestServer, api_key: str, odd: str) -> None:
    key_id = api_key.partition("-")[0]
    first = f"n,,n={USER}:{ODD_IDS[odd](key_id)},r=fyko+d2lbbFgONRv9qkxdawL"
    async with Peers(server) as peers:
        answer = await (await peers.open()).call(
            "auth.login_ex", {"mechanism": "SCRAM", "scram_type": "CLIENT_FIRST_MESSAGE", "rfc_str": first})
        assert result(answer) == {"response_type": "AUTH_ERR"}


@pytest.mark.parametrize("raw", ["-", "", "x", "1", "-secret", "1-", "1--", "０-x", "\u0000-x", "１" * 1000 + "-x"])
async def test_malformed_api_keys_are_a_failed_login(server: TestServer, api_key: str, raw: str) -> None:
    async with Peers(server) as peers:
        assert result(await (await peers.open()).call("auth.login_with_api_key", raw)) is False
