"""Issue 13 item 8: `has_encrypted_dataset_keys` (`replication.query`/`get_instance` with
`options.extra.check_dataset_encryption_keys`) is true exactly when TrueNAS would report keys to export.

TrueNAS reports it for PUSH tasks whose sources are (or inherit from) encryption roots whose hex key it
stores; it stores one when a replication with `encryption_key_location: "$TrueNAS"` creates an encrypted target
on it. Here: a LOCAL task encrypts `keys/vault` with a stored HEX key; once its run has made the vault an
encryption root, a task sending the vault, or a child inheriting the vault's key, reports keys; the first task
itself (its source is not encrypted), a task sending an unencrypted dataset, and every task when the query does
not ask, report none. The server's own ZFS is the VM's (`local_zfs_ssh`): zfs-fuse has no encryption.
"""
from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from middlewared_plugin.client import Client
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer, running_server
from tests.openzfs.support import local_zfs_over_ssh, run_task, snapshot_name, task

POOL = "keys"
CHECK = {"extra": {"check_dataset_encryption_keys": True}}


@pytest.fixture(scope="module")
async def keys_pool(openzfs_vm: OpenZFSVM) -> AsyncIterator[str]:
    await openzfs_vm.run(["zpool", "create", "-f", POOL, openzfs_vm.disks[0]])
    try:
        yield POOL
    finally:
        await openzfs_vm.run(["zpool", "destroy", "-f", POOL], check=False)


@pytest.fixture(scope="module")
async def server(openzfs_vm: OpenZFSVM, keys_pool: str) -> AsyncIterator[TestServer]:
    """A server whose own ZFS is the guest's."""
    async with running_server(local_zfs_ssh=local_zfs_over_ssh(openzfs_vm)) as running:
        yield running


async def create(client: Client, source: str, target: str, **fields: object) -> int:
    return (await client.call("replication.create", task(source, target, None, **fields)))["id"]


async def reported(client: Client, options: dict[str, object]) -> dict[int, bool]:
    return {t["id"]: t["has_encrypted_dataset_keys"] for t in await client.call("replication.query", [], options)}


async def test_tasks_sending_datasets_whose_stored_key_we_hold_report_keys(
    server: TestServer, openzfs_vm: OpenZFSVM, keys_pool: str,
) -> None:
    client = await server.client()
    source, vault = f"{keys_pool}/src", f"{keys_pool}/vault"
    await openzfs_vm.run(["zfs", "create", source])
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(1)}"])
    encrypting = await create(client, source, vault, encryption=True, encryption_key=secrets.token_hex(32),
                              encryption_key_format="HEX", encryption_key_location="$TrueNAS")
    sending_vault = await create(client, vault, f"{keys_pool}/copy-vault")
    # Before a run made the vault an encryption root, there is no key of it to export.
    assert await reported(client, CHECK) == {encrypting: False, sending_vault: False}

    await run_task(client, encrypting)
    # A child inheriting the vault's key; left unmounted, as the vault is mounted read-only.
    await openzfs_vm.run(["zfs", "create", "-u", f"{vault}/child"])
    sending_child = await create(client, f"{vault}/child", f"{keys_pool}/copy-child")
    sending_plain = await create(client, source, f"{keys_pool}/copy-plain")

    assert await reported(client, CHECK) == {
        encrypting: False, sending_vault: True, sending_child: True, sending_plain: False}
    # Only computed on request, as on TrueNAS.
    assert set((await reported(client, {})).values()) == {False}
    one = await client.call("replication.get_instance", sending_vault, CHECK)
    assert one["has_encrypted_dataset_keys"] is True
