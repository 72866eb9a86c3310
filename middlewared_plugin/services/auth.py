"""`auth.*`: logins by password, API key (plain or SCRAM-SHA-512) and token; tokens; who am I (reference §1.4)."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from middlewared_plugin.auth import scram
from middlewared_plugin.auth.accounts import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL
from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.ratelimit import LoginAttempt
from middlewared_plugin.auth.scram import ScramExchange
from middlewared_plugin.services.base import ApiModel, CallContext, Private, Service, api_method

MECHANISMS = ["PASSWORD_PLAIN", "API_KEY_PLAIN", "TOKEN_PLAIN", "SCRAM"]
#: The most a token's `attrs` may take, as JSON.
MAX_TOKEN_ATTRS_BYTES = 4096


class LoginOptions(ApiModel):
    user_info: bool = True
    reconnect_token: bool = False


class PasswordPlain(ApiModel):
    mechanism: Literal["PASSWORD_PLAIN"]
    username: str
    password: Annotated[str, Private]
    login_options: LoginOptions = LoginOptions()


class ApiKeyPlain(ApiModel):
    mechanism: Literal["API_KEY_PLAIN"]
    username: str
    api_key: Annotated[str, Private]
    login_options: LoginOptions = LoginOptions()


class TokenPlain(ApiModel):
    mechanism: Literal["TOKEN_PLAIN"]
    token: Annotated[str, Private]
    login_options: LoginOptions = LoginOptions()


class Scram(ApiModel):
    """An API key login by SCRAM-SHA-512: two calls, CLIENT_FIRST_MESSAGE then CLIENT_FINAL_MESSAGE."""

    mechanism: Literal["SCRAM"]
    scram_type: Literal["CLIENT_FIRST_MESSAGE", "CLIENT_FINAL_MESSAGE"]
    rfc_str: Annotated[str, Private]
    login_options: LoginOptions = LoginOptions()


class LoginExArgs(ApiModel):
    login_data: Annotated[PasswordPlain | ApiKeyPlain | TokenPlain | Scram, Field(discriminator="mechanism")]


class LoginExSecrets(ApiModel):
    """Where `login_ex`'s answer holds a secret (job records redact it)."""

    reconnect_token: Annotated[str | None, Private] = None


class LoginArgs(ApiModel):
    username: str
    password: Annotated[str, Private]
    otp_token: str | None = None


class ApiKeyArgs(ApiModel):
    api_key: Annotated[str, Private]


class TokenArgs(ApiModel):
    token: Annotated[str, Private]


def _small_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    # Tokens live in memory until they expire: what each one holds must stay small.
    size = len(json.dumps(attrs, default=str))
    if size > MAX_TOKEN_ATTRS_BYTES:
        raise ValueError(f"Token attributes take {size} bytes as JSON; at most {MAX_TOKEN_ATTRS_BYTES} are allowed")
    return attrs


class GenerateTokenArgs(ApiModel):
    #: Seconds; `null` is TrueNAS's default lifetime.
    ttl: Annotated[int, Field(ge=1, le=MAX_TOKEN_TTL)] | None = DEFAULT_TOKEN_TTL
    attrs: Annotated[dict[str, Any], AfterValidator(_small_attrs)] = {}
    match_origin: bool = True
    single_use: bool = False


def user_info(credentials: Credentials) -> dict[str, Any]:
    return {
        "pw_name": credentials.username,
        "pw_gecos": credentials.username,
        "pw_dir": "/root" if credentials.username == "root" else f"/home/{credentials.username}",
        "pw_shell": "/usr/bin/bash",
        "pw_uid": 0 if credentials.username == "root" else None,
        "pw_gid": 0 if credentials.username == "root" else None,
        "attributes": {},
        "two_factor_config": {"secret_configured": False},
        "privilege": {"roles": sorted(credentials.roles), "web_shell": False},
        "account_attributes": ["LOCAL"],
    }


