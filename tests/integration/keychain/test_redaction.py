"""Credentials are secrets: readers without write access see `attributes` as "********" (query results and
`keychaincredential.query` events), and nothing of the key material is stored in plain text."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.keychain.conftest import create_key_pair, create_ssh_credentials

REDACTED = "********"


@pytest.fixture
async def reader(server: TestServer) -> Client:
    await server.add_user("reader", "reader-password", ["READONLY_ADMIN"])
    return await server.client("reader", "reader-password")


async def test_read_only_admin_sees_redacted_attributes(client: Client, reader: Client, sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd)
    assert isinstance(key["attributes"], dict) and key["attributes"]["private_key"]

    for entry in (key, credentials):
        seen = await reader.call("keychaincredential.get_instance", entry["id"])
        assert seen == {**entry, "attributes": REDACTED}
        assert await client.call("keychaincredential.get_instance", entry["id"]) == entry
    assert [c["attributes"] for c in await reader.call("keychaincredential.query")] == [REDACTED, REDACTED]
    assert await reader.call("keychaincredential.used_by", key["id"]) == [
        {"title": "SSH credentials conn", "unbind_method": "delete"},
    ]
    # Filters apply to what the reader sees: the attributes cannot be probed through them either.
    assert await reader.call("keychaincredential.query", [["attributes.private_key", "^", "-----BEGIN"]]) == []


async def test_read_only_admin_cannot_write(client: Client, reader: Client) -> None:
    key = await create_key_pair(client, "key")
    calls: list[tuple[Any, ...]] = [
        ("keychaincredential.create", {"name": "x", "type": "SSH_KEY_PAIR", "attributes": key["attributes"]}),
        ("keychaincredential.update", key["id"], {"name": "y"}),
        ("keychaincredential.delete", key["id"]),
        ("keychaincredential.generate_ssh_key_pair",),
        ("keychaincredential.remote_ssh_host_key_scan", {"host": "127.0.0.1"}),
    ]
    for call in calls:
        with pytest.raises(CallError) as raised:
            await reader.call(*call)
        assert raised.value.errno == errno.EACCES, call
    assert await client.call("keychaincredential.get_instance", key["id"]) == key


async def test_events_are_redacted_for_read_only_admins(client: Client, reader: Client) -> None:
    admin_events: list[dict[str, Any]] = []
    reader_events: list[dict[str, Any]] = []
    await client.subscribe("keychaincredential.query", admin_events.append)
    await reader.subscribe("keychaincredential.query", reader_events.append)
    key = await create_key_pair(client, "key")
    await client.call("keychaincredential.update", key["id"], {"name": "renamed"})
    await client.call("keychaincredential.delete", key["id"])
    await client.ping()
    await reader.ping()

    assert [(e["msg"], e["id"]) for e in reader_events] == [
        ("added", key["id"]), ("changed", key["id"]), ("removed", key["id"])]
    assert [e["fields"]["attributes"] for e in reader_events[:2]] == [REDACTED, REDACTED]
    assert [e["fields"]["attributes"] for e in admin_events[:2]] == [key["attributes"], key["attributes"]]


async def test_key_material_is_not_stored_in_plain_text(server: TestServer, client: Client,
                                                        sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    await create_ssh_credentials(client, "conn", key["id"], sshd)
    secrets = [
        *key["attributes"]["private_key"].splitlines()[1:-1],  # the base64 body of the private key
        key["attributes"]["public_key"].split()[1],
        sshd.host_key_lines[0].split()[1],
    ]
    await server.stop()  # also checkpoints the write-ahead log; both files are read anyway
    try:
        stored = b"".join(p.read_bytes() for p in server.data_dir.glob("middlewared.sqlite*"))
        # Names and types are stored readable; only the attributes are encrypted.
        assert b"SSH_CREDENTIALS" in stored
        for secret in secrets:
            assert secret.encode() not in stored
    finally:
        await server.start()
    # The secret key file lets the restarted server decrypt what the previous process wrote.
    client = await server.client()
    [stored_key, stored_conn] = await client.call("keychaincredential.query")
    assert stored_key["attributes"] == key["attributes"]
    assert stored_conn["attributes"]["private_key"] == key["id"]
