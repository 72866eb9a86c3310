"""PUSH from this machine (zfs-fuse) over SSH into the OpenZFS VM: a zfs-fuse stream is received by OpenZFS,
and the target is encrypted as the task asks (seed-remote-replication: "Encryption" of the destination).

- HEX key kept in this server's database (`encryption_key_location: "$TrueNAS"`): the target is its own
  encryption root with keylocation=prompt, and the key the task stores loads it. The stored key is
  encrypted at rest and shown as "********" to a read-only reader.
- PASSPHRASE with a key location: the key file is left where the task says, and `zfs load-key` reads it.
- `encryption_inherit`: the target joins its encrypted parent's encryption root.
- An encrypted source sent raw cannot land on zfs-fuse, which has no encryption: a clear error.

The guest pool `crypt` (one VM disk) is shared by the module; each test uses datasets of its own.
"""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer
from tests.openzfs.support import (
    PASSPHRASE,
    PBKDF2_ITERS,
    SCHEMA,
    connect_to_vm,
    create_encrypted,
    job_log,
    last_job_log,
    load_key,
    mountpoint,
    prop,
    props,
    run_task,
    sha256,
    snapshot_name,
    task,
    unload_key,
    write_local_random,
    write_random,
)

REDACTED = "********"
VM_POOL = "crypt"


@pytest.fixture(scope="module")
async def crypt(openzfs_vm: OpenZFSVM) -> AsyncIterator[str]:
    """The guest pool the module's targets live in."""
    await openzfs_vm.run(["zpool", "create", "-f", VM_POOL, openzfs_vm.disks[2]])
    try:
        yield VM_POOL
    finally:
        await openzfs_vm.run(["zpool", "destroy", "-f", VM_POOL], check=False)


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


@pytest.fixture
async def credentials(client: Client, openzfs_vm: OpenZFSVM) -> int:
    return await connect_to_vm(client, openzfs_vm)


async def local_source(zfs: Zfs, pool: FilePool, megabytes: int = 2, day: int = 1) -> tuple[str, str]:
    """`<pool>/src` on zfs-fuse with one file of random data and a snapshot; returns (dataset, file hash)."""
    source = f"{pool.name}/src"
    if not await zfs.exists(source):
        await zfs.create_dataset(source)
    path = Path((await zfs.get_properties(source, ["mountpoint"]))["mountpoint"] or "") / f"file{day}"
    digest = await asyncio.to_thread(write_local_random, path, megabytes)
    await zfs.create_snapshots(source, snapshot_name(day))
    return source, digest


async def assert_file(vm: OpenZFSVM, dataset: str, name: str, digest: str) -> None:
    await vm.run(["zfs", "mount", dataset], check=False)  # already mounted is fine
    assert await sha256(vm, f"{await mountpoint(vm, dataset)}/{name}") == digest


async def test_zfs_fuse_stream_is_received_by_openzfs_full_then_incremental(
    server: TestServer, client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM,
    crypt: str,
) -> None:
    source, first = await local_source(local_zfs, pool, day=1)
    target = f"{crypt}/plain"
    created = await client.call("replication.create", task(source, target, credentials))
    await run_task(client, created["id"])

    _, second = await local_source(local_zfs, pool, day=2)
    await run_task(client, created["id"])

    # The second run is incremental from the first snapshot.
    log = await last_job_log(server, client, created["id"])
    assert f"-i {source}@{snapshot_name(1)}" in log, log
    listed = await openzfs_vm.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name,guid", "-s", "createtxg",
                                   target])
    local = await local_zfs.list_snapshots(source, recursive=False)
    assert [line.split("\t") for line in listed.text.splitlines()] == [
        [f"{target}@{s.name}", str(s.guid)] for s in local]
    assert await prop(openzfs_vm, target, "encryption") == "off"
    await assert_file(openzfs_vm, target, "file1", first)
    await assert_file(openzfs_vm, target, "file2", second)


async def test_hex_key_stored_in_this_server_encrypts_the_target_and_loads_it(
    server: TestServer, client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM,
    crypt: str,
) -> None:
    source, digest = await local_source(local_zfs, pool)
    target = f"{crypt}/hex"
    key = secrets.token_hex(32)
    created = await client.call("replication.create", task(
        source, target, credentials, encryption=True, encryption_key=key, encryption_key_format="HEX",
        encryption_key_location="$TrueNAS"))
    await run_task(client, created["id"])

    assert await props(openzfs_vm, target, "encryption", "keyformat", "encryptionroot", "keylocation",
                       "keystatus") == {
        "encryption": "aes-256-gcm", "keyformat": "hex", "encryptionroot": target,
        # the key lives in this server's database, not on the target
        "keylocation": "prompt", "keystatus": "available"}
    await unload_key(openzfs_vm, target)
    assert await prop(openzfs_vm, target, "keystatus") == "unavailable"
    stored = await client.call("replication.get_instance", created["id"])
    await load_key(openzfs_vm, target, stored["encryption_key"])
    assert await prop(openzfs_vm, target, "keystatus") == "available"
    await assert_file(openzfs_vm, target, "file1", digest)
    # No copy of the key file is left behind in the guest.
    leftovers = await openzfs_vm.run(["find", "/tmp", "-name", "replication-key.*"])
    assert leftovers.text.strip() == ""

    # At rest the key is encrypted: no database file holds it, nor does the run's log.
    for path in server.data_dir.glob("middlewared.sqlite*"):
        assert key.encode() not in path.read_bytes(), path
    assert key not in await job_log(server, stored["job"]["id"])
    # Readers without the write role see it redacted; the admin sees it.
    assert stored["encryption_key"] == key
    await server.add_user("reader", "reader-password", ["READONLY_ADMIN"])
    reader = await server.client("reader", "reader-password")
    seen = await reader.call("replication.get_instance", created["id"])
    assert seen["encryption_key"] == REDACTED
    assert [t["encryption_key"] for t in await reader.call("replication.query")] == [REDACTED]