class AuthService(Service):
    namespace = "auth"

    async def _attempt(self, ctx: CallContext, username: str | None) -> LoginAttempt:
        """A slot under the failed-login limits for one login attempt (RateLimited when over them), counted
        per user too when `username` names one (unknown names count per address only: each would be a table
        entry of its own)."""
        assert ctx.session is not None
        user = username if username is not None and await self.app.accounts.user_roles(username) is not None \
            else None
        return await self.app.login_limiter.attempt(ctx.session.address, user)

    async def _login(
        self, ctx: CallContext, username: str | None, check: Callable[[], Awaitable[Credentials | None]],
    ) -> Credentials | None:
        """One login attempt: its slot is taken before `check` runs; on success the session is logged in."""
        assert ctx.session is not None
        attempt = await self._attempt(ctx, username)
        try:
            credentials = await check()
        except BaseException:  # a check that raised or was cancelled counts as failed
            attempt.failed()
            raise
        if credentials is None:
            attempt.failed()
        else:
            attempt.succeeded(credentials.username)
            ctx.session.credentials = credentials
        return credentials

    async def _scram(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """One step of a SCRAM login; the exchange lives on the session between the two steps. The attempt
        takes its slot at the first step and gives it back only when the second one proves the key."""
        session = ctx.session
        assert session is not None
        exchange, session.scram = session.scram, None
        if data["scram_type"] == "CLIENT_FIRST_MESSAGE":
            named = scram.client_user(data["rfc_str"])
            attempt = await self._attempt(ctx, named[0] if named else None)
            attempt.failed()  # until the second message proves the key
            found = await self.app.accounts.api_key_scram(*named) if named else None
            exchange = ScramExchange.start(data["rfc_str"], *found, attempt) if found else None
            if exchange is None:
                return {"response_type": "AUTH_ERR"}
            session.scram = exchange
            return {"response_type": "SCRAM_RESPONSE", "scram_type": "SERVER_FIRST_RESPONSE",
                    "rfc_str": exchange.server_first(), "user_info": None}
        server_final = exchange.finish(data["rfc_str"]) if exchange is not None else None
        credentials = await self.app.accounts.api_key_credentials(exchange.key_id) \
            if exchange is not None and server_final is not None else None
        if exchange is None or server_final is None or credentials is None:
            return {"response_type": "AUTH_ERR"}
        exchange.attempt.succeeded(credentials.username)
        session.credentials = credentials
        return {"response_type": "SCRAM_RESPONSE", "scram_type": "SERVER_FINAL_RESPONSE", "rfc_str": server_final,
                "user_info": user_info(credentials) if data["login_options"]["user_info"] else None}

    @api_method(LoginArgs, no_auth=True)
    async def login(self, ctx: CallContext, username: str, password: str, otp_token: str | None) -> bool:
        check = partial(self.app.accounts.check_password, username, password)
        return await self._login(ctx, username, check) is not None

    @api_method(ApiKeyArgs, no_auth=True)
    async def login_with_api_key(self, ctx: CallContext, api_key: str) -> bool:
        owner = await self.app.accounts.api_key_user(api_key)
        return await self._login(ctx, owner, partial(self.app.accounts.check_api_key, api_key)) is not None

    @api_method(TokenArgs, no_auth=True)
    async def login_with_token(self, ctx: CallContext, token: str) -> bool:
        return await self._login(ctx, None, partial(self.app.accounts.check_token, token)) is not None

    @api_method(LoginExArgs, no_auth=True)
    async def login_ex(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        accounts = self.app.accounts
        match data["mechanism"]:
            case "SCRAM":
                return await self._scram(ctx, data)
            case "PASSWORD_PLAIN":
                credentials = await self._login(
                    ctx, data["username"], partial(accounts.check_password, data["username"], data["password"]))
            case "API_KEY_PLAIN":
                credentials = await self._login(
                    ctx, data["username"], partial(accounts.check_api_key, data["api_key"], data["username"]))
            case _:
                credentials = await self._login(ctx, None, partial(accounts.check_token, data["token"]))
        if credentials is None:
            return {"response_type": "AUTH_ERR"}
        options = data["login_options"]
        return {
            "response_type": "SUCCESS",
            "user_info": user_info(credentials) if options["user_info"] else None,
            "authenticator": "LEVEL_1",
            "reconnect_token": (
                accounts.generate_token(credentials, DEFAULT_TOKEN_TTL, {}, True, ctx.session)
                if options["reconnect_token"] else None
            ),
        }

    @api_method(no_auth=True)
    async def mechanism_choices(self, ctx: CallContext) -> list[str]:
        return MECHANISMS

    @api_method(GenerateTokenArgs, no_authz_required=True, secret_result=Private)
    async def generate_token(
        self, ctx: CallContext, ttl: int | None, attrs: dict[str, Any], match_origin: bool, single_use: bool
    ) -> str:
        assert ctx.credentials is not None
        # TrueNAS too reads `null` as its default lifetime: no token lives for ever.
        return self.app.accounts.generate_token(
            ctx.credentials, DEFAULT_TOKEN_TTL if ttl is None else ttl, attrs, single_use, ctx.session)

    @api_method(no_authz_required=True)
    async def me(self, ctx: CallContext) -> dict[str, Any]:
        assert ctx.credentials is not None
        return user_info(ctx.credentials)

    @api_method(no_authz_required=True)
    async def logout(self, ctx: CallContext) -> bool:
        assert ctx.session is not None
        ctx.session.credentials = None
        ctx.session.subscriptions.clear()
        return True

