"""SSH connections made from keychain credentials, against a real sshd: host-key scan, MANUAL setup, running
commands (and `zfs list`) through `keychaincredential.runner`, pinned host keys and key rotation."""
from __future__ import annotations

import errno
import socket

import asyncssh
import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.remote.runner import Runner
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.keychain.conftest import create_key_pair, create_ssh_credentials

HOST_KEY_ERROR = "Host key verification failed"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def runner(server: TestServer, credential_id: int) -> Runner:
    return await server.app.service("keychaincredential").runner(credential_id)


def fingerprint(public_key: str) -> str:
    return asyncssh.import_public_key(public_key).get_fingerprint()


def accepted_fingerprints(sshd: SshdServer) -> list[str]:
    """Fingerprints of the client keys sshd accepted, in order (from its VERBOSE log)."""
    return [line.split()[-1] for line in sshd.log_path.read_text().splitlines() if "Accepted publickey" in line]


async def manual_connection(client: Client, sshd: SshdServer, name: str = "conn") -> tuple[dict, dict]:
    """setup_ssh_connection MANUAL with a generated key, authorized on `sshd`: (credentials, key pair)."""
    scanned = await client.call("keychaincredential.remote_ssh_host_key_scan", {"host": sshd.host, "port": sshd.port})
    credentials = await client.call("keychaincredential.setup_ssh_connection", {
        "setup_type": "MANUAL",
        "connection_name": name,
        "private_key": {"generate_key": True, "name": f"{name}-key"},
        "manual_setup": {"host": sshd.host, "port": sshd.port, "remote_host_key": scanned},
    })
    key = await client.call("keychaincredential.query", [["name", "=", f"{name}-key"]], {"get": True})
    sshd.add_authorized_key(key["attributes"]["public_key"])
    return credentials, key


async def test_host_key_scan_returns_the_servers_keys(client: Client, sshd: SshdServer) -> None:
    scanned = await client.call("keychaincredential.remote_ssh_host_key_scan",
                                {"host": sshd.host, "port": sshd.port, "connect_timeout": 5})
    assert scanned.endswith("\n")
    lines = scanned.splitlines()
    assert sorted(lines) == sorted(sshd.host_key_lines)
    assert all(len(line.split()) == 2 and not line.startswith("#") for line in lines)


@pytest.mark.parametrize("host", ["bad host", "invalid..host"])
async def test_host_key_scan_of_an_invalid_host_is_refused_before_any_lookup(client: Client, host: str) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await client.call("keychaincredential.remote_ssh_host_key_scan", {"host": host, "connect_timeout": 5})
    assert [e.attribute for e in raised.value.errors] == ["keychain_remote_ssh_host_key_scan.host"]


async def test_host_key_scan_of_a_closed_port_is_a_call_error(client: Client) -> None:
    port = closed_port()
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.remote_ssh_host_key_scan", {"host": "127.0.0.1", "port": port})
    assert raised.value.errno == errno.ECONNREFUSED
    assert "ssh-keyscan failed" in str(raised.value)


