"""Local users and API keys, stored in SQLite with hashed secrets; short-lived auth tokens in memory."""
from __future__ import annotations

import asyncio
import errno
import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any

from middlewared_plugin.auth import roles as _roles
from middlewared_plugin.auth import scram
from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.session import Session
from middlewared_plugin.errors import CallError
from middlewared_plugin.store.db import Store
from middlewared_plugin.store.secrets import hash_password, hash_token, verify_password

#: TrueNAS's token lifetime when none is asked for (`ttl=null` too), and the longest one we give out.
DEFAULT_TOKEN_TTL = 600
MAX_TOKEN_TTL = 24 * 3600
#: Live tokens one session may hold, and all sessions together: tokens are kept in memory.
MAX_TOKENS_PER_SESSION = 64
MAX_TOKENS = 4096
#: Largest API key id we parse: the store's ids are SQLite's 64-bit integers.
_MAX_KEY_ID_DIGITS = 18


@dataclass
class Token:
    credentials: Credentials
    ttl: int
    #: A token expires `ttl` seconds after it was made or last used to log in, as TrueNAS's do.
    expires_at: float
    single_use: bool
    attrs: dict[str, Any]
    #: The session that made it (None: the server itself), for the per-session cap.
    session_id: str | None


@functools.cache
def _unknown_user_hash() -> str:
    """A hash no password matches (made once, from a random one): what a login as an unknown user is checked
    against, at the cost of a real one."""
    return hash_password(secrets.token_urlsafe(32))


