"""The business rules of a replication task (reference §2.1.2), as one pure function.

The service gathers the facts that need I/O (is the name taken, which bound snapshot tasks exist, does
the credential resolve, may the caller use PULL) and `check_task` applies every rule in TrueNAS's order:
unique name, direction, transport, source datasets, common; then ours: where the destination lies. All
problems are collected, each with its attribute path under `schema` (`replication_create`,
`replication_update`, `replication_run_onetime`). Dataset names themselves are checked by the argument
models (the grammar of `zfs/names.py`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs.types import is_same_or_descendant

NETCAT_ONLY_FIELDS = (
    "netcat_active_side_listen_address",
    "netcat_active_side_port_min",
    "netcat_active_side_port_max",
    "netcat_passive_side_connect_address",
)
ENCRYPTION_FIELDS = ("encryption_key", "encryption_key_format", "encryption_key_location")
FULL_FS_REQUIRED = "This option is required for full filesystem replication"


@dataclass(frozen=True)
class Facts:
    """What the rules need to know beyond the task itself."""

    name_taken: bool = False
    #: Bound snapshot task entries in `periodic_snapshot_tasks` order; None where the id does not exist.
    snapshot_tasks: Sequence[dict[str, Any] | None] = ()
    #: The CallError text of resolving `ssh_credentials` (`[ENOENT] Credential does not exist`), if it failed.
    credential_error: str | None = None
    #: False when the caller holds REPLICATION_TASK_WRITE without REPLICATION_TASK_WRITE_PULL.
    may_pull: bool = True
    #: Source and destination are on one host (LOCAL, or SSH to this machine): they must not overlap.
    same_host: bool = False
    #: The pools of the destination's host when that is this server (None: not known at create time).
    target_pools: frozenset[str] | None = None
    #: Whether the destination's host has native encryption (None: not known at create time).
    target_encryption: bool | None = None


class _Errors:
    def __init__(self, verrors: ValidationErrors, schema: str):
        self.verrors = verrors
        self.schema = schema

    def add(self, field: str, message: str) -> None:
        self.verrors.add(f"{self.schema}.{field}", message)


def check_task(verrors: ValidationErrors, schema: str, data: dict[str, Any], facts: Facts) -> None:
    """Add every rule violation of `data` (a validated create-shaped task) to `verrors`."""
    errors = _Errors(verrors, schema)
    if facts.name_taken:
        errors.add("name", "Object with this name already exists")
    tasks = _check_direction(errors, data, facts)
    _check_transport(errors, data, facts)
    _check_source_datasets(errors, data, tasks)
    _check_common(errors, data, tasks)
    _check_destination(errors, data, facts)


def _check_direction(errors: _Errors, data: dict[str, Any], facts: Facts) -> list[dict[str, Any]]:
    """Direction rules; returns the bound snapshot tasks that exist (none for PULL)."""
    tasks: list[dict[str, Any]] = []
    if data["direction"] == "PUSH":
        for i, task in enumerate(facts.snapshot_tasks):
            if task is None:
                errors.add(f"periodic_snapshot_tasks.{i}", "This snapshot task does not exist")
            else:
                tasks.append(task)
        if data["naming_schema"]:
            errors.add("naming_schema", "This field has no sense for push replication")
        if not tasks and not data["also_include_naming_schema"] and not data["name_regex"]:
            errors.add(
                "periodic_snapshot_tasks",
                'You must at least either bind a periodic snapshot task or provide "Also Include Naming Schema" '
                'or "Name Regex" for push replication task',
            )
        if data["schedule"] is None and data["auto"] and not data["periodic_snapshot_tasks"]:
            errors.add(
                "auto",
                "Push replication that runs automatically must be either bound to a periodic snapshot task or "
                "have a schedule",
            )
        return tasks

    if data["schedule"] is None and data["auto"]:
        errors.add("auto", "Pull replication that runs automatically must have a schedule")
    if data["periodic_snapshot_tasks"]:
        errors.add("periodic_snapshot_tasks", "Pull replication can't be bound to a periodic snapshot task")
    if not data["naming_schema"] and not data["name_regex"]:
        errors.add("naming_schema", "Naming schema or Name regex are required for pull replication")
    if data["also_include_naming_schema"]:
        errors.add("also_include_naming_schema", "This field has no sense for pull replication")
    if data["hold_pending_snapshots"]:
        errors.add(
            "hold_pending_snapshots",
            "Pull replication tasks can't hold pending snapshots because they don't do source retention",
        )
    if not facts.may_pull:
        errors.add("direction", "You don't have permissions to use PULL replication")
    return tasks


def _check_transport(errors: _Errors, data: dict[str, Any], facts: Facts) -> None:
    transport = data["transport"]
    if transport == "SSH+NETCAT":
        if data["netcat_active_side"] is None:
            errors.add("netcat_active_side", "You must choose active side for SSH+netcat replication")
        low, high = data["netcat_active_side_port_min"], data["netcat_active_side_port_max"]
        if low is not None and high is not None and low > high:
            errors.add("netcat_active_side_port_max",
                       "Please specify value greater than or equal to netcat_active_side_port_min")
        if data["compression"] is not None:
            errors.add("compression", "Compression is not supported for SSH+netcat replication")
        if data["speed_limit"] is not None:
            errors.add("speed_limit", "Speed limit is not supported for SSH+netcat replication")
    else:
        for field in ("netcat_active_side", *NETCAT_ONLY_FIELDS):
            if data[field] is not None:
                errors.add(field, "This field only has sense for SSH+netcat replication")

    if transport == "LOCAL":
        if data["ssh_credentials"] is not None:
            errors.add("ssh_credentials", "Remote credentials have no sense for local replication")
        if data["compression"] is not None:
            errors.add("compression", "Compression has no sense for local replication")
        if data["speed_limit"] is not None:
            errors.add("speed_limit", "Speed limit has no sense for local replication")
    elif data["ssh_credentials"] is None:
        errors.add("ssh_credentials", "SSH Credentials are required for non-local replication")
    elif facts.credential_error is not None:
        errors.add("ssh_credentials", facts.credential_error)


def _check_source_datasets(errors: _Errors, data: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    sources: list[str] = data["source_datasets"]
    recursive: bool = data["recursive"]
    exclude: list[str] = data["exclude"]

    # Bound snapshot tasks and the replication must agree on what is left out.
    for i, source in enumerate(sources):
        for task in tasks:
            if not is_same_or_descendant(source, task["dataset"]):
                continue
            if recursive:
                for excluded in task["exclude"]:
                    if is_same_or_descendant(excluded, source) and excluded not in exclude:
                        errors.add("exclude", f"You should exclude {excluded!r} as bound periodic snapshot task "
                                              f"dataset {task['dataset']!r} does")
            elif source in task["exclude"]:
                errors.add(f"source_datasets.{i}", f"Dataset {source!r} is excluded by bound periodic snapshot "
                                                   f"task for dataset {task['dataset']!r}")

    if not recursive and exclude:
        errors.add("exclude", "Excluding child datasets is only supported for recursive replication")
    for i, excluded in enumerate(exclude):
        if not any(excluded.startswith(source + "/") for source in sources):
            errors.add(f"exclude.{i}", "This dataset is not a child of any of source datasets")

    if not data["replicate"]:
        return
    if not recursive:
        errors.add("recursive", FULL_FS_REQUIRED)
    if exclude:
        errors.add("exclude", "This option is not supported for full filesystem replication")
    if not data["properties"]:
        errors.add("properties", FULL_FS_REQUIRED)
    if data["retention_policy"] != "SOURCE":
        errors.add("retention_policy",
                   "Only `Same as Source` retention policy can be used for full filesystem replication")
    for i, source in enumerate(sources):
        for j, other in enumerate(sources):
            if i != j and is_same_or_descendant(source, other):
                errors.add(f"source_datasets.{i}", "Replication task that replicates the entire filesystem can't "
                                                   f"replicate both {other!r} and its child {source!r}")
    for i, task in enumerate(tasks):
        covers = any(is_same_or_descendant(source, task["dataset"]) for source in sources)
        if not covers or not task["recursive"]:
            errors.add(f"periodic_snapshot_tasks.{i}",
                       "Replication tasks that replicate the entire filesystem can only use periodic snapshot tasks "
                       "that take recursive snapshots of the dataset being replicated (or its ancestor)")


def _check_common(errors: _Errors, data: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    if data["encryption"] and not data["encryption_inherit"]:
        for field in ENCRYPTION_FIELDS:
            if data[field] is None:
                errors.add(field, "This property is required when remote dataset encryption is enabled")

    if data["schedule"]:
        if not data["auto"]:
            errors.add("schedule", "You can't have schedule for replication that does not run automatically")
    elif data["only_matching_schedule"]:
        errors.add("only_matching_schedule", "You can't have only-matching-schedule without schedule")

    policy = data["retention_policy"]
    if data["name_regex"]:
        try:
            re.compile(f"({data['name_regex']})$")
        except re.error as exc:
            errors.add("name_regex", f"Invalid regex: {exc}")
        if tasks:
            errors.add("name_regex", "Naming regex can't be used with periodic snapshot tasks")
        if data["naming_schema"] or data["also_include_naming_schema"]:
            errors.add("name_regex", "Naming regex can't be used with Naming schema")
        if policy not in ("SOURCE", "NONE"):
            errors.add("retention_policy",
                       "Only `Same as Source` and `None` retention policies can be used with Naming regex")

    if policy == "CUSTOM":
        for field in ("lifetime_value", "lifetime_unit"):
            if data[field] is None:
                errors.add(field, "This field is required for custom retention policy")
    else:
        for field in ("lifetime_value", "lifetime_unit"):
            if data[field] is not None:
                errors.add(field, "This field has no sense for specified retention policy")
        if data["lifetimes"]:
            errors.add("lifetimes", "This field has no sense for specified retention policy")

    if data["enabled"]:
        for i, task in enumerate(tasks):
            if not task["enabled"]:
                errors.add(f"periodic_snapshot_tasks.{i}",
                           "You can't bind disabled periodic snapshot task to enabled replication task")


def _check_destination(errors: _Errors, data: dict[str, Any], facts: Facts) -> None:
    """Where the data would land: never over or under its own source, on a pool and a ZFS that exist."""
    target: str = data["target_dataset"]
    if facts.same_host:
        for source in data["source_datasets"]:
            if target == source:
                problem = f"is the source dataset {source!r}"
            elif is_same_or_descendant(target, source):
                problem = f"is inside the source dataset {source!r}"
            elif is_same_or_descendant(source, target):
                problem = f"contains the source dataset {source!r}"
            else:
                continue
            errors.add("target_dataset", f"The destination {target!r} {problem} on the same system: replicating "
                                         "would overwrite the data being replicated")
    pool = target.split("/", 1)[0]
    if facts.target_pools is not None and pool not in facts.target_pools:
        errors.add("target_dataset", f"Pool {pool!r} does not exist on this system")
    if data["encryption"] and facts.target_encryption is False:
        errors.add("encryption", "ZFS on this system does not support native encryption")
