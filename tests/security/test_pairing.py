"""Issue 11 item 1: `replication.pair` / `keychaincredential.ssh_pair` add one public key to a local account.

Only a full admin may pair; the key is exactly one OpenSSH public key (no line break, no options prefix, a key
type asyncssh knows); the account must exist; authorized_keys is replaced atomically, keeps its owner, gets mode
0600 and keeps every existing byte; nothing is written through a symbolic link. A nologin shell becomes bash
only where TrueNAS's semi-automatic setup does it (ssh_pair), never for the legacy `replication.pair`, and the
change is logged. Every account here is a throwaway one with its home under the temp directory.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer

PASSWORD = "user-password"
_numbers = itertools.count()


@dataclass
class Account:
    name: str
    home: Path

    @property
    def ssh_dir(self) -> Path:
        return self.home / ".ssh"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def entry(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.name)


@pytest.fixture
def accounts() -> Iterator[Callable[..., Account]]:
    """`make(shell="/bin/bash")`: a throwaway local account (its own uid) with a home directory."""
    made: list[Account] = []

    def make(shell: str = "/bin/bash") -> Account:
        name = f"mwps{os.getpid()}p{next(_numbers)}"
        home = Path(tempfile.gettempdir()) / f"{name}-home"
        subprocess.run(["useradd", "-m", "-d", str(home), "-s", shell, name], check=True, capture_output=True)
        account = Account(name, home)
        made.append(account)
        return account

    yield make
    for account in made:
        subprocess.run(["userdel", "-f", account.name], capture_output=True)
        shutil.rmtree(account.home, ignore_errors=True)


def new_key() -> str:
    """A fresh public key line `"<type> <base64>"`."""
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()


def pair_calls(username: str, public_key: str) -> list[tuple[str, dict[str, Any]]]:
    """Both ways to pair: the current method and the legacy one (its own argument names)."""
    return [
        ("keychaincredential.ssh_pair", {"remote_hostname": "any-host", "username": username,
                                         "public_key": public_key}),
        ("replication.pair", {"hostname": "any-host", "public-key": public_key, "user": username}),
    ]


def make_ssh_dir(account: Account) -> None:
    account.ssh_dir.mkdir(mode=0o700)
    os.chown(account.ssh_dir, account.entry.pw_uid, account.entry.pw_gid)


async def test_only_a_full_admin_may_pair(server: TestServer, accounts: Callable[..., Account]) -> None:
    account = accounts()
    key = new_key()
    # Read-only, and even every replication and keychain write role: pairing is for full admins only.
    for number, roles in enumerate((["READONLY_ADMIN"], ["REPLICATION_ADMIN"], ["DATASET_DELETE"])):
        await server.add_user(f"user{number}", PASSWORD, roles)
        client = await server.client(f"user{number}", PASSWORD)
        for method, data in pair_calls(account.name, key):
            with pytest.raises(ClientException) as raised:
                await client.call(method, data)
            assert raised.value.errno == errno.EACCES, (roles, method)
    assert not account.ssh_dir.exists()

    admin = await server.client()
    answer = await admin.call("keychaincredential.ssh_pair", pair_calls(account.name, key)[0][1])
    assert answer["port"] == server.app.settings.ssh_port
    assert account.authorized_keys.read_text() == key + "\n"
    written = account.authorized_keys.stat()
    assert (written.st_uid, written.st_gid) == (account.entry.pw_uid, account.entry.pw_gid)
    assert written.st_mode & 0o777 == 0o600
    # The account must exist.
    with pytest.raises(ClientException) as raised:
        await admin.call("replication.pair", {"hostname": "h", "public-key": key, "user": f"{account.name}x"})
    assert raised.value.errno == errno.ENOENT


async def test_the_key_must_be_exactly_one_public_key(server: TestServer,
                                                      accounts: Callable[..., Account]) -> None:
    account = accounts()
    key, other = new_key(), new_key()
    key_type, blob = key.split()
    refused = [
        f'{key}\ncommand="/bin/sh" {other}',  # a line break adds a line of the caller's choosing
        f"{key}\r{other}",
        f'command="/bin/sh" {key}',  # an options prefix
        f'from="*",no-pty {key}',
        f"ssh-rsa {blob}",  # the type does not match the key
        f"ssh-unknown {blob}",
        blob,
        "",
    ]
    admin = await server.client()
    for text in refused:
        for method, data in pair_calls(account.name, text):
            with pytest.raises(ValidationErrors) as raised:
                await admin.call(method, data)
            assert raised.value.errors[0].errmsg.startswith("Invalid public key"), (method, text)
    assert not account.ssh_dir.exists()
    # A comment is no options prefix: accepted, and not written.
    await admin.call("replication.pair", {"hostname": "h", "public-key": f"{key} me@there", "user": account.name})
    assert account.authorized_keys.read_text() == f"{key_type} {blob}\n"


async def test_authorized_keys_is_replaced_atomically_keeping_its_owner_and_every_byte(
    server: TestServer, accounts: Callable[..., Account],
) -> None:
    account = accounts()
    make_ssh_dir(account)
    kept = new_key()
    # Hand-written lines, an options line and a last line without its newline all stay exactly as they are.
    existing = f'# added by hand\nfrom="10.0.0.1",no-pty {kept} ops@desk\n\n{new_key()} last'.encode()
    account.authorized_keys.write_bytes(existing)
    os.chmod(account.authorized_keys, 0o644)
    os.chown(account.authorized_keys, 0, 0)  # root-owned, as some admins keep it
    before = account.authorized_keys.stat()

    key = new_key()
    admin = await server.client()
    await admin.call("keychaincredential.ssh_pair", pair_calls(account.name, key)[0][1])
    after = account.authorized_keys.stat()
    assert account.authorized_keys.read_bytes() == existing + b"\n" + key.encode() + b"\n"
    assert after.st_ino != before.st_ino, "a new file renamed over the old one, not written in place"
    assert (after.st_uid, after.st_gid) == (0, 0)
    assert after.st_mode & 0o777 == 0o600
    assert os.listdir(account.ssh_dir) == ["authorized_keys"], "no temporary file left behind"

    # A key that is there already (also with options) leaves the file alone.
    for public_key in (key, kept):
        await admin.call("replication.pair", {"hostname": "h", "public-key": public_key, "user": account.name})
        assert account.authorized_keys.stat().st_ino == after.st_ino
    assert account.authorized_keys.read_bytes() == existing + b"\n" + key.encode() + b"\n"


async def test_pairing_never_writes_through_a_symbolic_link(
    server: TestServer, accounts: Callable[..., Account], tmp_path: Path,
) -> None:
    # The account's owner controls its home: links could point root's writes at any file.
    victim = tmp_path / "victim"
    victim.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    victim.chmod(0o600)
    linked_file = accounts()
    make_ssh_dir(linked_file)
    linked_file.authorized_keys.symlink_to(victim)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked_dir = accounts()
    linked_dir.ssh_dir.symlink_to(elsewhere)

    admin = await server.client()
    for account in (linked_file, linked_dir):
        for method, data in pair_calls(account.name, new_key()):
            with pytest.raises(ClientException) as raised:
                await admin.call(method, data)
            assert raised.value.errno == errno.EPERM, (account, method)
    assert victim.read_text() == "root:$6$secret-hash:19000:0:99999:7:::\n"
    assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o600)
    assert linked_file.authorized_keys.is_symlink()
    assert list(elsewhere.iterdir()) == []


async def test_a_shell_changes_only_where_truenas_changes_it_and_is_logged(
    server: TestServer, accounts: Callable[..., Account], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="middlewared_plugin.services.keychain")
    legacy = accounts(shell="/usr/sbin/nologin")
    disabled = accounts(shell="/bin/false")
    semi_automatic = accounts(shell="/usr/sbin/nologin")
    admin = await server.client()
    # Legacy pairing never touches the account (TrueNAS's neither).
    await admin.call("replication.pair", {"hostname": "h", "public-key": new_key(), "user": legacy.name})
    assert legacy.entry.pw_shell == "/usr/sbin/nologin"
    # Only a nologin shell is replaced, as TrueNAS's semi-automatic setup does.
    await admin.call("keychaincredential.ssh_pair", pair_calls(disabled.name, new_key())[0][1])
    assert disabled.entry.pw_shell == "/bin/false"
    assert not any("shell" in r.getMessage() for r in caplog.records)

    await admin.call("keychaincredential.ssh_pair", pair_calls(semi_automatic.name, new_key())[0][1])
    assert semi_automatic.entry.pw_shell.endswith("/bash")
    [changed] = [r for r in caplog.records if "shell" in r.getMessage()]
    assert changed.levelno == logging.WARNING
    message = changed.getMessage()
    assert semi_automatic.name in message and "/usr/sbin/nologin" in message and "admin" in message
