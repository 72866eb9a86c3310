"""Issue 13 item 7: `pool.dataset.create` / `pool.dataset.update` with TrueNAS's arguments, rules, messages and
attribute paths, on real zfs-fuse pools over the real server (what zfs-fuse cannot do is refused by name)."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer

GiB = 1024 ** 3
REDACTED = "********"


def attributes(error: ValidationErrors) -> dict[str, str]:
    return {e.attribute: e.errmsg for e in error.errors}


async def refused(client: Client, method: str, *params: Any) -> dict[str, str]:
    with pytest.raises(ValidationErrors) as raised:
        await client.call(method, *params)
    return attributes(raised.value)


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


# --- create -----------------------------------------------------------------------------------------------


async def test_create_sets_truenas_properties_and_returns_the_query_entry(client: Client, pool: FilePool,
                                                                          local_zfs: Zfs):
    name = f"{pool.name}/data"
    entry = await client.call("pool.dataset.create", {
        "name": name, "type": "FILESYSTEM", "comments": "for backups", "compression": "GZIP-9", "atime": "OFF",
        "exec": "OFF", "quota": 2 * GiB, "refquota": GiB, "reservation": 1024 * 1024, "recordsize": "64K",
        "copies": 2, "snapdir": "VISIBLE", "deduplication": "ON", "checksum": "FLETCHER4",
        "casesensitivity": "SENSITIVE", "sync": "INHERIT", "readonly": "INHERIT",
        "user_properties": [{"key": "org.example:tag", "value": "blue"}],
    })

    assert entry == await client.call("pool.dataset.query", [["id", "=", name]], {"get": True})
    assert (entry["id"], entry["type"], entry["pool"]) == (name, "FILESYSTEM", pool.name)
    props = await local_zfs.get_properties(name, [
        "org.freenas:description", "compression", "atime", "exec", "quota", "refquota", "reservation",
        "recordsize", "copies", "snapdir", "dedup", "checksum", "casesensitivity", "org.example:tag", "mounted"])
    assert props == {
        "org.freenas:description": "for backups", "compression": "gzip-9", "atime": "off", "exec": "off",
        "quota": str(2 * GiB), "refquota": str(GiB), "reservation": str(1024 * 1024), "recordsize": "65536",
        "copies": "2", "snapdir": "visible", "dedup": "on", "checksum": "fletcher4",
        "casesensitivity": "sensitive", "org.example:tag": "blue", "mounted": "yes"}


async def test_a_missing_parent_is_refused_unless_create_ancestors(client: Client, pool: FilePool, local_zfs: Zfs):
    name = f"{pool.name}/a/b/c"
    assert await refused(client, "pool.dataset.create", {"name": name}) == {
        "pool_dataset_create.name": f"Parent dataset ({pool.name}/a/b) does not exist."}
    assert not await local_zfs.exists(f"{pool.name}/a")

    await client.call("pool.dataset.create", {"name": name, "create_ancestors": True, "comments": "leaf"})

    assert [d.name for d in await local_zfs.list_datasets(f"{pool.name}/a")] == [
        f"{pool.name}/a", f"{pool.name}/a/b", name]
    # The properties are the new dataset's own, not its ancestors'.
    assert (await local_zfs.get_properties(f"{pool.name}/a", ["org.freenas:description"])) == {
        "org.freenas:description": None}


@pytest.mark.parametrize(("name", "create_ancestors", "message"), [
    ("mwpt-no-such-pool/data", False, "zpool (mwpt-no-such-pool) does not exist."),
    ("mwpt-no-such-pool/a/data", True, "Please specify a pool which exists for the dataset/volume to be created"),
    ("{pool}", False, "You need a full name, e.g. pool/newdataset"),
    ("{pool}/bad$name", False, 'Invalid dataset name: Character "$" is not allowed in a dataset name'),
    ("{pool}/a/../b", False, "Invalid dataset name: The dataset name has a '..' component"),
    ("{pool}/trailing ", False, "Trailing spaces are not permitted in dataset names"),
])
async def test_names_and_parents_are_checked_as_truenas_does(client: Client, pool: FilePool, name: str,
                                                             create_ancestors: bool, message: str):
    name = name.format(pool=pool.name)
    assert await refused(client, "pool.dataset.create", {"name": name, "create_ancestors": create_ancestors}) == {
        "pool_dataset_create.name": message}


async def test_an_existing_dataset_is_refused(client: Client, pool: FilePool, local_zfs: Zfs):
    await local_zfs.create_dataset(f"{pool.name}/data")
    assert await refused(client, "pool.dataset.create", {"name": f"{pool.name}/data"}) == {
        "pool_dataset_create.name": f"Dataset {pool.name}/data already exists"}


async def test_a_readonly_parent_is_refused(client: Client, pool: FilePool, local_zfs: Zfs):
    # Unmounted: zfs-fuse reports a mounted file system's `readonly` as the mount's ("off", temporary).
    await local_zfs.create_dataset(f"{pool.name}/ro", properties={"readonly": "on", "mountpoint": "none"})
    assert await refused(client, "pool.dataset.create", {"name": f"{pool.name}/ro/child"}) == {
        "pool_dataset_create.readonly": f"Turn off readonly mode on {pool.name}/ro to create child"}


async def test_what_zfs_fuse_cannot_do_is_refused_by_field(client: Client, pool: FilePool, local_zfs: Zfs):
    name = f"{pool.name}/data"
    assert await refused(client, "pool.dataset.create", {"name": name, "type": "VOLUME", "volsize": 16 * 1024}) == {
        "pool_dataset_create.type": "ZFS on host local does not support volumes (zvols)"}
    assert await refused(client, "pool.dataset.create", {"name": name, "sync": "ALWAYS"}) == {
        "pool_dataset_create.sync": "ZFS on host local does not support the 'sync' property"}
    assert await refused(client, "pool.dataset.create", {
        "name": name, "encryption": True, "inherit_encryption": False,
        "encryption_options": {"passphrase": "correct horse"}}) == {
        "pool_dataset_create.encryption": "ZFS on host local does not support native encryption"}
    # A value zfs-fuse's zfs refuses (no lz4 there) is reported on its field, in zfs's words.
    errors = await refused(client, "pool.dataset.create", {"name": name, "compression": "LZ4"})
    assert list(errors) == ["pool_dataset_create.compression"]
    assert "'compression' must be one of" in errors["pool_dataset_create.compression"]
    assert not await local_zfs.exists(name)


async def test_fields_of_the_other_kind_and_bad_values_are_refused(client: Client, pool: FilePool):
    assert await refused(client, "pool.dataset.create", {
        "name": f"{pool.name}/data", "volsize": 1024, "recordsize": "3K", "share_type": "SMB",
        "user_properties": [{"key": "Org.Example:Tag", "value": "x"}]}) == {
        "pool_dataset_create.volsize": "This field is not valid for FILESYSTEM",
        "pool_dataset_create.recordsize": "'3K' is an invalid recordsize.",
        "pool_dataset_create.share_type": "Only GENERIC: this server sets no ACLs and manages no shares",
        "pool_dataset_create.user_properties.0.key": "'Org.Example:Tag' is not a valid property name",
    }
    # Argument-model errors are TrueNAS's too: the argument is `data`.
    errors = await refused(client, "pool.dataset.create", {"name": f"{pool.name}/data", "quota": 1024})
    assert errors and all(attribute.startswith("data.quota") for attribute in errors)
    assert "Input should be greater than or equal to 1073741824" in errors.values()


async def test_encryption_secrets_are_redacted_in_job_records(client: Client, pool: FilePool):
    secret = "correct horse battery staple"
    data = {"name": f"{pool.name}/secret", "encryption": True, "inherit_encryption": False,
            "encryption_options": {"passphrase": secret}}
    [outcome] = await client.call("core.bulk", "pool.dataset.create", [[data]], job=True)
    assert outcome["error"] is not None  # zfs-fuse has no encryption

    [job] = await client.call("core.get_jobs", [["method", "=", "core.bulk"]])
    options = job["arguments"][1][0][0]["encryption_options"]
    assert options == {"passphrase": REDACTED}
    assert secret not in str(job)


# --- update -----------------------------------------------------------------------------------------------


async def test_update_sets_and_inherit_means_zfs_inherit(client: Client, pool: FilePool, local_zfs: Zfs):
    parent, name = f"{pool.name}/parent", f"{pool.name}/parent/data"
    await local_zfs.create_dataset(parent, properties={"compression": "gzip"})
    await local_zfs.create_dataset(name)

    entry = await client.call("pool.dataset.update", name, {
        "compression": "OFF", "comments": "first", "atime": "OFF", "quota": 2 * GiB, "exec": "OFF"})

    assert entry == await client.call("pool.dataset.query", [["id", "=", name]], {"get": True})
    assert await local_zfs.get_properties(name, ["compression", "org.freenas:description", "atime", "quota",
                                                 "exec"]) == {
        "compression": "off", "org.freenas:description": "first", "atime": "off", "quota": str(2 * GiB),
        "exec": "off"}

    await client.call("pool.dataset.update", name, {
        "compression": "INHERIT", "comments": "INHERIT", "exec": "INHERIT", "quota": None})

    assert await local_zfs.get_properties(name, ["compression", "org.freenas:description", "exec", "quota"]) == {
        "compression": "gzip", "org.freenas:description": None, "exec": "on", "quota": "0"}


async def test_user_properties_update_sets_and_removes(client: Client, pool: FilePool, local_zfs: Zfs):
    name = f"{pool.name}/data"
    await local_zfs.create_dataset(name, properties={"org.example:a": "1", "org.example:b": "2",
                                                     "org.freenas:description": "kept"})

    await client.call("pool.dataset.update", name, {"user_properties_update": [
        {"key": "org.example:a", "remove": True}, {"key": "org.example:c", "value": "3"}]})
    assert await local_zfs.user_properties(name) == {
        "org.example:b": "2", "org.example:c": "3", "org.freenas:description": "kept"}

    # `user_properties` replaces the set; the comment (an API field of its own) stays.
    await client.call("pool.dataset.update", name, {"user_properties": [{"key": "org.example:d", "value": "4"}]})
    assert await local_zfs.user_properties(name) == {"org.example:d": "4", "org.freenas:description": "kept"}


async def test_update_validation_is_truenas_s(client: Client, pool: FilePool, local_zfs: Zfs):
    name = f"{pool.name}/data"
    await local_zfs.create_dataset(name)
    assert await refused(client, "pool.dataset.update", name, {"user_properties_update": [
        {"key": "org.example:a", "value": "1", "remove": True}, {"key": "org.example:b"}]}) == {
        "pool_dataset_update.user_properties_update.0.remove": 'When "value" is specified, this cannot be set',
        "pool_dataset_update.user_properties_update.1.value": 'Either "value" or "remove" must be specified',
    }
    assert await refused(client, "pool.dataset.update", name, {
        "user_properties": [{"key": "org.example:a", "value": "1"}],
        "user_properties_update": [{"key": "org.example:b", "value": "2"}]}) == {
        "pool_dataset_update.user_properties_update":
            'Should not be specified when "user_properties" are explicitly specified'}
    assert await refused(client, "pool.dataset.update", name, {"volsize": 1024, "sync": "STANDARD"}) == {
        "pool_dataset_update.volsize": "This field is not valid for FILESYSTEM",
        "pool_dataset_update.sync": "ZFS on host local does not support the 'sync' property"}
    # Not updatable (TrueNAS excludes them from the update model).
    assert set(await refused(client, "pool.dataset.update", name, {"name": "x", "casesensitivity": "SENSITIVE"})) == {
        "data.name", "data.casesensitivity"}


async def test_updating_a_missing_dataset_is_enoent(client: Client, pool: FilePool):
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.dataset.update", f"{pool.name}/missing", {"comments": "x"})
    [error] = raised.value.errors
    assert (error.attribute, error.errmsg, error.errno) == ("id", f"{pool.name}/missing does not exist",
                                                            errno.ENOENT)


async def test_update_sends_a_changed_event_with_the_entry(client: Client, pool: FilePool, local_zfs: Zfs):
    name = f"{pool.name}/data"
    await local_zfs.create_dataset(name)
    events: list[dict[str, Any]] = []
    await client.subscribe("pool.dataset.query", events.append)

    entry = await client.call("pool.dataset.update", name, {"readonly": "ON"})
    await client.ping()

    assert [(e["msg"], e["id"], e.get("fields")) for e in events] == [("changed", name, entry)]


async def test_create_and_update_need_dataset_write(server: TestServer, pool: FilePool, local_zfs: Zfs):
    await server.add_user("reader", "pw-reader", ["DATASET_READ"])
    await server.add_user("writer", "pw-writer", ["DATASET_WRITE"])
    reader, writer = await server.client("reader", "pw-reader"), await server.client("writer", "pw-writer")

    for call in (("pool.dataset.create", {"name": f"{pool.name}/r"}),
                 ("pool.dataset.update", pool.name, {"comments": "r"})):
        with pytest.raises(CallError) as denied:
            await reader.call(*call)
        assert denied.value.errno == errno.EACCES
    assert not await local_zfs.exists(f"{pool.name}/r")

    await writer.call("pool.dataset.create", {"name": f"{pool.name}/w"})
    await writer.call("pool.dataset.update", f"{pool.name}/w", {"comments": "w"})
    assert await local_zfs.get_properties(f"{pool.name}/w", ["org.freenas:description"]) == {
        "org.freenas:description": "w"}
