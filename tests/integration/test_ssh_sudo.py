"""`sudo` on SSH credentials: a non-root remote user runs zfs/zpool through passwordless sudo, nothing else."""
from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshConnectionPool, runner_for_credentials
from tests.fixtures.sshd import SshdServer


async def _add_user(local: LocalRunner, name: str) -> None:
    await local.run(["useradd", "-m", "-s", "/bin/bash", name])
    # useradd leaves the account locked ("!"), which sshd refuses even for key logins; "*" only rules out passwords.
    await local.run(["usermod", "-p", "*", name])


@pytest.fixture
def readable_authorized_keys(sshd: SshdServer) -> Iterator[None]:
    """sshd reads a user's authorized keys with that user's rights: let non-root users read the fixture's file
    (public keys only) for the test."""
    directory, keys = sshd.authorized_keys.parent, sshd.authorized_keys
    modes = directory.stat().st_mode, keys.stat().st_mode
    directory.chmod(0o711)
    keys.chmod(0o644)
    try:
        yield
    finally:
        directory.chmod(modes[0])
        keys.chmod(modes[1])


@pytest.fixture
async def sudo_user() -> AsyncIterator[str]:
    """A throwaway local user allowed to run only zfs and zpool as root without a password."""
    name = f"mwsudo{secrets.token_hex(3)}"
    local = LocalRunner()
    sudoers = Path(f"/etc/sudoers.d/{name}")
    await _add_user(local, name)
    zfs = (await local.run(["which", "zfs"])).text.strip()
    zpool = (await local.run(["which", "zpool"])).text.strip()
    await asyncio.to_thread(sudoers.write_text, f"{name} ALL=(root) NOPASSWD: {zfs}, {zpool}\n")
    await asyncio.to_thread(sudoers.chmod, 0o440)
    try:
        yield name
    finally:
        await asyncio.to_thread(sudoers.unlink, missing_ok=True)
        await local.run(["userdel", "-r", "-f", name], check=False)


async def test_sudo_lets_a_non_root_user_run_zfs_and_only_zfs_as_root(
    sshd: SshdServer, ssh_client_key: dict[str, str], pool: FilePool, sudo_user: str, readable_authorized_keys: None,
):
    connections = SshConnectionPool()
    attributes = sshd.credentials(ssh_client_key["private_key"], username=sudo_user)
    plain = runner_for_credentials(attributes, sudo=False, pool=connections)
    with_sudo = runner_for_credentials(attributes, sudo=True, pool=connections)
    try:
        # zfs-fuse's socket is root's only: without sudo the same user cannot list the pool.
        with pytest.raises(CallError):
            await plain.run(["zfs", "list", "-H", "-o", "name", pool.name])
        listed = await with_sudo.run(["zfs", "list", "-H", "-o", "name", pool.name])
        assert listed.text.split() == [pool.name]
        # Other commands are not wrapped in sudo: they run as the user.
        uid = int((await with_sudo.run(["id", "-u"])).text)
        assert uid != 0
    finally:
        await connections.close_all()


async def test_sudo_without_a_sudoers_rule_fails_clearly(
    sshd: SshdServer, ssh_client_key: dict[str, str], pool: FilePool, readable_authorized_keys: None,
):
    name = f"mwnosudo{secrets.token_hex(3)}"
    local = LocalRunner()
    await _add_user(local, name)
    connections = SshConnectionPool()
    try:
        runner = runner_for_credentials(sshd.credentials(ssh_client_key["private_key"], username=name),
                                        sudo=True, pool=connections)
        with pytest.raises(CallError) as raised:
            await runner.run(["zfs", "list", pool.name])
        assert raised.value.errno == errno.EFAULT
        assert "sudo" in str(raised.value)
    finally:
        await connections.close_all()
        await local.run(["userdel", "-r", "-f", name], check=False)
