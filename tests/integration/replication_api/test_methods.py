"""The replication wizard's helper methods against real zfs-fuse pools (LOCAL) and a real sshd (SSH),
and `replication.config`."""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_api.conftest import SCHEMA, Env, create_ssh_credentials


async def test_list_datasets_local_lists_pools_but_not_system_datasets(pool_env: Env, pool: FilePool) -> None:
    child = await pool_env.dataset("data/child")
    system = await pool_env.dataset(".system/cores")
    names = await pool_env.client.call("replication.list_datasets", "LOCAL")
    assert {pool.name, f"{pool.name}/data", child} <= set(names)
    assert system not in names
    assert pool_env.ds(".system") not in names


async def test_list_datasets_over_ssh(
    pool_env: Env, pool: FilePool, sshd: SshdServer, ssh_client_key: dict[str, str],
) -> None:
    await pool_env.dataset("remote")
    _, credentials = await create_ssh_credentials(
        pool_env.client, port=sshd.port, private_key=ssh_client_key["private_key"],
        remote_host_key=sshd.remote_host_key)
    names = await pool_env.client.call("replication.list_datasets", "SSH", credentials)
    assert pool.name in names
    assert f"{pool.name}/remote" in names


async def test_list_datasets_over_ssh_reports_connection_problems_as_eacces(env: Env) -> None:
    await env.ssh()  # credentials of a port nothing listens on
    with pytest.raises(ClientException) as raised:
        await env.client.call("replication.list_datasets", "SSH", env.ids["$ssh"])
    assert raised.value.errno == errno.EACCES


async def test_create_dataset_local(pool_env: Env, local_zfs: Zfs) -> None:
    name = pool_env.ds("made/by/wizard")
    assert await pool_env.client.call("replication.create_dataset", name, "LOCAL", None) is None
    assert await local_zfs.exists(name)


async def test_list_naming_schemas_unites_snapshot_and_replication_tasks(pool_env: Env) -> None:
    await pool_env.snapshot_task("@src", naming_schema="auto-%Y-%m-%d_%H-%M")
    await pool_env.client.call("replication.create", await pool_env.task(
        name="push", also_include_naming_schema=["extra-%Y-%m-%d-%H-%M", SCHEMA]))
    await pool_env.client.call("replication.create", await pool_env.task(
        name="pull", direction="PULL", naming_schema=["pulled-%Y-%m-%d-%H-%M", SCHEMA],
        also_include_naming_schema=[]))
    assert await pool_env.client.call("replication.list_naming_schemas") == [
        "auto-%Y-%m-%d_%H-%M", "extra-%Y-%m-%d-%H-%M", "pulled-%Y-%m-%d-%H-%M", SCHEMA]


async def test_count_eligible_manual_snapshots(pool_env: Env, local_zfs: Zfs) -> None:
    src = await pool_env.dataset("src")
    await local_zfs.create_snapshots(src, "snap-2022-01-01-00-00")
    await local_zfs.create_snapshots(src, "manual-backup")
    await local_zfs.create_snapshots(await pool_env.dataset("src/child"), "snap-2022-01-02-00-00")
    query = {"datasets": [src], "transport": "LOCAL"}
    count = "replication.count_eligible_manual_snapshots"
    assert await pool_env.client.call(count, {**query, "naming_schema": [SCHEMA]}) == {"total": 2, "eligible": 1}
    assert await pool_env.client.call(count, {**query, "name_regex": "manual-.*"}) == {"total": 2, "eligible": 1}
    assert await pool_env.client.call(count, {**query, "name_regex": "manual"}) == {"total": 2, "eligible": 0}


@pytest.mark.parametrize(("options", "message"), [
    ({"naming_schema": [SCHEMA], "name_regex": ".*"}, "`naming_schema` and `name_regex` cannot be used simultaneously"),
    ({}, "Either `naming_schema` or `name_regex` must be specified"),
    ({"name_regex": "("}, "Invalid `name_regex`: missing ), unterminated subpattern at position 0"),
])
async def test_count_eligible_manual_snapshots_errors(env: Env, options: dict, message: str) -> None:
    with pytest.raises(ClientException) as raised:
        await env.client.call("replication.count_eligible_manual_snapshots",
                              {"datasets": ["tank/src"], "transport": "LOCAL", **options})
    assert (raised.value.errno, str(raised.value)) == (errno.EINVAL, f"[EINVAL] {message}")


async def test_count_eligible_manual_snapshots_needs_a_dataset(env: Env) -> None:
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.count_eligible_manual_snapshots",
                              {"datasets": [], "naming_schema": [SCHEMA], "transport": "LOCAL"})
    assert raised.value.triples() == [["count_eligible_manual_snapshots.datasets",
                                       "List should have at least 1 item after validation, not 0", 22]]


async def test_target_unmatched_snapshots(pool_env: Env, local_zfs: Zfs) -> None:
    src, dst = await pool_env.dataset("src"), await pool_env.dataset("dst")
    for dataset in (src, dst):
        await local_zfs.create_snapshots(dataset, "snap-2021-01-01-00-00")
    await local_zfs.create_snapshots(dst, "snap-2022-01-01-00-00")
    unmatched = "replication.target_unmatched_snapshots"
    assert await pool_env.client.call(unmatched, "PUSH", [src], dst, "LOCAL", None) == {
        dst: ["snap-2022-01-01-00-00"]}
    # PULL reads the same sides the other way round; LOCAL makes both this host.
    assert await pool_env.client.call(unmatched, "PULL", [src], dst, "LOCAL", None) == {
        dst: ["snap-2022-01-01-00-00"]}
    assert await pool_env.client.call(unmatched, "PUSH", [src], pool_env.ds("absent"), "LOCAL", None) == {}


async def test_target_unmatched_snapshots_of_several_sources(pool_env: Env, local_zfs: Zfs) -> None:
    a, b = await pool_env.dataset("src/a"), await pool_env.dataset("src/b")
    await local_zfs.create_snapshots(a, "snap-2021-01-01-00-00")
    target_a = await pool_env.dataset("dst/a")
    await local_zfs.create_snapshots(target_a, "stray")
    result = await pool_env.client.call("replication.target_unmatched_snapshots", "PUSH", [a, b],
                                        pool_env.ds("dst"), "LOCAL", None)
    assert result == {target_a: ["stray"]}


async def test_new_snapshot_name(env: Env) -> None:
    assert (await env.client.call("replication.new_snapshot_name", "auto-%Y")).startswith("auto-20")


async def test_config_round_trip(server: TestServer) -> None:
    client = await server.client()
    assert await client.call("replication.config.config") == {"id": 1, "max_parallel_replication_tasks": 5}
    assert await client.call("replication.config.update", {"max_parallel_replication_tasks": 3}) == {
        "id": 1, "max_parallel_replication_tasks": 3}
    assert (await client.call("replication.config.config"))["max_parallel_replication_tasks"] == 3
    with pytest.raises(ValidationErrors) as raised:
        await client.call("replication.config.update", {"max_parallel_replication_tasks": 0})
    assert raised.value.triples() == [["replication_config_update.max_parallel_replication_tasks",
                                       "Input should be greater than or equal to 1", 22]]
    assert (await client.call("replication.config.update", {"max_parallel_replication_tasks": None}))[
        "max_parallel_replication_tasks"] is None