async def test_passphrase_is_written_to_the_key_location_and_loads_from_there(
    client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM, crypt: str,
) -> None:
    source, digest = await local_source(local_zfs, pool)
    target = f"{crypt}/pass"
    location = "/root/crypt-pass.key"
    created = await client.call("replication.create", task(
        source, target, credentials, encryption=True, encryption_key=PASSPHRASE,
        encryption_key_format="PASSPHRASE", encryption_key_location=location,
        # fewer PBKDF2 rounds than the default: key derivation is slow under emulation
        properties_override={"pbkdf2iters": PBKDF2_ITERS}))
    try:
        await run_task(client, created["id"])

        assert await props(openzfs_vm, target, "encryption", "keyformat", "encryptionroot", "keylocation") == {
            "encryption": "aes-256-gcm", "keyformat": "passphrase", "encryptionroot": target,
            "keylocation": f"file://{location}"}
        mode = await openzfs_vm.run(["stat", "-c", "%a", location])
        assert mode.text.strip() == "600"
        await unload_key(openzfs_vm, target)
        await load_key(openzfs_vm, target)  # from the key location
        assert await prop(openzfs_vm, target, "keystatus") == "available"
        await assert_file(openzfs_vm, target, "file1", digest)
    finally:
        await openzfs_vm.run(["rm", "-f", location])


async def test_inherited_encryption_joins_the_parents_encryption_root(
    client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM, crypt: str,
) -> None:
    source, digest = await local_source(local_zfs, pool)
    parent = f"{crypt}/vault"
    await create_encrypted(openzfs_vm, parent)
    target = f"{parent}/copy"
    created = await client.call("replication.create", task(
        source, target, credentials, encryption=True, encryption_inherit=True))
    await run_task(client, created["id"])

    assert await props(openzfs_vm, target, "encryption", "encryptionroot", "keystatus") == {
        "encryption": "aes-256-gcm", "encryptionroot": parent, "keystatus": "available"}
    await unload_key(openzfs_vm, parent)
    assert await prop(openzfs_vm, target, "keystatus") == "unavailable"
    await load_key(openzfs_vm, parent, PASSPHRASE)
    assert await prop(openzfs_vm, target, "keystatus") == "available"
    await openzfs_vm.run(["zfs", "mount", parent])
    await assert_file(openzfs_vm, target, "file1", digest)


async def test_raw_stream_of_an_encrypted_source_cannot_land_on_zfs_fuse(
    client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM, crypt: str,
) -> None:
    source = f"{crypt}/secret"
    await create_encrypted(openzfs_vm, source)
    await write_random(openzfs_vm, f"/{source}/data", 1)
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(1)}"])
    pull = {**task(source, f"{pool.name}/secret", credentials, direction="PULL"),
            "naming_schema": [SCHEMA], "also_include_naming_schema": []}
    created = await client.call("replication.create", pull)

    with pytest.raises(ClientException) as raised:
        await run_task(client, created["id"])
    assert "does not support native encryption" in str(raised.value), raised.value
    assert not await local_zfs.exists(f"{pool.name}/secret")
    state = (await client.call("replication.get_instance", created["id"]))["state"]
    assert state["state"] == "ERROR" and "native encryption" in state["error"]


@pytest.mark.parametrize("readonly", ["IGNORE", "SET"])
async def test_encrypted_target_takes_incrementals_on_later_runs(
    server: TestServer, client: Client, credentials: int, pool: FilePool, local_zfs: Zfs, openzfs_vm: OpenZFSVM,
    crypt: str, readonly: str,
) -> None:
    """Issue 12 §2: a first read-write mount of a newly encrypted dataset writes ~53 KiB (accounting
    upgrade), which used to make the second run fail "was modified since its snapshot". Targets are received
    unmounted and mounted read-only, so the second and third runs are plain incrementals, nothing rolled back."""
    target = f"{crypt}/later-{readonly.lower()}"
    digests = {}
    source, digests[1] = await local_source(local_zfs, pool, megabytes=1, day=1)
    created = await client.call("replication.create", task(
        source, target, credentials, encryption=True, encryption_key=secrets.token_hex(32),
        encryption_key_format="HEX", encryption_key_location="$TrueNAS", readonly=readonly))
    await run_task(client, created["id"])
    for day in (2, 3):
        # The target is read between runs, as a user checking the backup would.
        await assert_file(openzfs_vm, target, f"file{day - 1}", digests[day - 1])
        _, digests[day] = await local_source(local_zfs, pool, megabytes=1, day=day)

        await run_task(client, created["id"])

        log = await last_job_log(server, client, created["id"])
        assert f"-i {source}@{snapshot_name(day - 1)}" in log, log
        assert "zfs rollback" not in log and "Rolled back" not in log and "0 rolled back" in log, log
        assert await prop(openzfs_vm, target, "written") == "0"
    listed = await openzfs_vm.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", target])
    assert listed.text.split() == [f"{target}@{snapshot_name(day)}" for day in (1, 2, 3)]
    assert await props(openzfs_vm, target, "encryptionroot", "mounted") == {"encryptionroot": target,
                                                                             "mounted": "yes"}
    for day in (1, 2, 3):
        await assert_file(openzfs_vm, target, f"file{day}", digests[day])
