"""Fixtures of the keychain suite: an admin client, a paired "remote NAS" and throwaway local users.

Semi-automatic setup needs a second server (it plays the remote NAS) whose `ssh_pair` writes into a local
user's `~/.ssh/authorized_keys`, and an sshd that reads that file. `pairing_sshd` is the test sshd with
`.ssh/authorized_keys` added to its AuthorizedKeysFile; `local_users` makes users for it and removes them.
Both the sshd and the remote server are shared by a test module: each test pairs its own throwaway users.
Users that must run `zfs` get uid 0 (zfs-fuse's socket is root-only) but their own name and home.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.fixtures.sshd import SshdServer, generate_client_key, running_sshd

__all__ = ["ADMIN", "ADMIN_PASSWORD"]


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


def make_key(name: str = "key", key_type: str = "ed25519", passphrase: str = "") -> tuple[str, str]:
    """(private key, public key line with comment) made by the real ssh-keygen."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if passphrase:
            subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", "me@there", "-f", str(path)],
                           check=True, capture_output=True)
            return path.read_text(), path.with_suffix(".pub").read_text().strip()
        return generate_client_key(Path(tmp), name, key_type)


async def create_key_pair(client: Client, name: str, **attributes: Any) -> dict[str, Any]:
    if not attributes:
        attributes = await client.call("keychaincredential.generate_ssh_key_pair")
    return await client.call("keychaincredential.create",
                             {"name": name, "type": "SSH_KEY_PAIR", "attributes": attributes})


async def create_ssh_credentials(client: Client, name: str, key_id: int, sshd: SshdServer,
                                 **overrides: Any) -> dict[str, Any]:
    return await client.call("keychaincredential.create", {
        "name": name,
        "type": "SSH_CREDENTIALS",
        "attributes": {"host": sshd.host, "port": sshd.port, "username": "root", "private_key": key_id,
                       "remote_host_key": sshd.remote_host_key, **overrides},
    })


@pytest.fixture(scope="module")
def pairing_sshd() -> Iterator[SshdServer]:
    """The test sshd that also reads each user's own `~/.ssh/authorized_keys`, where `ssh_pair` writes."""
    with running_sshd(user_key_files=True) as sshd:
        yield sshd


@dataclass
class LocalUser:
    name: str
    home: Path

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"


_user_numbers = itertools.count()


@pytest.fixture
def local_users() -> Iterator[Callable[..., LocalUser]]:
    """`make(home=True, shell="/bin/bash")`: a throwaway local user (uid 0, unlocked, keys only)."""
    made: list[LocalUser] = []

    def make(*, home: bool = True, shell: str = "/bin/bash") -> LocalUser:
        name = f"mwpt{os.getpid()}u{next(_user_numbers)}"
        directory = Path(tempfile.gettempdir()) / f"{name}-home"
        # "*" instead of useradd's locked "!": sshd without PAM refuses locked accounts even for key logins.
        subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-p", "*", "-s", shell, "-d", str(directory),
                        "-m" if home else "-M", name], check=True, capture_output=True)
        user = LocalUser(name, directory)
        made.append(user)
        return user

    yield make
    for user in made:
        # -f: other uid-0 processes (all of root's) would otherwise make userdel refuse.
        subprocess.run(["userdel", "-f", user.name], capture_output=True)
        shutil.rmtree(user.home, ignore_errors=True)
        assert subprocess.run(["getent", "passwd", user.name], capture_output=True).returncode != 0


@pytest.fixture(scope="module")
async def remote_nas(pairing_sshd: SshdServer) -> AsyncIterator[TestServer]:
    """A second server playing the other NAS: its SSH port and host keys are the pairing sshd's."""
    data_dir = Path(tempfile.mkdtemp(prefix="mwp-remote-"))
    key_files = []
    for i, line in enumerate(pairing_sshd.host_key_lines):
        path = data_dir / f"ssh_host_{i}_key.pub"
        path.write_text(line + " root@remote\n")
        key_files.append(path)
    remote = await TestServer(data_dir, ssh_port=pairing_sshd.port, ssh_host_key_files=tuple(key_files),
                              scheduler_enabled=False).start()
    try:
        yield remote
    finally:
        await remote.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def remote_url(remote: TestServer) -> str:
    """The other NAS's address as a user types it in the UI."""
    return f"http://127.0.0.1:{remote.port}"