async def test_manual_connection_runs_commands_and_zfs_remotely(
    server: TestServer, client: Client, sshd_fresh: SshdServer, pool: FilePool,
) -> None:
    credentials, key = await manual_connection(client, sshd_fresh)
    assert credentials["type"] == "SSH_CREDENTIALS" and credentials["name"] == "conn"
    assert credentials["attributes"]["private_key"] == key["id"]
    assert credentials["attributes"]["host"] == sshd_fresh.host
    assert key["attributes"]["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    remote = await runner(server, credentials["id"])
    # SSH_CONNECTION is set by sshd only: proof the command went through it, to the test sshd's port.
    env = await remote.run(["printenv", "SSH_CONNECTION"])
    assert env.text.split()[-1] == str(sshd_fresh.port)
    listed = await remote.run(["zfs", "list", "-H", "-o", "name", pool.name])
    assert listed.text.splitlines() == [pool.name]
    assert accepted_fingerprints(sshd_fresh)[-1] == fingerprint(key["attributes"]["public_key"])


async def test_manual_connection_with_an_existing_key(
    server: TestServer, client: Client, sshd_fresh: SshdServer,
) -> None:
    key = await create_key_pair(client, "existing")
    sshd_fresh.add_authorized_key(key["attributes"]["public_key"])
    credentials = await client.call("keychaincredential.setup_ssh_connection", {
        "setup_type": "MANUAL",
        "connection_name": "conn",
        "private_key": {"generate_key": False, "existing_key_id": key["id"]},
        "manual_setup": {"host": "localhost", "port": sshd_fresh.port, "username": "root",
                         "remote_host_key": sshd_fresh.remote_host_key, "connect_timeout": 5},
    })
    assert credentials["attributes"] == {
        "host": "localhost", "port": sshd_fresh.port, "username": "root", "private_key": key["id"],
        "remote_host_key": sshd_fresh.remote_host_key, "connect_timeout": 5,
    }
    assert [c["name"] for c in await client.call("keychaincredential.query")] == ["existing", "conn"]
    assert (await (await runner(server, credentials["id"])).run(["echo", "over ssh"])).text == "over ssh\n"


async def test_wrong_pinned_host_key_is_refused(
    server: TestServer, client: Client, sshd: SshdServer, sshd_fresh: SshdServer,
) -> None:
    key = await create_key_pair(client, "key")
    sshd_fresh.add_authorized_key(key["attributes"]["public_key"])
    # Pinned to another server's keys: the key of this one is unknown, and unknown is never accepted.
    credentials = await create_ssh_credentials(client, "conn", key["id"], sshd_fresh,
                                               remote_host_key=sshd.remote_host_key)
    remote = await runner(server, credentials["id"])
    with pytest.raises(CallError) as raised:
        await remote.run(["true"])
    assert HOST_KEY_ERROR in str(raised.value)
    assert accepted_fingerprints(sshd_fresh) == []


async def test_changed_host_key_fails_the_next_call(server: TestServer, client: Client, sshd_fresh: SshdServer) -> None:
    credentials, _ = await manual_connection(client, sshd_fresh)
    assert (await (await runner(server, credentials["id"])).run(["echo", "ok"])).text == "ok\n"
    logins = len(accepted_fingerprints(sshd_fresh))

    sshd_fresh.swap_host_keys()  # as if the remote system was reinstalled
    with pytest.raises(CallError) as raised:
        await (await runner(server, credentials["id"])).run(["echo", "ok"])
    assert HOST_KEY_ERROR in str(raised.value)
    assert raised.value.errno == errno.EPERM
    assert len(accepted_fingerprints(sshd_fresh)) == logins, "no login happened after the host key changed"

    # Scanning again and storing the new keys is how the user accepts the change.
    scanned = await client.call("keychaincredential.remote_ssh_host_key_scan",
                                {"host": sshd_fresh.host, "port": sshd_fresh.port})
    attributes = {**credentials["attributes"], "remote_host_key": scanned}
    await client.call("keychaincredential.update", credentials["id"], {"attributes": attributes})
    assert (await (await runner(server, credentials["id"])).run(["echo", "ok"])).text == "ok\n"


async def test_key_rotation_takes_effect_on_the_next_connection(
    server: TestServer, client: Client, sshd_fresh: SshdServer,
) -> None:
    old = await create_key_pair(client, "key")
    sshd_fresh.add_authorized_key(old["attributes"]["public_key"])
    credentials = await create_ssh_credentials(client, "conn", old["id"], sshd_fresh)
    assert (await (await runner(server, credentials["id"])).run(["echo", "old"])).text == "old\n"
    assert accepted_fingerprints(sshd_fresh)[-1] == fingerprint(old["attributes"]["public_key"])

    new_pair = await client.call("keychaincredential.generate_ssh_key_pair")
    rotated = await client.call("keychaincredential.update", old["id"], {"attributes": new_pair})
    assert rotated["attributes"]["public_key"] == new_pair["public_key"]
    sshd_fresh.remove_authorized_key(old["attributes"]["public_key"])
    sshd_fresh.add_authorized_key(new_pair["public_key"])
    assert (await (await runner(server, credentials["id"])).run(["echo", "new"])).text == "new\n"
    assert accepted_fingerprints(sshd_fresh)[-1] == fingerprint(new_pair["public_key"])

    # The old key is no longer authorized: putting it back into the key pair makes connections fail.
    await client.call("keychaincredential.update", old["id"], {"attributes": old["attributes"]})
    with pytest.raises(CallError) as raised:
        await (await runner(server, credentials["id"])).run(["echo", "old"])
    assert raised.value.errno == errno.EACCES
    assert "authentication failed" in str(raised.value)


async def test_runner_needs_credentials_with_a_private_key(server: TestServer, client: Client,
                                                           sshd: SshdServer) -> None:
    public_only = await create_key_pair(client, "public-only", public_key=sshd.host_key_lines[0])
    credentials = await create_ssh_credentials(client, "conn", public_only["id"], sshd)
    with pytest.raises(CallError) as raised:
        await runner(server, credentials["id"])
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(CallError) as raised:
        await runner(server, public_only["id"])
    assert str(raised.value) == "[EINVAL] Credential is not of type SSH_CREDENTIALS"
