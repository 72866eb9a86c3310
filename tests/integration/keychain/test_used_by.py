"""Who uses a credential (`used_by`, recursive), delete with and without cascade, `get_of_type`, and the
argument checks of `setup_ssh_connection`."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError, ValidationErrors
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.keychain.conftest import create_key_pair, create_ssh_credentials

CASCADE_ERROR = [["options.cascade", "This credential is used and no cascade option is specified", errno.EINVAL]]


async def create_replication(client: Client, name: str, credentials_id: int) -> dict[str, Any]:
    """A manual SSH push task using `credentials_id` (nothing connects while creating it)."""
    return await client.call("replication.create", {
        "name": name, "direction": "PUSH", "transport": "SSH", "ssh_credentials": credentials_id,
        "source_datasets": ["tank/src"], "target_dataset": "tank/dst", "recursive": False,
        "also_include_naming_schema": ["snap-%Y-%m-%d-%H-%M"], "auto": False, "retention_policy": "NONE",
    })


async def ids(client: Client) -> list[int]:
    return [c["id"] for c in await client.call("keychaincredential.query")]


async def test_used_by_is_recursive(client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    unrelated = await create_key_pair(client, "unrelated")
    assert await client.call("keychaincredential.used_by", key["id"]) == []
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    assert await client.call("keychaincredential.used_by", key["id"]) == [
        {"title": "SSH credentials conn", "unbind_method": "delete"},
    ]
    assert await client.call("keychaincredential.used_by", credentials["id"]) == []
    await create_replication(client, "push", credentials["id"])
    assert await client.call("keychaincredential.used_by", credentials["id"]) == [
        {"title": "Replication task push", "unbind_method": "disable"},
    ]
    assert await client.call("keychaincredential.used_by", key["id"]) == [
        {"title": "SSH credentials conn", "unbind_method": "delete"},
        {"title": "Replication task push", "unbind_method": "disable"},
    ]
    assert await client.call("keychaincredential.used_by", unrelated["id"]) == []


async def test_used_by_unknown_id(client: Client) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.used_by", 42)
    assert raised.value.errors[0].errno == errno.ENOENT


async def test_delete_of_a_used_credential_needs_cascade(client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    # The client raises ValidationErrors only for a -32602 error whose extra is the triples list.
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.delete", key["id"])
    assert raised.value.triples() == CASCADE_ERROR
    await create_replication(client, "push", credentials["id"])
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.delete", credentials["id"], {"cascade": False})
    assert raised.value.triples() == CASCADE_ERROR
    assert await ids(client) == [key["id"], credentials["id"]]


async def test_cascade_delete_of_a_key_pair(client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    other_key = await create_key_pair(client, "other")
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    kept = await create_ssh_credentials(client, "kept", other_key["id"], sshd)
    task = await create_replication(client, "push", credentials["id"])
    events: list[dict[str, Any]] = []
    await client.subscribe("keychaincredential.query", events.append)

    assert await client.call("keychaincredential.delete", key["id"], {"cascade": True}) is None
    assert await ids(client) == [other_key["id"], kept["id"]]
    # The task that used the deleted SSH credentials is disabled and unbound, not deleted.
    task = await client.call("replication.get_instance", task["id"])
    assert task["enabled"] is False and task["ssh_credentials"] is None
    await client.ping()
    assert sorted((e["msg"], e["id"]) for e in events) == [("removed", key["id"]), ("removed", credentials["id"])]


async def test_cascade_delete_of_ssh_credentials(client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    task = await create_replication(client, "push", credentials["id"])
    await client.call("keychaincredential.delete", credentials["id"], {"cascade": True})
    assert await ids(client) == [key["id"]]
    task = await client.call("replication.get_instance", task["id"])
    assert task["enabled"] is False and task["ssh_credentials"] is None


async def test_unused_credentials_are_deleted_without_cascade(client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    await client.call("keychaincredential.delete", credentials["id"])
    await client.call("keychaincredential.delete", key["id"])
    assert await ids(client) == []
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.delete", key["id"])
    assert raised.value.errors[0].errno == errno.ENOENT


async def test_get_of_type(server: TestServer, client: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    assert (await client.call("keychaincredential.get_of_type", key["id"], "SSH_KEY_PAIR"))["id"] == key["id"]
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.get_of_type", 999, "SSH_KEY_PAIR")
    assert raised.value.errno == errno.ENOENT and "Credential does not exist" in str(raised.value)
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.get_of_type", key["id"], "SSH_CREDENTIALS")
    assert raised.value.errno == errno.EINVAL
    assert "Credential is not of type SSH_CREDENTIALS" in str(raised.value)


async def test_undecryptable_attributes(server: TestServer, client: Client) -> None:
    key = await create_key_pair(client, "key")
    other = await create_key_pair(client, "other")
    # As after restoring a database without its secret key: the stored value cannot be decrypted.
    stored = await server.app.store.get("keychaincredential", key["id"])
    assert stored is not None
    await server.app.store.update("keychaincredential", key["id"], {**stored, "attributes": "fernet:bm90LWEtdG9rZW4="})
    listed = await client.call("keychaincredential.query")
    assert [(c["id"], c["attributes"]) for c in listed] == [(key["id"], {}), (other["id"], other["attributes"])]
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.get_of_type", key["id"], "SSH_KEY_PAIR")
    assert raised.value.errno == errno.EFAULT
    assert "Decrypting credential key failed" in str(raised.value)


@pytest.mark.parametrize(("options", "errors"), [
    ({"private_key": {"generate_key": False, "existing_key_id": 999}},
     [("setup_ssh_connection.private_key.existing_key_id", "SSH Key Pair not found")]),
    ({"private_key": {"generate_key": True, "name": "key"}},
     [("setup_ssh_connection.private_key.name", "Is already in use by another SSH Key pair")]),
    ({"connection_name": "conn"},
     [("setup_ssh_connection.connection_name", "Is already in use by another Keychain Credential")]),
    ({"connection_name": "key", "private_key": {"generate_key": False, "existing_key_id": "$conn"}},
     [("setup_ssh_connection.private_key.existing_key_id", "SSH Key Pair not found"),
      ("setup_ssh_connection.connection_name", "Is already in use by another Keychain Credential")]),
], ids=["missing-key", "key-name", "connection-name", "both"])
async def test_setup_ssh_connection_validation(client: Client, sshd: SshdServer, options: dict[str, Any],
                                               errors: list[tuple[str, str]]) -> None:
    key = await create_key_pair(client, "key")
    conn = await create_ssh_credentials(client, "conn", key["id"], sshd)
    request = {
        "setup_type": "MANUAL", "connection_name": "new", "private_key": {"generate_key": True, "name": "new-key"},
        "manual_setup": {"host": sshd.host, "port": sshd.port, "remote_host_key": sshd.remote_host_key},
        **options,
    }
    if request["private_key"].get("existing_key_id") == "$conn":
        request["private_key"]["existing_key_id"] = conn["id"]  # an SSH_CREDENTIALS id is no key pair
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.setup_ssh_connection", request)
    assert [(e.attribute, e.errmsg) for e in raised.value.errors] == errors
    assert await ids(client) == [key["id"], conn["id"]]
