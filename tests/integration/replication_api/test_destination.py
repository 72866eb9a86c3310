"""Issue 12 §1: what a task names is checked when it is saved, not when it runs.

Dataset names follow ZFS's grammar (`zfs/names.py`); a destination may not be, lie inside or contain its own
source on the same host; a destination on this server must be on an existing pool of a ZFS that can do what
the task asks (encryption); what only the remote host can tell is a conflict of `replication.plan`. Naming
schemas name their bad characters readably, and an unreachable host fails `replication.run` and
`replication.list_datasets` with the same errno.
"""
from __future__ import annotations

import errno
from typing import Any

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_api.conftest import SCHEMA, SOME_HOST_KEY, Env, create_ssh_credentials


async def refused(env: Env, method: str, *args: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call(method, *args)
    return [(e.attribute, e.errmsg) for e in raised.value.errors]


@pytest.mark.parametrize(("name", "message"), [
    ("", "Value error, Dataset name is empty"),
    ("-o", "Value error, A dataset name cannot begin with '-'"),
    ("-oreadonly=on", "Value error, A dataset name cannot begin with '-'"),
    ("{pool}/a;reboot", 'Value error, Character ";" is not allowed in a dataset name'),
    ("{pool}/$(id)`x`", 'Value error, Characters "$", "(", ")", "`" are not allowed in a dataset name'),
    ("{pool}//a", "Value error, The dataset name has an empty component"),
    ("{pool}/a@snap", "Value error, A dataset name cannot contain '@' (that names a snapshot)"),
])
async def test_dataset_names_follow_the_zfs_grammar_on_create_and_update(env: Env, name: str, message: str) -> None:
    name = name.format(pool=env.pool_name)
    assert ("replication_create.target_dataset", message) in await refused(
        env, "replication.create", await env.task(target_dataset=name))
    assert ("replication_create.source_datasets.1", message) in await refused(
        env, "replication.create", await env.task(source_datasets=["@src", name]))
    task = await env.client.call("replication.create", await env.task())
    assert await refused(env, "replication.update", task["id"], {"source_datasets": [name]}) == [
        ("replication_update.source_datasets.0", message)]
    assert [t["source_datasets"] for t in await env.client.call("replication.query")] == [[env.ds("src")]]


@pytest.mark.parametrize(("source", "target", "problem"), [
    ("@a", "@a", "is the source dataset '{pool}/a'"),
    ("@a", "@a/copy", "is inside the source dataset '{pool}/a'"),
    ("@a/b", "@a", "contains the source dataset '{pool}/a/b'"),
])
async def test_a_local_destination_cannot_overlap_its_source(env: Env, source: str, target: str,
                                                             problem: str) -> None:
    data = await env.task(source_datasets=[source], target_dataset=target)
    expected = (f"The destination {data['target_dataset']!r} {problem.format(pool=env.pool_name)} on the same "
                "system: replicating would overwrite the data being replicated")
    assert await refused(env, "replication.create", data) == [("replication_create.target_dataset", expected)]
    assert await env.client.call("replication.query") == []


async def test_siblings_sharing_a_prefix_do_not_overlap(env: Env) -> None:
    await env.client.call("replication.create", await env.task(source_datasets=["@a"], target_dataset="@ab"))


async def test_an_ssh_destination_on_this_very_host_cannot_overlap_its_source(env: Env) -> None:
    """SSH credentials whose host is a loopback address reach this machine: the same datasets."""
    for i, host in enumerate(("127.0.0.1", "::1", "localhost")):
        _, credentials = await create_ssh_credentials(env.client, f"loop{i}", host=host)
        data = await env.task(name=f"t{i}", transport="SSH", ssh_credentials=credentials,
                              source_datasets=["@a"], target_dataset="@a/copy")
        assert [a for a, _ in await refused(env, "replication.create", data)] == ["replication_create.target_dataset"]
    # Another host (TEST-NET-1, never routed; the create-time look at the remote target gives up after 1 s).
    key = await env.client.call("keychaincredential.query", [["name", "=", "loop0-key"]], {"get": True})
    elsewhere = await env.client.call("keychaincredential.create", {
        "name": "other", "type": "SSH_CREDENTIALS", "attributes": {
            "host": "192.0.2.1", "private_key": key["id"], "remote_host_key": SOME_HOST_KEY, "connect_timeout": 1}})
    await env.client.call("replication.create", await env.task(
        name="elsewhere", transport="SSH", ssh_credentials=elsewhere["id"], source_datasets=["@a"],
        target_dataset="@a/copy"))


async def test_a_local_destination_must_be_on_an_existing_pool(env: Env) -> None:
    assert await refused(env, "replication.create", await env.task(target_dataset="nosuchpool/x")) == [
        ("replication_create.target_dataset", "Pool 'nosuchpool' does not exist on this system")]
    # A PULL lands here too.
    _, credentials = await create_ssh_credentials(env.client)
    pull = await env.task(direction="PULL", transport="SSH", ssh_credentials=credentials,
                          naming_schema=[SCHEMA], also_include_naming_schema=[], target_dataset="nosuchpool")
    assert await refused(env, "replication.create", pull) == [
        ("replication_create.target_dataset", "Pool 'nosuchpool' does not exist on this system")]
    # Missing datasets below an existing pool are still created by the run.
    await env.client.call("replication.create", await env.task(target_dataset="@not/yet/there"))


async def test_local_encryption_is_refused_where_zfs_has_none(env: Env) -> None:
    data = await env.task(encryption=True, encryption_key="ab" * 32, encryption_key_format="HEX",
                          encryption_key_location="$TrueNAS")
    assert await refused(env, "replication.create", data) == [
        ("replication_create.encryption", "ZFS on this system does not support native encryption")]


async def test_naming_schema_errors_list_each_bad_character_once_in_order(env: Env) -> None:
    data = await env.task(also_include_naming_schema=["$(////)-%Y-%m-%d-%H-%M"])
    assert await refused(env, "replication.create", data) == [(
        "replication_create.also_include_naming_schema.0",
        'Value error, Characters "$", "(", "/", ")" are not allowed in ZFS snapshot name')]


async def remote_push(env: Env, sshd: SshdServer, ssh_client_key: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A PUSH over SSH to the test sshd (this machine, zfs-fuse) of a source with one selected snapshot."""
    source = await env.dataset("src")
    assert env.zfs is not None
    await env.zfs.create_snapshots(source, "snap-2024-01-01-00-00")
    _, credentials = await create_ssh_credentials(
        env.client, port=sshd.port, private_key=ssh_client_key["private_key"], remote_host_key=sshd.remote_host_key)
    return await env.task(transport="SSH", ssh_credentials=credentials, **fields)


async def test_plan_reports_a_missing_remote_pool_as_a_conflict(
        env: Env, sshd: SshdServer, ssh_client_key: dict[str, str]) -> None:
    plan = await env.client.call("replication.plan", await remote_push(
        env, sshd, ssh_client_key, target_dataset="nosuchpool/backup/copy"))
    assert not plan["ok"]
    assert [(c["code"], c["message"]) for c in plan["conflicts"]] == [(
        "POOL_MISSING",
        "Target 'nosuchpool/backup/copy' cannot be created: pool 'nosuchpool' does not exist on the target host")]


async def test_plan_reports_encryption_on_a_remote_without_it_as_a_conflict(
        env: Env, sshd: SshdServer, ssh_client_key: dict[str, str]) -> None:
    plan = await env.client.call("replication.plan", await remote_push(
        env, sshd, ssh_client_key, target_dataset="@copy", encryption=True, encryption_key="ab" * 32,
        encryption_key_format="HEX", encryption_key_location="$TrueNAS"))
    assert not plan["ok"]
    assert [(c["code"], c["message"]) for c in plan["conflicts"]] == [(
        "ENCRYPTION", f"Target {env.ds('copy')!r}: ZFS on the target host does not support native encryption")]


async def test_an_unreachable_host_gives_one_errno_to_run_and_list_datasets(env: Env, pool: FilePool,
                                                                           local_zfs: Zfs) -> None:
    await env.ssh()  # credentials of a loopback port nothing listens on
    await env.dataset("src")
    task = await env.client.call("replication.create", await env.task(transport="SSH", ssh_credentials="$ssh"))
    with pytest.raises(ClientException) as listing:
        await env.client.call("replication.list_datasets", "SSH", env.ids["$ssh"])
    with pytest.raises(ClientException) as running:
        await env.client.call("replication.run", task["id"], job=True)
    assert (running.value.errno, listing.value.errno) == (errno.EACCES, errno.EACCES)
    assert "refused" in str(running.value)
