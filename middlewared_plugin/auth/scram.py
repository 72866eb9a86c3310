"""SCRAM-SHA-512 (RFC 5802 / RFC 7677) for API keys, as TrueNAS's clients speak it through `auth.login_ex`.

The SCRAM user name is `"<username>:<api key id>"` and the password is the key's secret (the part after
`"<id>-"`). A key stores only what the server side needs (salt, StoredKey, ServerKey, iterations): the
secret itself is never kept. The protocol is scramp's; this module adds the TrueNAS conventions.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import scramp

from middlewared_plugin.auth.ratelimit import LoginAttempt

MECHANISM = "SCRAM-SHA-512"
#: TrueNAS's iteration count; its clients refuse fewer than 50,000 or more than 5,000,000.
ITERATIONS = 500_000
SALT_BYTES = 16


def auth_info(secret: str) -> dict[str, Any]:
    """What a key stores for SCRAM (PBKDF2 with ITERATIONS rounds: run it off the event loop)."""
    salt, stored_key, server_key, iterations = scramp.ScramMechanism(MECHANISM).make_auth_info(
        secret, iteration_count=ITERATIONS, salt=os.urandom(SALT_BYTES))
    return {"salt": _b64(salt), "stored_key": _b64(stored_key), "server_key": _b64(server_key),
            "iterations": iterations}


def client_user(client_first: str) -> tuple[str, str] | None:
    """(username, api key id as written) named by a client-first message `gs2-header n=<user>:<id>,r=<nonce>`,
    or None. The id is left to the key store to parse: it may be anything."""
    parts = client_first.split(",")
    name = next((field[2:] for field in parts[2:] if field.startswith("n=")), None)
    if name is None:
        return None
    username, _, key_id = name.replace("=2C", ",").replace("=3D", "=").rpartition(":")
    return (username, key_id) if username and key_id else None


@dataclass
class ScramExchange:
    """One SCRAM login in progress on a session: between CLIENT_FIRST_MESSAGE and CLIENT_FINAL_MESSAGE."""

    key_id: int
    server: Any  # scramp's ScramServer
    #: Its slot under the failed-login limits, taken at the first message and given back on success.
    attempt: LoginAttempt

    @classmethod
    def start(cls, client_first: str, key_id: int, info: dict[str, Any], attempt: LoginAttempt) -> ScramExchange | None:
        """The exchange for key `key_id` (whose SCRAM data is `info`), or None for a malformed message."""
        stored = (base64.b64decode(info["salt"]), base64.b64decode(info["stored_key"]),
                  base64.b64decode(info["server_key"]), info["iterations"])
        server = scramp.ScramMechanism(MECHANISM).make_server(lambda _name: stored)
        try:
            server.set_client_first(client_first)
        except scramp.ScramException:
            return None
        return cls(key_id, server, attempt)

    def server_first(self) -> str:
        return self.server.get_server_first()

    def finish(self, client_final: str) -> str | None:
        """The server-final message when the client proved it has the key, else None."""
        try:
            self.server.set_client_final(client_final)
        except scramp.ScramException:
            return None
        return self.server.get_server_final()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