def parse_key_id(text: str) -> int | None:
    """An API key id written as we write them (ASCII digits, in range), else None: `int()` would also take
    other scripts' digits and numbers the store cannot hold."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_KEY_ID_DIGITS:
        return None
    return int(text)


class Accounts:
    def __init__(self, store: Store):
        self._store = store
        self._tokens: dict[str, Token] = {}

    # Users --------------------------------------------------------------------------------------------

    async def _find_user(self, username: str) -> tuple[int, dict[str, Any]] | None:
        return next(((i, u) for i, u in await self._store.all("users") if u["username"] == username), None)

    async def set_password(self, username: str, password: str, roles: list[str] | None = None) -> bool:
        """Create the user or change its password; the first user ever is a full admin. True if created."""
        if not password:
            raise CallError("Password must not be empty", errno.EINVAL)
        unknown = set(roles or ()) - set(_roles.ALL_ROLES)
        if unknown:
            raise CallError(f"Unknown roles: {', '.join(sorted(unknown))}", errno.EINVAL)
        found = await self._find_user(username)
        if found:
            uid, user = found
            user["password"] = await asyncio.to_thread(hash_password, password)
            if roles is not None:
                user["roles"] = roles
            await self._store.update("users", uid, user)
            return False
        first = not await self._store.all("users")
        await self._store.insert("users", {
            "username": username,
            "password": await asyncio.to_thread(hash_password, password),
            "roles": roles if roles is not None else ([_roles.FULL_ADMIN] if first else [_roles.READONLY_ADMIN]),
        })
        return True

    async def check_password(self, username: str, password: str) -> Credentials | None:
        found = await self._find_user(username)
        # scrypt is slow on purpose: off the event loop, or one login stalls every client. An unknown user
        # costs the same hash, so the answer's timing does not tell which user names exist.
        stored = found[1]["password"] if found else _unknown_user_hash()
        if not await asyncio.to_thread(verify_password, password, stored) or not found:
            return None
        return Credentials.for_user("LOGIN_PASSWORD", username, found[1]["roles"])

    async def user_roles(self, username: str) -> list[str] | None:
        found = await self._find_user(username)
        return found[1]["roles"] if found else None

    # API keys -----------------------------------------------------------------------------------------

    async def create_api_key(self, name: str, username: str) -> str:
        """Create a key for an existing user; returns the raw `"<id>-<secret>"` (shown once)."""
        if await self._find_user(username) is None:
            raise CallError(f"User {username!r} does not exist", errno.ENOENT)
        secret = secrets.token_urlsafe(48)
        key_id = await self._store.insert("api_keys", {
            "name": name, "username": username, "key": hash_token(secret), "created_at": time.time(),
            "scram": await asyncio.to_thread(scram.auth_info, secret),
        })
        return f"{key_id}-{secret}"

    async def api_key_scram(self, username: str, key_id_text: str) -> tuple[int, dict[str, Any]] | None:
        """The id and SCRAM data of `username`'s key `key_id_text`; None if there is no such key (or it predates
        SCRAM and has not been used with its secret since: a plain login adds the data)."""
        key_id = parse_key_id(key_id_text)
        key = None if key_id is None else await self._store.get("api_keys", key_id)
        if key_id is None or key is None or key["username"] != username or "scram" not in key:
            return None
        return key_id, key["scram"]

    async def api_key_user(self, raw: str) -> str | None:
        """Whose key a raw `"<id>-<secret>"` names (the secret unchecked); None if no key has that id."""
        key_id = parse_key_id(raw.partition("-")[0])
        key = None if key_id is None else await self._store.get("api_keys", key_id)
        return None if key is None else key["username"]

    async def api_key_credentials(self, key_id: int) -> Credentials | None:
        """Who logs in with key `key_id` (its user's current roles); None once the key or the user is gone."""
        key = await self._store.get("api_keys", key_id)
        user_roles = None if key is None else await self.user_roles(key["username"])
        if key is None or user_roles is None:
            return None
        return Credentials.for_user("API_KEY", key["username"], user_roles)

    async def check_api_key(self, raw: str, username: str | None = None) -> Credentials | None:
        key_text, _, secret = raw.partition("-")
        key_id = parse_key_id(key_text)
        if key_id is None or not secret:
            return None
        key = await self._store.get("api_keys", key_id)
        if key is None or not secrets.compare_digest(key["key"], hash_token(secret)):
            return None
        if username is not None and username != key["username"]:
            return None
        if "scram" not in key:  # a key made before SCRAM: now that its secret is known, SCRAM can use it too
            await self._store.update("api_keys", key_id,
                                     {**key, "scram": await asyncio.to_thread(scram.auth_info, secret)})
        return await self.api_key_credentials(key_id)

    # Tokens -------------------------------------------------------------------------------------------

    def generate_token(
        self, credentials: Credentials, ttl: int, attrs: dict[str, Any], single_use: bool, session: Session | None,
    ) -> str:
        """A new token acting as `credentials`, made by `session` (None: by the server itself)."""
        session_id = None if session is None else session.id
        now = time.monotonic()
        self._purge(now)
        if len(self._tokens) >= MAX_TOKENS:
            raise CallError("Too many authentication tokens are in use; retry later", errno.EBUSY)
        if session_id is not None and sum(t.session_id == session_id for t in self._tokens.values()) \
                >= MAX_TOKENS_PER_SESSION:
            raise CallError(f"This session already holds {MAX_TOKENS_PER_SESSION} authentication tokens; "
                            "let some expire first", errno.EBUSY)
        token = secrets.token_urlsafe(48)
        self._tokens[token] = Token(credentials, ttl, now + ttl, single_use, attrs, session_id)
        return token

    async def check_token(self, token: str) -> Credentials | None:
        """Who logs in with `token` (a credential check like the others, though it needs no await)."""
        found = self.redeem_token(token)
        return None if found is None else found[0]

    def redeem_token(self, token: str) -> tuple[Credentials, dict[str, Any]] | None:
        """Credentials and attributes of a valid token (a single-use token is spent, another one lives on
        `ttl` seconds from now)."""
        now = time.monotonic()
        self._purge(now)
        found = self._tokens.get(token)
        if found is None:
            return None
        if found.single_use:
            del self._tokens[token]
        else:
            found.expires_at = now + found.ttl
        return Credentials("TOKEN", found.credentials.username, found.credentials.roles), found.attrs

    def _purge(self, now: float) -> None:
        """Forget expired tokens (before every use, so memory holds only live ones)."""
        for key in [k for k, t in self._tokens.items() if t.expires_at <= now]:
            del self._tokens[key]
