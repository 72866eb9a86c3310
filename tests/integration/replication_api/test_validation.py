"""`replication.create` validation (reference §2.1.2 and the argument models of §2.1.1): one case per rule.

Each case is a task (BASE_TASK plus changes, placeholders as in conftest), what it needs to exist first
(periodic snapshot tasks, SSH credentials), and the exact attribute and message the server must report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from middlewared_plugin.errors import ValidationErrors
from tests.integration.replication_api.conftest import SCHEMA, Env

SSH_NETCAT = {"transport": "SSH+NETCAT", "ssh_credentials": "$ssh", "netcat_active_side": "LOCAL"}
REPLICATE = {"replicate": True, "recursive": True, "retention_policy": "SOURCE"}
CUSTOM = {"retention_policy": "CUSTOM", "lifetime_value": 2, "lifetime_unit": "WEEK"}


@dataclass(frozen=True)
class Case:
    id: str
    changes: dict[str, Any]
    attribute: str
    message: str
    #: Periodic snapshot tasks to create first: (dataset, fields); their ids are $task0, $task1, ...
    snapshot_tasks: tuple[tuple[str, dict[str, Any]], ...] = ()
    ssh: bool = False
    #: Fields of BASE_TASK left out entirely.
    drop: tuple[str, ...] = ()


CASES = [
    # Argument models ---------------------------------------------------------------------------------
    Case("name-required", {}, "name", "Field required", drop=("name",)),
    Case("direction-enum", {"direction": "SIDEWAYS"}, "direction", "Input should be 'PUSH' or 'PULL'"),
    Case("transport-enum", {"transport": "FTP"}, "transport", "Input should be 'SSH', 'SSH+NETCAT' or 'LOCAL'"),
    Case("strict-int", {"retries": "5"}, "retries", "Input should be a valid integer"),
    Case("retries-min", {"retries": 0}, "retries", "Input should be greater than or equal to 1"),
    Case("sources-min", {"source_datasets": []}, "source_datasets",
         "List should have at least 1 item after validation, not 0"),
    Case("unknown-field", {"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    Case("naming-schema-year", {"also_include_naming_schema": ["snap-%m-%d-%H-%M"]},
         "also_include_naming_schema.0", "Value error, %Y must be present in snapshot naming schema"),
    Case("naming-schema-char", {"also_include_naming_schema": ["snap/%Y-%m-%d-%H-%M"]},
         "also_include_naming_schema.0", "Value error, / is not an allowed character in ZFS snapshot name"),
    Case("snapshot-tasks-unique", {"periodic_snapshot_tasks": [1, 1]}, "periodic_snapshot_tasks",
         "List must be unique"),
    Case("schedule-cron", {"auto": True, "schedule": {"minute": "61"}}, "schedule",
         "Value error, Please ensure fields match cron syntax - [61 * * * *] is not acceptable, out of range"),
    Case("schedule-begin-after-end", {"auto": True, "schedule": {"begin": "10:00", "end": "09:00"}}, "schedule",
         "Assertion failed, Begin time should be less than or equal to end time"),
    Case("schedule-outside-window",
         {"auto": True, "schedule": {"minute": "0", "hour": "5", "begin": "10:00", "end": "11:00"}}, "schedule",
         "Assertion failed, Specified schedule does not match specified time interval"),
    Case("lifetimes-cron", {**CUSTOM, "lifetimes": [
        {"schedule": {"hour": "25"}, "lifetime_value": 1, "lifetime_unit": "DAY"}]},
         "lifetimes.0.schedule",
         "Value error, Please ensure fields match cron syntax - [* 25 * * *] is not acceptable, out of range"),
    # Direction PUSH -----------------------------------------------------------------------------------
    Case("push-missing-snapshot-task", {"periodic_snapshot_tasks": [9999]}, "periodic_snapshot_tasks.0",
         "This snapshot task does not exist"),
    Case("push-naming-schema", {"naming_schema": [SCHEMA]}, "naming_schema",
         "This field has no sense for push replication"),
    Case("push-nothing-selects-snapshots", {"also_include_naming_schema": []}, "periodic_snapshot_tasks",
         'You must at least either bind a periodic snapshot task or provide "Also Include Naming Schema" or '
         '"Name Regex" for push replication task'),
    Case("push-auto-without-trigger", {"auto": True}, "auto",
         "Push replication that runs automatically must be either bound to a periodic snapshot task or have a "
         "schedule"),
    # Direction PULL -----------------------------------------------------------------------------------
    Case("pull-auto-without-schedule",
         {"direction": "PULL", "auto": True, "naming_schema": [SCHEMA], "also_include_naming_schema": []},
         "auto", "Pull replication that runs automatically must have a schedule"),
    Case("pull-snapshot-tasks",
         {"direction": "PULL", "periodic_snapshot_tasks": [1], "naming_schema": [SCHEMA],
          "also_include_naming_schema": []},
         "periodic_snapshot_tasks", "Pull replication can't be bound to a periodic snapshot task"),
    Case("pull-no-naming", {"direction": "PULL", "also_include_naming_schema": []}, "naming_schema",
         "Naming schema or Name regex are required for pull replication"),
    Case("pull-also-include", {"direction": "PULL", "naming_schema": [SCHEMA]}, "also_include_naming_schema",
         "This field has no sense for pull replication"),
    Case("pull-hold-pending",
         {"direction": "PULL", "naming_schema": [SCHEMA], "also_include_naming_schema": [],
          "hold_pending_snapshots": True},
         "hold_pending_snapshots",
         "Pull replication tasks can't hold pending snapshots because they don't do source retention"),
    # Transport SSH+NETCAT -----------------------------------------------------------------------------
    Case("netcat-active-side", {**SSH_NETCAT, "netcat_active_side": None}, "netcat_active_side",
         "You must choose active side for SSH+netcat replication", ssh=True),
    Case("netcat-ports", {**SSH_NETCAT, "netcat_active_side_port_min": 2000, "netcat_active_side_port_max": 1999},
         "netcat_active_side_port_max",
         "Please specify value greater than or equal to netcat_active_side_port_min", ssh=True),
    Case("netcat-compression", {**SSH_NETCAT, "compression": "LZ4"}, "compression",
         "Compression is not supported for SSH+netcat replication", ssh=True),
    Case("netcat-speed-limit", {**SSH_NETCAT, "speed_limit": 1000}, "speed_limit",
         "Speed limit is not supported for SSH+netcat replication", ssh=True),
    # Transport SSH or LOCAL: netcat fields ------------------------------------------------------------
    *(Case(f"local-{key}", {key: value}, key, "This field only has sense for SSH+netcat replication")
      for key, value in (("netcat_active_side", "LOCAL"), ("netcat_active_side_listen_address", "0.0.0.0"),
                         ("netcat_active_side_port_min", 1024), ("netcat_active_side_port_max", 50000),
                         ("netcat_passive_side_connect_address", "127.0.0.1"))),
    Case("ssh-netcat-field", {"transport": "SSH", "ssh_credentials": "$ssh", "netcat_active_side": "REMOTE"},
         "netcat_active_side", "This field only has sense for SSH+netcat replication", ssh=True),
    # Transport LOCAL ----------------------------------------------------------------------------------
    Case("local-ssh-credentials", {"ssh_credentials": "$ssh"}, "ssh_credentials",
         "Remote credentials have no sense for local replication", ssh=True),
    Case("local-compression", {"compression": "LZ4"}, "compression", "Compression has no sense for local replication"),
    Case("local-speed-limit", {"speed_limit": 1000}, "speed_limit", "Speed limit has no sense for local replication"),
    # Transport SSH ------------------------------------------------------------------------------------
    Case("ssh-without-credentials", {"transport": "SSH"}, "ssh_credentials",
         "SSH Credentials are required for non-local replication"),
    Case("ssh-missing-credentials", {"transport": "SSH", "ssh_credentials": 9999}, "ssh_credentials",
         "[ENOENT] Credential does not exist"),
    Case("ssh-credentials-wrong-type", {"transport": "SSH", "ssh_credentials": "$keypair"}, "ssh_credentials",
         "[EINVAL] Credential is not of type SSH_CREDENTIALS", ssh=True),
    # Source datasets ----------------------------------------------------------------------------------
    Case("exclude-missing-task-exclude", {"recursive": True, "periodic_snapshot_tasks": ["$task0"]}, "exclude",
         "You should exclude '{pool}/src/skip' as bound periodic snapshot task dataset '{pool}/src' does",
         snapshot_tasks=(("@src", {"recursive": True, "exclude": ["@src/skip"]}),)),
    Case("source-excluded-by-task",
         {"source_datasets": ["@src/skip"], "periodic_snapshot_tasks": ["$task0"]}, "source_datasets.0",
         "Dataset '{pool}/src/skip' is excluded by bound periodic snapshot task for dataset '{pool}/src'",
         snapshot_tasks=(("@src", {"recursive": True, "exclude": ["@src/skip"]}),)),
    Case("exclude-non-recursive", {"exclude": ["@src/child"]}, "exclude",
         "Excluding child datasets is only supported for recursive replication"),
    Case("exclude-not-a-child", {"recursive": True, "exclude": ["@other"]}, "exclude.0",
         "This dataset is not a child of any of source datasets"),
    # Full filesystem replication ----------------------------------------------------------------------
    Case("replicate-not-recursive", {**REPLICATE, "recursive": False}, "recursive",
         "This option is required for full filesystem replication"),
    Case("replicate-exclude", {**REPLICATE, "exclude": ["@src/child"]}, "exclude",
         "This option is not supported for full filesystem replication"),
    Case("replicate-no-properties", {**REPLICATE, "properties": False}, "properties",
         "This option is required for full filesystem replication"),
    Case("replicate-retention", {**REPLICATE, "retention_policy": "NONE"}, "retention_policy",
         "Only `Same as Source` retention policy can be used for full filesystem replication"),
    Case("replicate-overlapping-sources", {**REPLICATE, "source_datasets": ["@src", "@src/child"]},
         "source_datasets.1",
         "Replication task that replicates the entire filesystem can't replicate both '{pool}/src' and its child "
         "'{pool}/src/child'"),
    Case("replicate-non-recursive-task", {**REPLICATE, "periodic_snapshot_tasks": ["$task0", "$task1"]},
         "periodic_snapshot_tasks.1",
         "Replication tasks that replicate the entire filesystem can only use periodic snapshot tasks that take "
         "recursive snapshots of the dataset being replicated (or its ancestor)",
         snapshot_tasks=(("@src", {"recursive": True}), ("@src", {"recursive": False}))),
    # Common -------------------------------------------------------------------------------------------
    Case("encryption-no-key", {"encryption": True}, "encryption_key",
         "This property is required when remote dataset encryption is enabled"),
    Case("encryption-partial", {"encryption": True, "encryption_key": "00" * 32, "encryption_key_format": "HEX"},
         "encryption_key_location", "This property is required when remote dataset encryption is enabled"),
    Case("schedule-without-auto", {"schedule": {"minute": "0"}}, "schedule",
         "You can't have schedule for replication that does not run automatically"),
    Case("only-matching-without-schedule", {"only_matching_schedule": True}, "only_matching_schedule",
         "You can't have only-matching-schedule without schedule"),
    Case("regex-invalid", {"also_include_naming_schema": [], "name_regex": "["}, "name_regex",
         "Invalid regex: unterminated character set at position 1"),
    Case("regex-with-tasks", {"also_include_naming_schema": [], "name_regex": "snap-.*",
                              "periodic_snapshot_tasks": ["$task0"]},
         "name_regex", "Naming regex can't be used with periodic snapshot tasks", snapshot_tasks=(("@src", {}),)),
    Case("regex-with-schema", {"name_regex": "snap-.*"}, "name_regex", "Naming regex can't be used with Naming schema"),
    Case("regex-custom-retention", {**CUSTOM, "also_include_naming_schema": [], "name_regex": "snap-.*"},
         "retention_policy", "Only `Same as Source` and `None` retention policies can be used with Naming regex"),
    Case("custom-no-value", {**CUSTOM, "lifetime_value": None}, "lifetime_value",
         "This field is required for custom retention policy"),
    Case("custom-no-unit", {**CUSTOM, "lifetime_unit": None}, "lifetime_unit",
         "This field is required for custom retention policy"),
    Case("source-with-lifetime-value", {"lifetime_value": 2}, "lifetime_value",
         "This field has no sense for specified retention policy"),
    Case("source-with-lifetime-unit", {"lifetime_unit": "DAY"}, "lifetime_unit",
         "This field has no sense for specified retention policy"),
    Case("none-with-lifetimes",
         {"lifetimes": [{"schedule": {"hour": "0"}, "lifetime_value": 1, "lifetime_unit": "DAY"}]},
         "lifetimes", "This field has no sense for specified retention policy"),
    Case("enabled-task-disabled-snapshot-task", {"periodic_snapshot_tasks": ["$task0"]}, "periodic_snapshot_tasks.0",
         "You can't bind disabled periodic snapshot task to enabled replication task",
         snapshot_tasks=(("@src", {"enabled": False}),)),
]


async def _prepare(case: Case, env: Env) -> Env:
    for dataset, fields in case.snapshot_tasks:
        await env.snapshot_task(dataset, **fields)
    if case.ssh:
        await env.ssh()
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_invalid_create_names_attribute_and_message(case: Case, pool_env: Env) -> None:
    env = await _prepare(case, pool_env)
    data = await env.task(**case.changes)
    for key in case.drop:
        del data[key]
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.create", data)
    reported = [(e.attribute, e.errmsg) for e in raised.value.errors]
    expected = (f"replication_create.{case.attribute}", case.message.format(pool=env.pool_name))
    assert expected in reported
    assert await env.client.call("replication.query") == []


async def test_name_must_be_unique(env: Env) -> None:
    await env.client.call("replication.create", await env.task(name="nightly"))
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.create", await env.task(name="nightly"))
    assert raised.value.triples() == [["replication_create.name", "Object with this name already exists", 22]]


async def test_every_problem_is_reported_at_once_in_rule_order(env: Env) -> None:
    data = await env.task(direction="PULL", hold_pending_snapshots=True, compression="LZ4", exclude=["@x"],
                          only_matching_schedule=True)
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.create", data)
    assert [e.attribute for e in raised.value.errors] == [
        "replication_create.naming_schema",
        "replication_create.also_include_naming_schema",
        "replication_create.hold_pending_snapshots",
        "replication_create.compression",
        "replication_create.exclude",
        "replication_create.exclude.0",
        "replication_create.only_matching_schedule",
    ]


async def test_update_reports_errors_under_replication_update_after_merging(env: Env) -> None:
    task = await env.client.call("replication.create", await env.task())
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.update", task["id"], {"auto": True})
    assert raised.value.triples() == [[
        "replication_update.auto",
        "Push replication that runs automatically must be either bound to a periodic snapshot task or have a "
        "schedule", 22,
    ]]
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.update", task["id"], {"retries": 0})
    assert raised.value.triples() == [["replication_update.retries", "Input should be greater than or equal to 1", 22]]
    assert (await env.client.call("replication.get_instance", task["id"]))["auto"] is False


async def test_nonexistent_ssh_credentials_and_snapshot_task_ids(env: Env) -> None:
    data = await env.task(transport="SSH", ssh_credentials=4242, periodic_snapshot_tasks=[4343])
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.create", data)
    assert raised.value.triples() == [
        ["replication_create.periodic_snapshot_tasks.0", "This snapshot task does not exist", 22],
        ["replication_create.ssh_credentials", "[ENOENT] Credential does not exist", 22],
    ]


async def test_credentials_that_cannot_be_decrypted(env: Env, server: Any) -> None:
    await env.ssh()
    keychain = server.app.service("keychaincredential")
    stored = await keychain.stored_one(env.ids["$ssh"])
    # What a changed secret key leaves behind: the attributes no longer decode to anything.
    await keychain.save(env.ids["$ssh"], {**stored, "attributes": {}})
    with pytest.raises(ValidationErrors) as raised:
        await env.client.call("replication.create", await env.task(transport="SSH", ssh_credentials="$ssh"))
    assert raised.value.triples() == [["replication_create.ssh_credentials",
                                       "[EFAULT] Decrypting credential conn failed", 22]]
