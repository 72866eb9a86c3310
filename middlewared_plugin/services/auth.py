"""`auth.*`: logins by password, API key (plain or SCRAM-SHA-512) and token; tokens; who am I (reference §1.4)."""
from __future__ import annotations

import errno
from typing import Annotated, Any, Literal

from pydantic import Field

from middlewared_plugin.auth import scram
from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.scram import ScramExchange
from middlewared_plugin.errors import CallError
from middlewared_plugin.services.base import ApiModel, CallContext, Private, Service, api_method

MECHANISMS = ["PASSWORD_PLAIN", "API_KEY_PLAIN", "TOKEN_PLAIN", "SCRAM"]


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


class LoginArgs(ApiModel):
    username: str
    password: Annotated[str, Private]
    otp_token: str | None = None


class ApiKeyArgs(ApiModel):
    api_key: Annotated[str, Private]


class TokenArgs(ApiModel):
    token: Annotated[str, Private]


class GenerateTokenArgs(ApiModel):
    ttl: int | None = 600
    attrs: dict[str, Any] = {}
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

    async def _limited(self, ctx: CallContext, check: Any) -> Any:
        """Run a credential check (a coroutine answering None for "refused") under the failed-login rate limit."""
        assert ctx.session is not None
        limiter = self.app.login_limiter
        if limiter.blocked(ctx.session.address):
            check.close()  # never run: close it so the coroutine is not left un-awaited
            raise CallError("Rate Limit Exceeded", errno.EBUSY)
        result = await check
        if result is None:
            limiter.record_failure(ctx.session.address)
        return result

    async def _login(self, ctx: CallContext, check: Any) -> Credentials | None:
        """A credential check under the rate limit; on success the session is logged in."""
        assert ctx.session is not None
        credentials = await self._limited(ctx, check)
        if credentials is not None:
            ctx.session.credentials = credentials
        return credentials

    async def _scram(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """One step of a SCRAM login; the exchange lives on the session between the two steps."""
        session = ctx.session
        assert session is not None
        exchange, session.scram = session.scram, None
        if data["scram_type"] == "CLIENT_FIRST_MESSAGE":
            exchange = await self._limited(ctx, self._scram_start(data["rfc_str"]))
            if exchange is None:
                return {"response_type": "AUTH_ERR"}
            session.scram = exchange
            return {"response_type": "SCRAM_RESPONSE", "scram_type": "SERVER_FIRST_RESPONSE",
                    "rfc_str": exchange.server_first(), "user_info": None}
        server_final = exchange.finish(data["rfc_str"]) if exchange is not None else None
        credentials = await self._login(ctx, self._scram_credentials(exchange if server_final else None))
        if credentials is None or server_final is None:
            return {"response_type": "AUTH_ERR"}
        return {"response_type": "SCRAM_RESPONSE", "scram_type": "SERVER_FINAL_RESPONSE", "rfc_str": server_final,
                "user_info": user_info(credentials) if data["login_options"]["user_info"] else None}

    async def _scram_start(self, client_first: str) -> ScramExchange | None:
        named = scram.client_user(client_first)
        info = await self.app.accounts.api_key_scram(*named) if named else None
        if named is None or info is None:
            return None
        return ScramExchange.start(client_first, named[1], info)

    async def _scram_credentials(self, exchange: ScramExchange | None) -> Credentials | None:
        return await self.app.accounts.api_key_credentials(exchange.key_id) if exchange is not None else None

    @api_method(LoginArgs, no_auth=True)
    async def login(self, ctx: CallContext, username: str, password: str, otp_token: str | None) -> bool:
        return await self._login(ctx, self.app.accounts.check_password(username, password)) is not None

    @api_method(ApiKeyArgs, no_auth=True)
    async def login_with_api_key(self, ctx: CallContext, api_key: str) -> bool:
        return await self._login(ctx, self.app.accounts.check_api_key(api_key)) is not None

    @api_method(TokenArgs, no_auth=True)
    async def login_with_token(self, ctx: CallContext, token: str) -> bool:
        return await self._login(ctx, _ready(self.app.accounts.check_token(token))) is not None

    @api_method(LoginExArgs, no_auth=True)
    async def login_ex(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        accounts = self.app.accounts
        match data["mechanism"]:
            case "SCRAM":
                return await self._scram(ctx, data)
            case "PASSWORD_PLAIN":
                check = accounts.check_password(data["username"], data["password"])
            case "API_KEY_PLAIN":
                check = accounts.check_api_key(data["api_key"], data["username"])
            case _:
                check = _ready(accounts.check_token(data["token"]))
        credentials = await self._login(ctx, check)
        if credentials is None:
            return {"response_type": "AUTH_ERR"}
        options = data["login_options"]
        return {
            "response_type": "SUCCESS",
            "user_info": user_info(credentials) if options["user_info"] else None,
            "authenticator": "LEVEL_1",
            "reconnect_token": (
                accounts.generate_token(credentials, 600, {}, True) if options["reconnect_token"] else None
            ),
        }

    @api_method(no_auth=True)
    async def mechanism_choices(self, ctx: CallContext) -> list[str]:
        return MECHANISMS

    @api_method(GenerateTokenArgs)
    async def generate_token(
        self, ctx: CallContext, ttl: int | None, attrs: dict[str, Any], match_origin: bool, single_use: bool
    ) -> str:
        assert ctx.credentials is not None
        return self.app.accounts.generate_token(ctx.credentials, ttl, attrs, single_use)

    @api_method()
    async def me(self, ctx: CallContext) -> dict[str, Any]:
        assert ctx.credentials is not None
        return user_info(ctx.credentials)

    @api_method()
    async def logout(self, ctx: CallContext) -> bool:
        assert ctx.session is not None
        ctx.session.credentials = None
        ctx.session.subscriptions.clear()
        return True


async def _ready(value: Credentials | None) -> Credentials | None:
    return value
