"""Issue 12 §1: SSH connections name a host (a host name or an IP literal) and an account, checked when saved.

`-oProxyCommand=...` as a host used to be saved and handed to `ssh` as an option. The grammar lives in
`remote/names.py`; credentials saved before it existed are refused when used, before anything connects.
"""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError, ValidationErrors
from tests.fixtures.server import TestServer
from tests.integration.keychain.conftest import create_key_pair

SOME_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpTMxVPAYU0uGvT1W1gmNLuOjhyMvxs8kPyz3IjZ5lD"
BAD_HOSTS = ["-oProxyCommand=touch /tmp/pwned", "-p2222", "nas example", "nas;id", "$(id)", "a..b", ""]
BAD_USERS = ["-oProxyCommand=x", "root;id", "ro ot", "$(id)", ""]


def errors_of(raised: pytest.ExceptionInfo[ValidationErrors]) -> list[tuple[str, str]]:
    return [(e.attribute, e.errmsg) for e in raised.value.errors]


async def connection(client: Client, **attributes: Any) -> dict[str, Any]:
    key = await create_key_pair(client, f"key{len(await client.call('keychaincredential.query'))}")
    return {"name": f"conn-{key['id']}", "type": "SSH_CREDENTIALS", "attributes": {
        "host": "nas.example", "private_key": key["id"], "remote_host_key": SOME_HOST_KEY, **attributes}}


@pytest.mark.parametrize(("field", "value"), [*(("host", h) for h in BAD_HOSTS), *(("username", u) for u in BAD_USERS),
                                              ("port", 0), ("port", 65536)])
async def test_create_refuses_hosts_users_and_ports_that_name_no_connection(client: Client, field: str,
                                                                              value: Any) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.create", await connection(client, **{field: value}))
    paths = [p for p, _ in errors_of(raised)]
    # (Where pydantic puts the union tag in the path is the protocol layer's business, not this suite's.)
    assert len(paths) == 1 and paths[0].startswith("keychain_credential_create.")
    assert paths[0].endswith(f".attributes.{field}")
    assert [c for c in await client.call("keychaincredential.query") if c["type"] == "SSH_CREDENTIALS"] == []


@pytest.mark.parametrize("host", ["nas.example", "nas-1.lan.", "host_1", "10.0.0.1", "::1", "fe80::1%eth0"])
async def test_host_names_and_ip_literals_are_accepted(client: Client, host: str) -> None:
    created = await client.call("keychaincredential.create", await connection(client, host=host, username="zfs$"))
    assert created["attributes"]["host"] == host


async def test_update_refuses_them_too(client: Client) -> None:
    created = await client.call("keychaincredential.create", await connection(client))
    attributes = created["attributes"]
    for field, value in (("host", "-oProxyCommand=x"), ("username", "-l")):
        with pytest.raises(ValidationErrors) as raised:
            await client.call("keychaincredential.update", created["id"], {"attributes": {**attributes, field: value}})
        assert [p for p, _ in errors_of(raised)] == [f"keychain_credential_update.attributes.{field}"]
    assert (await client.call("keychaincredential.get_instance", created["id"]))["attributes"] == attributes


async def test_setup_and_host_key_scan_refuse_them(client: Client) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.setup_ssh_connection", {
            "setup_type": "MANUAL", "connection_name": "conn",
            "private_key": {"generate_key": True, "name": "conn-key"},
            "manual_setup": {"host": "-oProxyCommand=x", "username": "a b", "remote_host_key": SOME_HOST_KEY},
        })
    paths = [p for p, _ in errors_of(raised)]
    assert len(paths) == 2
    assert paths[0].endswith("manual_setup.host") and paths[1].endswith("manual_setup.username")
    assert await client.call("keychaincredential.query") == []
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.remote_ssh_host_key_scan", {"host": "-oProxyCommand=x"})
    assert [p for p, _ in errors_of(raised)] == ["keychain_remote_ssh_host_key_scan.host"]


async def test_credentials_saved_before_the_check_are_refused_when_used(client: Client, server: TestServer) -> None:
    created = await client.call("keychaincredential.create", await connection(client))
    keychain = server.app.service("keychaincredential")
    stored = await keychain.stored_one(created["id"])
    # What an older version let through, written as it stored it.
    await keychain.save(created["id"], {**stored, "attributes": {**stored["attributes"], "host": "-oProxyCommand=x"}})
    with pytest.raises(CallError) as raised:
        await keychain.runner(created["id"])
    assert raised.value.errno == errno.EINVAL
    assert "Invalid host '-oProxyCommand=x'" in raised.value.errmsg
