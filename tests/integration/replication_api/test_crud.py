"""`replication.*` CRUD through the public API: defaults, valid variants, restore, update merge, events,
secrets, roles, and the bindings to SSH credentials and periodic snapshot tasks."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer
from tests.integration.replication_api.conftest import SCHEMA, Env

DEFAULTS = {
    "ssh_credentials": None, "netcat_active_side": None, "netcat_active_side_listen_address": None,
    "netcat_active_side_port_min": None, "netcat_active_side_port_max": None,
    "netcat_passive_side_connect_address": None, "sudo": False, "exclude": [], "properties": True,
    "properties_exclude": [], "properties_override": {}, "replicate": False, "encryption": False,
    "encryption_inherit": None, "encryption_key": None, "encryption_key_format": None,
    "encryption_key_location": None, "periodic_snapshot_tasks": [], "naming_schema": [], "name_regex": None,
    "schedule": None, "restrict_schedule": None, "only_matching_schedule": False, "allow_from_scratch": False,
    "readonly": "SET", "hold_pending_snapshots": False, "lifetime_value": None, "lifetime_unit": None,
    "lifetimes": [], "compression": None, "speed_limit": None, "large_block": True, "embed": False,
    "compressed": True, "retries": 5, "logging_level": None, "enabled": True,
    "state": {"state": "PENDING"}, "job": None, "has_encrypted_dataset_keys": False, "schedule_description": None,
}


async def test_create_fills_every_default_and_computed_field(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task())
    assert {k: task[k] for k in DEFAULTS} == DEFAULTS
    assert task["also_include_naming_schema"] == [SCHEMA]
    assert await env.client.call("replication.get_instance", task["id"]) == task


async def test_schedule_defaults_and_description(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task(auto=True, schedule={"hour": "3"}))
    assert task["schedule"] == {"minute": "00", "hour": "3", "dom": "*", "month": "*", "dow": "*",
                                "begin": "00:00", "end": "23:59"}
    assert task["schedule_description"] == "At 03:00"


# Valid variants (reference §4), each restorable ----------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "auto-task-schedule": {"auto": True, "periodic_snapshot_tasks": ["$task0"], "schedule": {"minute": "0"}},
    "auto-task": {"auto": True, "periodic_snapshot_tasks": ["$task0"]},
    "auto-schedule": {"auto": True, "schedule": {"minute": "*/5"}},
    "pull-naming-schema": {"direction": "PULL", "naming_schema": [SCHEMA], "also_include_naming_schema": []},
    "ssh-netcat-ports": {"transport": "SSH+NETCAT", "ssh_credentials": "$ssh", "netcat_active_side": "REMOTE",
                         "netcat_active_side_port_min": 1024, "netcat_active_side_port_max": 50000},
    "custom-lifetimes": {"retention_policy": "CUSTOM", "lifetime_value": 1, "lifetime_unit": "WEEK", "lifetimes": [
        {"schedule": {"minute": "0", "hour": "0"}, "lifetime_value": 1, "lifetime_unit": "YEAR"}]},
    "push-name-regex": {"also_include_naming_schema": [], "name_regex": "snap-.*"},
    "pull-name-regex": {"direction": "PULL", "also_include_naming_schema": [], "name_regex": "snap-.*"},
    "non-recursive-task": {"periodic_snapshot_tasks": ["$task0"], "also_include_naming_schema": []},
}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_valid_variant_is_created_and_restored(variant: str, pool_env: Env) -> None:
    changes = VARIANTS[variant]
    if "$task0" in json.dumps(changes):
        await pool_env.snapshot_task("@src", recursive=False)
    if "$ssh" in json.dumps(changes):
        await pool_env.ssh()
    task = await pool_env.client.call("replication.create", await pool_env.task(**changes))
    restored = await pool_env.client.call("replication.restore", task["id"],
                                          {"name": "restore", "target_dataset": pool_env.ds("back")})
    assert restored["id"] != task["id"]
    assert restored["direction"] == ("PULL" if task["direction"] == "PUSH" else "PUSH")
    assert (restored["enabled"], restored["auto"], restored["retention_policy"]) == (False, False, "NONE")
    assert restored["source_datasets"] == [task["target_dataset"]]
    assert restored["transport"] == task["transport"]


async def test_restore_maps_sources_and_naming_schemas(pool_env: Env) -> None:
    await pool_env.snapshot_task("@src/a", recursive=False)
    task = await pool_env.client.call("replication.create", await pool_env.task(
        source_datasets=["@src/a", "@src/b"], periodic_snapshot_tasks=["$task0"],
        also_include_naming_schema=["manual-%Y-%m-%d-%H-%M"]))
    restored = await pool_env.client.call("replication.restore", task["id"],
                                          {"name": "back", "target_dataset": pool_env.ds("src")})
    assert restored["source_datasets"] == [pool_env.ds("dst/a"), pool_env.ds("dst/b")]
    assert restored["naming_schema"] == ["manual-%Y-%m-%d-%H-%M", SCHEMA]
    assert restored["also_include_naming_schema"] == []
    again = await pool_env.client.call("replication.restore", restored["id"],
                                       {"name": "forth", "target_dataset": pool_env.ds("x")})
    assert again["also_include_naming_schema"] == restored["naming_schema"]


async def test_restore_reports_errors_as_create(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task(name="one"))
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.restore", task["id"], {"name": "one", "target_dataset": env.ds("x")})
    assert raised.value.triples() == [["replication_create.name", "Object with this name already exists", 22]]


# Update --------------------------------------------------------------------------------------------------

async def test_update_of_an_ssh_task_keeps_its_credentials(env: Env) -> None:
    await env.ssh()
    task = await env.client.call("replication.create", await env.task(transport="SSH", ssh_credentials="$ssh"))
    assert task["ssh_credentials"]["id"] == env.ids["$ssh"]
    assert task["ssh_credentials"]["type"] == "SSH_CREDENTIALS"
    updated = await env.client.call("replication.update", task["id"], {"retries": 3})
    assert updated["retries"] == 3
    assert updated["ssh_credentials"]["id"] == env.ids["$ssh"]


async def test_push_and_pull_share_the_naming_schema_column(env: Env) -> None:
    push = await env.client.call("replication.create", await env.task())
    assert (push["naming_schema"], push["also_include_naming_schema"]) == ([], [SCHEMA])
    pull = await env.client.call("replication.update", push["id"], {
        "direction": "PULL", "naming_schema": ["pull-%Y-%m-%d-%H-%M"], "also_include_naming_schema": []})
    assert (pull["naming_schema"], pull["also_include_naming_schema"]) == (["pull-%Y-%m-%d-%H-%M"], [])


async def test_delete_removes_the_task(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task())
    assert await env.client.call("replication.delete", task["id"]) is True
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.get_instance", task["id"])
    assert raised.value.triples() == [[None, f"Replication {task['id']} does not exist", 2]]


async def test_crud_emits_query_events(env: Env) -> None:
    events: list[dict[str, Any]] = []
    await env.client.subscribe("replication.query", events.append)
    task = await env.client.call("replication.create", await env.task())
    await env.client.call("replication.update", task["id"], {"retries": 2})
    await env.client.call("replication.delete", task["id"])
    for _ in range(100):
        if len(events) >= 3:
            break
        await asyncio.sleep(0.02)
    assert [(e["msg"], e["id"]) for e in events] == [("added", task["id"]), ("changed", task["id"]),
                                                      ("removed", task["id"])]
    assert events[1]["fields"]["retries"] == 2


# Secrets and roles ---------------------------------------------------------------------------------------

async def test_encryption_key_is_encrypted_at_rest_and_redacted_for_readers(env: Env, server: TestServer) -> None:
    secret = "ab" * 32
    # A push to another host: zfs-fuse here has no encryption, so a LOCAL task could not ask for it.
    await env.ssh()
    task = await env.client.call("replication.create", await env.task(
        transport="SSH", ssh_credentials="$ssh", encryption=True, encryption_key=secret,
        encryption_key_format="HEX", encryption_key_location="$TrueNAS"))
    assert task["encryption_key"] == secret
    stored = dict(await server.app.store.all("replication"))[task["id"]]
    assert secret not in json.dumps(stored)

    await server.add_user("reader", "reader-pw", ["REPLICATION_TASK_READ"])
    reader = await server.client("reader", "reader-pw")
    seen = await reader.call("replication.get_instance", task["id"])
    assert seen["encryption_key"] == "********"
    assert seen["encryption_key_format"] == "HEX"
    await server.add_user("writer", "writer-pw", ["REPLICATION_TASK_WRITE"])
    writer = await server.client("writer", "writer-pw")
    assert (await writer.call("replication.get_instance", task["id"]))["encryption_key"] == secret


async def test_pull_needs_the_pull_role(env: Env, server: TestServer) -> None:
    await server.add_user("pusher", "pusher-pw", ["REPLICATION_TASK_WRITE"])
    await server.add_user("puller", "puller-pw", ["REPLICATION_TASK_WRITE_PULL"])
    pusher = await server.client("pusher", "pusher-pw")
    puller = await server.client("puller", "puller-pw")
    pull = await env.task(name="pull", direction="PULL", naming_schema=[SCHEMA], also_include_naming_schema=[])
    denied = ["You don't have permissions to use PULL replication", 22]

    with pytest.raises(ValidationErrors) as raised:
        await pusher.call("replication.create", pull)
    assert raised.value.triples() == [["replication_create.direction", *denied]]

    push = await pusher.call("replication.create", await env.task(name="push"))
    with pytest.raises(ValidationErrors) as raised:
        await pusher.call("replication.update", push["id"], {
            "direction": "PULL", "naming_schema": [SCHEMA], "also_include_naming_schema": []})
    assert raised.value.triples() == [["replication_update.direction", *denied]]
    with pytest.raises(ValidationErrors) as raised:
        await pusher.call("replication.restore", push["id"], {"name": "restore", "target_dataset": env.ds("back")})
    assert raised.value.triples() == [["replication_create.direction", *denied]]

    assert (await puller.call("replication.create", pull))["direction"] == "PULL"
    assert (await puller.call("replication.update", push["id"], {
        "direction": "PULL", "naming_schema": [SCHEMA], "also_include_naming_schema": []}))["direction"] == "PULL"
    restored = await puller.call("replication.restore", push["id"],
                                 {"name": "restore", "target_dataset": env.ds("back")})
    assert restored["direction"] == "PUSH"


async def test_readers_see_no_credential_attributes(env: Env, server: TestServer) -> None:
    await env.ssh()
    task = await env.client.call("replication.create", await env.task(transport="SSH", ssh_credentials="$ssh"))
    assert task["ssh_credentials"]["attributes"]["port"] > 0
    await server.add_user("reader", "reader-pw", ["REPLICATION_TASK_READ"])
    reader = await server.client("reader", "reader-pw")
    seen = await reader.call("replication.get_instance", task["id"])
    assert seen["ssh_credentials"] == {**task["ssh_credentials"], "attributes": "********"}
    with pytest.raises(ClientException) as raised:
        await reader.call("replication.create", await env.task(name="other"))
    assert raised.value.errno == 13


# Bindings --------------------------------------------------------------------------------------------------

async def test_deleting_ssh_credentials_with_cascade_disables_the_task(env: Env) -> None:
    await env.ssh()
    task = await env.client.call("replication.create", await env.task(
        name="offsite", transport="SSH", ssh_credentials="$ssh"))
    assert await env.client.call("keychaincredential.used_by", env.ids["$ssh"]) == [
        {"title": "Replication task offsite", "unbind_method": "disable"}]
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("keychaincredential.delete", env.ids["$ssh"])
    assert raised.value.triples()[0][0] == "options.cascade"

    await env.client.call("keychaincredential.delete", env.ids["$ssh"], {"cascade": True})
    after = await env.client.call("replication.get_instance", task["id"])
    assert (after["enabled"], after["ssh_credentials"]) == (False, None)


async def test_snapshot_task_bound_to_an_enabled_replication_cannot_be_disabled(pool_env: Env) -> None:
    snapshot_task = await pool_env.snapshot_task("@src")
    task = await pool_env.client.call("replication.create", await pool_env.task(
        periodic_snapshot_tasks=["$task0"], also_include_naming_schema=[]))
    assert [t["id"] for t in task["periodic_snapshot_tasks"]] == [snapshot_task]
    assert isinstance(task["periodic_snapshot_tasks"][0]["state"], str)
    assert "vmware_sync" not in task["periodic_snapshot_tasks"][0]
    with pytest.raises(ValidationErrors) as raised:
        await pool_env.client.call("pool.snapshottask.update", snapshot_task, {"enabled": False})
    assert "bound to enabled replication task" in raised.value.errors[0].errmsg
    with pytest.raises(ClientException) as deleted:
        await pool_env.client.call("pool.snapshottask.delete", snapshot_task)
    assert "last periodic snapshot task" in str(deleted.value)

    await pool_env.client.call("replication.update", task["id"], {"enabled": False})
    await pool_env.client.call("pool.snapshottask.update", snapshot_task, {"enabled": False})


async def test_a_deleted_snapshot_task_is_unbound(pool_env: Env, server: TestServer) -> None:
    first = await pool_env.snapshot_task("@src")
    second = await pool_env.snapshot_task("@src", naming_schema="other-%Y-%m-%d-%H-%M")
    task = await pool_env.client.call("replication.create", await pool_env.task(
        periodic_snapshot_tasks=["$task0", "$task1"]))
    await pool_env.client.call("pool.snapshottask.delete", first)
    await server.app.service("replication").snapshot_task_deleted(first)
    after = await pool_env.client.call("replication.get_instance", task["id"])
    assert [t["id"] for t in after["periodic_snapshot_tasks"]] == [second]
    assert (await server.app.service("replication").stored_one(task["id"]))["periodic_snapshot_tasks"] == [second]
