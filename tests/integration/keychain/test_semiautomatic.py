"""Semi-automatic SSH setup between two server instances; the second plays the remote NAS.

The remote's `ssh_pair` authorizes our key for one of its local users; the pairing sshd reads that user's
`~/.ssh/authorized_keys`, so a connection that works proves the key went where `ssh_pair` said it would.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import ipaddress
import pwd
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ESSLCERTVERIFICATIONERROR, CallError
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.keychain.conftest import LocalUser, create_key_pair, make_key, remote_url

HOME_HINT = "user on the remote system exists and is writeable."


def semi_automatic(remote: TestServer, username: str, connection_name: str = "conn",
                   private_key: dict[str, Any] | None = None, **login: Any) -> dict[str, Any]:
    return {
        "setup_type": "SEMI-AUTOMATIC",
        "connection_name": connection_name,
        "private_key": private_key or {"generate_key": True, "name": f"{connection_name}-key"},
        "semi_automatic_setup": {"url": remote_url(remote), "username": username, "connect_timeout": 5, **login},
    }


async def token_of(remote: TestServer) -> str:
    admin = await remote.client()
    return await admin.call("auth.generate_token")


async def key_names(client: Client) -> list[str]:
    return [c["name"] for c in await client.call("keychaincredential.query", [["type", "=", "SSH_KEY_PAIR"]])]


async def test_token_setup_creates_working_credentials(
    server: TestServer, client: Client, remote_nas: TestServer, pairing_sshd: SshdServer,
    local_users: Callable[..., LocalUser], pool: FilePool,
) -> None:
    user = local_users()
    credentials = await client.call("keychaincredential.setup_ssh_connection",
                                    semi_automatic(remote_nas, user.name, token=await token_of(remote_nas)))
    key = await client.call("keychaincredential.query", [["name", "=", "conn-key"]], {"get": True})
    attributes = credentials["attributes"]
    assert credentials["type"] == "SSH_CREDENTIALS" and credentials["name"] == "conn"
    assert {k: v for k, v in attributes.items() if k != "remote_host_key"} == {
        "host": "127.0.0.1", "port": pairing_sshd.port, "username": user.name, "private_key": key["id"],
        "connect_timeout": 5,
    }
    # The remote answered its host keys as "<hostname> <type> <base64>" lines.
    assert [line.split()[1:] for line in attributes["remote_host_key"].splitlines()] == [
        line.split() for line in pairing_sshd.host_key_lines]
    # ssh_pair wrote our public key into the remote user's own authorized_keys, private to that user.
    assert user.authorized_keys.read_text() == key["attributes"]["public_key"] + "\n"
    assert user.authorized_keys.stat().st_mode & 0o777 == 0o600
    assert (user.home / ".ssh").stat().st_mode & 0o777 == 0o700
    assert pairing_sshd.authorized_keys.read_text() == "", "the sshd's own key file was not needed"

    remote = await server.app.service("keychaincredential").runner(credentials["id"])
    assert (await remote.run(["printenv", "USER"])).text == f"{user.name}\n"
    listed = await remote.run(["zfs", "list", "-H", "-o", "name", pool.name])
    assert listed.text.splitlines() == [pool.name]


async def test_password_setup_and_pairing_twice_keeps_one_line(
    server: TestServer, client: Client, remote_nas: TestServer, local_users: Callable[..., LocalUser],
) -> None:
    user = local_users()
    key = await create_key_pair(client, "key")
    data = {"name": "conn", "url": remote_url(remote_nas), "admin_username": ADMIN, "password": ADMIN_PASSWORD,
            "username": user.name, "private_key": key["id"]}
    credentials = await client.call("keychaincredential.remote_ssh_semiautomatic_setup", data)
    assert credentials["attributes"]["private_key"] == key["id"]
    assert credentials["attributes"]["connect_timeout"] == 10
    await client.call("keychaincredential.remote_ssh_semiautomatic_setup", {**data, "name": "again"})
    assert user.authorized_keys.read_text() == key["attributes"]["public_key"] + "\n"
    remote = await server.app.service("keychaincredential").runner(credentials["id"])
    assert (await remote.run(["printenv", "USER"])).text == f"{user.name}\n"


async def test_nologin_user_gets_a_shell(
    server: TestServer, client: Client, remote_nas: TestServer, local_users: Callable[..., LocalUser],
) -> None:
    user = local_users(shell="/usr/sbin/nologin")
    credentials = await client.call("keychaincredential.setup_ssh_connection",
                                    semi_automatic(remote_nas, user.name, token=await token_of(remote_nas)))
    assert pwd.getpwnam(user.name).pw_shell.endswith("/bash")
    remote = await server.app.service("keychaincredential").runner(credentials["id"])
    assert (await remote.run(["echo", "logged in"])).text == "logged in\n"


async def test_wrong_password_fails(client: Client, remote_nas: TestServer,
                                    local_users: Callable[..., LocalUser]) -> None:
    user = local_users()
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection", semi_automatic(
            remote_nas, user.name, admin_username=ADMIN, password="wrong"))
    assert "Invalid username or password" in str(raised.value)
    assert not user.authorized_keys.exists()
    assert await client.call("keychaincredential.query") == []


async def test_bad_token_fails_and_removes_the_generated_key(
    client: Client, remote_nas: TestServer, local_users: Callable[..., LocalUser],
) -> None:
    user = local_users()
    kept = await create_key_pair(client, "unrelated")
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection",
                          semi_automatic(remote_nas, user.name, token="not-a-token"))
    assert "Invalid token" in str(raised.value)
    assert await key_names(client) == [kept["name"]]
    assert not user.authorized_keys.exists()


async def test_failure_keeps_an_existing_key(client: Client, remote_nas: TestServer,
                                             local_users: Callable[..., LocalUser]) -> None:
    user = local_users()
    key = await create_key_pair(client, "existing")
    with pytest.raises(CallError):
        await client.call("keychaincredential.setup_ssh_connection", semi_automatic(
            remote_nas, user.name, private_key={"generate_key": False, "existing_key_id": key["id"]},
            token="not-a-token"))
    assert await key_names(client) == ["existing"]


async def test_neither_password_nor_token(client: Client, remote_nas: TestServer) -> None:
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection", semi_automatic(remote_nas, "root"))
    assert ("You should specify either remote system password or temporary authentication token"
            in str(raised.value))
    assert await client.call("keychaincredential.query") == []


async def test_unreachable_remote(client: Client) -> None:
    key = await create_key_pair(client, "key")
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.remote_ssh_semiautomatic_setup", {
            "name": "conn", "url": "http://127.0.0.1:1", "token": "t", "private_key": key["id"],
        })
    assert "Unable to connect to remote system" in str(raised.value)
    assert raised.value.errno == errno.ECONNREFUSED


async def test_remote_that_is_no_api_server(client: Client, pairing_sshd: SshdServer) -> None:
    key = await create_key_pair(client, "key")
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.remote_ssh_semiautomatic_setup", {
            "name": "conn", "url": f"http://127.0.0.1:{pairing_sshd.port}", "token": "t", "private_key": key["id"],
            "connect_timeout": 5,
        })
    assert "Unable to connect to remote system" in str(raised.value)


async def test_url_without_scheme(client: Client, remote_nas: TestServer,
                                  local_users: Callable[..., LocalUser]) -> None:
    user = local_users()
    key = await create_key_pair(client, "key")
    credentials = await client.call("keychaincredential.remote_ssh_semiautomatic_setup", {
        "name": "conn", "url": f"127.0.0.1:{remote_nas.port}/", "token": await token_of(remote_nas),
        "username": user.name, "private_key": key["id"],
    })
    assert credentials["attributes"]["host"] == "127.0.0.1"


@pytest.mark.parametrize("which", ["missing", "public-only", "ssh-credentials"])
async def test_bad_key_pair_id(client: Client, remote_nas: TestServer, which: str) -> None:
    key_id = 999
    if which == "public-only":
        pair = await client.call("keychaincredential.generate_ssh_key_pair")
        key_id = (await create_key_pair(client, "public", public_key=pair["public_key"]))["id"]
    elif which == "ssh-credentials":
        key = await create_key_pair(client, "key")
        key_id = (await client.call("keychaincredential.create", {
            "name": "other", "type": "SSH_CREDENTIALS",
            "attributes": {"host": "h", "private_key": key["id"], "remote_host_key": "x"},
        }))["id"]
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.remote_ssh_semiautomatic_setup", {
            "name": "conn", "url": remote_url(remote_nas), "token": await token_of(remote_nas), "private_key": key_id,
        })
    assert "Specified key pair not found" in str(raised.value)
    assert "key pair not found" in str(raised.value)


async def test_missing_home_directory(client: Client, remote_nas: TestServer,
                                      local_users: Callable[..., LocalUser]) -> None:
    user = local_users(home=False)
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection",
                          semi_automatic(remote_nas, user.name, token=await token_of(remote_nas)))
    assert raised.value.errno == errno.EFAULT
    message = str(raised.value)
    assert message.startswith("[EFAULT] Semi-automatic SSH connection setup failed: ")
    assert f"Home directory {user.home} does not exist" in message
    assert message.endswith(f"\n\nPlease make sure that home directory for {user.name} {HOME_HINT}")
    assert await client.call("keychaincredential.query") == [], "the generated key pair was removed"


async def test_unknown_remote_user(client: Client, remote_nas: TestServer) -> None:
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection",
                          semi_automatic(remote_nas, "no-such-user-here", token=await token_of(remote_nas)))
    assert "User no-such-user-here does not exist" in str(raised.value)
    assert "make sure that home directory for no-such-user-here user on the remote system exists" in str(
        raised.value)


async def test_ssh_pair_answers_port_and_host_keys(remote_nas: TestServer, pairing_sshd: SshdServer,
                                                   local_users: Callable[..., LocalUser]) -> None:
    user = local_users()
    admin = await remote_nas.client()
    public_key = make_key()[1]  # a real key: ssh_pair refuses anything that is not exactly one
    answer = await admin.call("keychaincredential.ssh_pair",
                              {"remote_hostname": "any-host", "username": user.name, "public_key": public_key})
    assert user.authorized_keys.read_text() == " ".join(public_key.split()[:2]) + "\n"
    assert answer["port"] == pairing_sshd.port
    lines = answer["host_key"].splitlines()
    assert answer["host_key"].endswith("\n")
    assert len({line.split()[0] for line in lines}) == 1, "every line starts with this host's name"
    assert [line.split(maxsplit=1)[1] for line in lines] == pairing_sshd.host_key_lines


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 (no CA trusts it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
async def https_remote(remote_nas: TestServer, tmp_path: Path) -> AsyncIterator[str]:
    """`https://` URL of a TLS front (self-signed certificate) forwarding to the remote NAS."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", remote_nas.port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    front = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=self_signed_context(tmp_path))
    port = front.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        front.close()
        await front.wait_closed()


async def test_self_signed_certificate_needs_verify_ssl_false(
    server: TestServer, client: Client, remote_nas: TestServer, https_remote: str,
    local_users: Callable[..., LocalUser],
) -> None:
    user = local_users()
    request = semi_automatic(remote_nas, user.name, token=await token_of(remote_nas))
    request["semi_automatic_setup"]["url"] = https_remote
    with pytest.raises(CallError) as raised:
        await client.call("keychaincredential.setup_ssh_connection", request)
    assert raised.value.errno == ESSLCERTVERIFICATIONERROR
    assert await client.call("keychaincredential.query") == []

    request["semi_automatic_setup"]["verify_ssl"] = False
    credentials = await client.call("keychaincredential.setup_ssh_connection", request)
    assert credentials["attributes"]["host"] == "127.0.0.1"
    remote = await server.app.service("keychaincredential").runner(credentials["id"])
    assert (await remote.run(["printenv", "USER"])).text == f"{user.name}\n"
