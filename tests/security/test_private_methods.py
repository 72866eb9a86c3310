"""Issue 11 item 2: private helpers and methods without a role declaration are for full admins only.

`keychaincredential.get_of_type` returns decrypted private keys: as on TrueNAS it is private, so only a full
admin may call it over the wire (TrueNAS's own tests do). Every method declares who may call it (roles,
no_auth, no_authz_required or private); one that declares nothing is for full admins, never for everyone.
"""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.services.base import CallContext, MethodSpec, Service, api_method
from tests.fixtures.server import TestServer

PASSWORD = "user-password"
#: Role sets below full admin, down to one that has nothing to do with credentials.
NOT_FULL_ADMIN = (["DATASET_DELETE"], ["READONLY_ADMIN"], ["REPLICATION_ADMIN"], ["KEYCHAIN_CREDENTIAL_WRITE"])


async def test_get_of_type_gives_private_keys_to_full_admins_only(server: TestServer) -> None:
    admin = await server.client()
    attributes = await admin.call("keychaincredential.generate_ssh_key_pair")
    key = await admin.call("keychaincredential.create",
                           {"name": "key", "type": "SSH_KEY_PAIR", "attributes": attributes})
    for number, roles in enumerate(NOT_FULL_ADMIN):
        await server.add_user(f"user{number}", PASSWORD, roles)
        client = await server.client(f"user{number}", PASSWORD)
        with pytest.raises(ClientException) as raised:
            await client.call("keychaincredential.get_of_type", key["id"], "SSH_KEY_PAIR")
        assert raised.value.errno == errno.EACCES, roles
        assert attributes["private_key"] not in str(raised.value)
    entry = await admin.call("keychaincredential.get_of_type", key["id"], "SSH_KEY_PAIR")
    assert entry["attributes"]["private_key"] == attributes["private_key"]
    # The helpers that resolve keys for connections are no methods at all, not even for a full admin.
    for helper in ("connection_attributes", "runner", "stored", "stored_one"):
        with pytest.raises(ClientException) as raised:
            await admin.call(f"keychaincredential.{helper}", key["id"])
        assert "Method does not exist" in str(raised.value), helper


async def test_every_private_method_refuses_every_user_but_a_full_admin(server: TestServer) -> None:
    private = sorted(name for name, spec in server.app.methods.items() if spec.private)
    assert {"keychaincredential.get_of_type", "keychaincredential.ssh_pair", "replication.pair",
            "core.job_update"} <= set(private)
    await server.add_user("almost", PASSWORD, sorted({r for roles in NOT_FULL_ADMIN for r in roles}))
    client = await server.client("almost", PASSWORD)
    for name in private:
        # Refused before its arguments are even looked at.
        with pytest.raises(ClientException) as raised:
            await client.call(name)
        assert raised.value.errno == errno.EACCES, name


class Undeclared(Service):
    """A method whose author forgot to say who may call it, and one meant for every logged-in user."""

    namespace = "undeclared"

    @api_method()
    async def forgotten(self, ctx: CallContext) -> str:
        return "secret"

    @api_method(no_authz_required=True)
    async def for_everyone(self, ctx: CallContext) -> str:
        return "hello"


async def test_a_method_without_a_declaration_is_for_full_admins_only(server: TestServer) -> None:
    server.app.register(Undeclared(server.app))
    await server.add_user("nobody", PASSWORD, [])
    nobody = await server.client("nobody", PASSWORD)
    with pytest.raises(ClientException) as raised:
        await nobody.call("undeclared.forgotten")
    assert raised.value.errno == errno.EACCES
    assert await nobody.call("undeclared.for_everyone") == "hello"
    assert await (await server.client()).call("undeclared.forgotten") == "secret"
    # The listing agrees with the dispatcher, and says which methods need no role.
    listed = await nobody.call("core.get_methods", "undeclared")
    assert set(listed) == {"undeclared.for_everyone"}
    assert listed["undeclared.for_everyone"]["no_authz_required"] is True


async def test_what_any_logged_in_user_may_call_is_a_deliberate_list(server: TestServer) -> None:
    open_to_all = sorted(name for name, spec in server.app.methods.items() if spec.no_authz_required)
    assert open_to_all == [
        "auth.generate_token", "auth.logout", "auth.me",
        "core.bulk", "core.describe_schedule", "core.get_jobs", "core.get_methods", "core.get_services",
        "core.job_abort", "core.job_download_logs", "core.job_wait", "core.subscribe", "core.unsubscribe",
    ]
    await server.add_user("nobody", PASSWORD, [])
    nobody = await server.client("nobody", PASSWORD)
    assert (await nobody.call("auth.me"))["pw_name"] == "nobody"
    assert await nobody.call("core.get_jobs") == []
    listed = await nobody.call("core.get_methods")
    assert {name for name, method in listed.items() if not method["no_auth_required"]} == set(open_to_all)


def test_contradictory_declarations_are_refused() -> None:
    async def func(ctx: CallContext) -> None: ...

    for declared in ({"private": True, "roles": ("KEYCHAIN_CREDENTIAL_WRITE",)},
                     {"no_authz_required": True, "roles": ("REPLICATION_TASK_READ",)},
                     {"no_auth": True, "private": True}):
        with pytest.raises(ValueError, match="declare only one of"):
            MethodSpec("x.y", func, Undeclared.forgotten._api_spec["args_model"], **declared)  # type: ignore[attr-defined]
