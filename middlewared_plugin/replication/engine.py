"""The glue a service calls: a TrueNAS replication task definition in, a plan or a finished run out.

`plan_task` and `run_task` share everything up to the plan: list both sides through the transport's
runners (recursive, with the properties the task excludes or overrides, resume tokens decoded), build the
`ReplicationSpec` and the snapshot selector from the task's fields, and call the pure planner. `run_task`
then executes the plan, re-listing and re-planning before each retry. `make_transport` picks LOCAL, SSH or
SSH+NETCAT from the task.

The task is a `ReplicationEntry`-shaped mapping (API reference §2.1.1) whose `periodic_snapshot_tasks`
are the bound task objects (each with `naming_schema`), not ids. `now` is the naive wall-clock time of the
configured timezone, like the times parsed from snapshot names.
"""
from __future__ import annotations

import asyncio
import errno
import importlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner, LoggingRunner, Runner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.executor import (
    ExecuteOptions,
    ExecuteResult,
    Log,
    ProgressCallback,
    execute,
)
from middlewared_plugin.replication.listing import DatasetInfo, DatasetType, Listing, ResumeToken, SnapshotInfo
from middlewared_plugin.replication.plan import Plan
from middlewared_plugin.replication.planner import (
    ReadonlyPolicy,
    ReplicationSpec,
    RetentionPolicy,
    Selector,
    TargetEncryption,
    plan_replication,
)
from middlewared_plugin.replication.retention import (
    PendingSnapshotsOwner,
    all_selected,
    custom_retention,
    pending_snapshots,
)
from middlewared_plugin.replication.transports.base import Transport
from middlewared_plugin.replication.transports.local import LocalTransport
from middlewared_plugin.replication.transports.ssh import DataPath, SshTransport
from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.snapshots.naming import (
    AmbiguousSnapshotName,
    compile_name_regex,
    parse_snapshot_names,
)
from middlewared_plugin.zfs import Dataset, Feature, Snapshot, Zfs, resume_send_argv

_TOKEN_GUID = re.compile(r"^\s*(toguid|fromguid)\s*=\s*(0x[0-9a-fA-F]+|\d+)\s*$", re.MULTILINE)


class ReplicationFailed(CallError):
    """A run ended with datasets not replicated; `result` says what was done and why the rest was not."""

    def __init__(self, result: ExecuteResult):
        lines = [f"{target}: {why}" for target, why in result.errors.items()]
        super().__init__("Replication failed: " + "; ".join(lines), errno.EFAULT)
        self.result = result


# --- the task's snapshot selection -----------------------------------------------------------------


def naming_schemas(task: Mapping[str, Any]) -> list[str]:
    """Bound periodic tasks' schemas plus `also_include_naming_schema` (PUSH) or `naming_schema` (PULL)."""
    schemas = [t["naming_schema"] for t in task.get("periodic_snapshot_tasks") or []]
    schemas += task.get("also_include_naming_schema" if task["direction"] == "PUSH" else "naming_schema") or []
    return list(dict.fromkeys(schemas))


def make_selector(task: Mapping[str, Any]) -> Selector:
    """Which snapshot names the task replicates: `name_regex`, or a schema match whose time fits
    `restrict_schedule` and (with `only_matching_schedule`) the task's `schedule`."""
    if task.get("name_regex"):
        pattern = compile_name_regex(task["name_regex"])
        return lambda name: pattern.fullmatch(name) is not None
    schemas = naming_schemas(task)
    schedules = [Schedule.from_api(task["restrict_schedule"])] if task.get("restrict_schedule") else []
    if task.get("only_matching_schedule") and task.get("schedule"):
        schedules.append(Schedule.from_api(task["schedule"]))

    def select(name: str) -> bool:
        parsed = parse_snapshot_names([name], schemas).get(name)
        return parsed is not None and all(s.matches(parsed.datetime) for s in schedules)

    return select


def build_spec(task: Mapping[str, Any], *, mount: bool = True, only_from_scratch: bool = False) -> ReplicationSpec:
    """The planner's view of a task (mapping documented in `planner`)."""
    encryption = None
    if task.get("encryption"):
        encryption = TargetEncryption(inherit=bool(task.get("encryption_inherit")),
                                      key_format=task.get("encryption_key_format"),
                                      key_location=task.get("encryption_key_location"))
    return ReplicationSpec(
        source_datasets=tuple(task["source_datasets"]),
        target_dataset=task["target_dataset"],
        recursive=bool(task.get("recursive")),
        exclude=tuple(task.get("exclude") or ()),
        replicate=bool(task.get("replicate")),
        properties=bool(task.get("properties", True)),
        properties_exclude=tuple(task.get("properties_exclude") or ()),
        properties_override=dict(task.get("properties_override") or {}),
        retention_policy=RetentionPolicy(task.get("retention_policy") or "NONE"),
        allow_from_scratch=bool(task.get("allow_from_scratch")),
        only_from_scratch=only_from_scratch,
        # TrueNAS has no rollback switch: only a task that may replace its target may roll it back.
        allow_rollback=bool(task.get("allow_from_scratch")),
        readonly=ReadonlyPolicy(task.get("readonly") or "SET"),
        mount=mount,
        encryption=encryption,
        large_block=bool(task.get("large_block", True)),
        embed=bool(task.get("embed", False)),
        compressed=bool(task.get("compressed", True)),
    )


# --- listings --------------------------------------------------------------------------------------


async def _decode_token(zfs: Zfs, token: str) -> ResumeToken:
    """The guids inside a resume token, from `zfs send -nvt` (printed even when the snapshot is gone)."""
    result = await zfs.runner.run(resume_send_argv(token, dry_run=True), check=False)
    text = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    guids = {k: int(v, 0) for k, v in _TOKEN_GUID.findall(text)}
    return ResumeToken(token, toguid=guids.get("toguid"), fromguid=guids.get("fromguid"))


def _dataset_info(ds: Dataset, snapshots: list[Snapshot], token: ResumeToken | None,
                  wanted: Sequence[str], unlisted: Sequence[str] = ()) -> DatasetInfo:
    props = ds.user_properties
    written = props.get("written")
    listed = {p: props[p] for p in wanted if p in props}
    # Properties the source ZFS does not know (e.g. `pbkdf2iters` on zfs-fuse) cannot be ruled out by the
    # dataset's type there: they apply, and the receiving ZFS decides (no value to report).
    listed.update(dict.fromkeys(unlisted, ""))
    return DatasetInfo(
        name=ds.name,
        type=DatasetType(ds.type),
        snapshots=tuple(SnapshotInfo(s.name, s.guid, s.createtxg, referenced=s.referenced, written=s.written)
                        for s in snapshots),
        resume_token=token,
        readonly=ds.readonly,
        encrypted=props.get("encryption", "off") != "off",
        referenced=ds.referenced,
        written=int(written) if written and written.isdigit() else None,
        properties=listed if wanted or unlisted else None,
    )


async def list_side(zfs: Zfs, roots: Sequence[str], *, recursive: bool,
                    properties: Sequence[str] = ()) -> Listing:
    """Datasets and snapshots under `roots` (missing roots are left out: the planner reports them)."""
    known = (await zfs.features()).properties
    extra = [p for p in ("encryption", "written") if p in known]
    # Asking `zfs get` for a property it does not know fails the whole listing; user properties (with a
    # colon) are always known.
    unlisted = [p for p in properties if p not in known and ":" not in p]
    properties = [p for p in properties if p not in unlisted]
    infos: list[DatasetInfo] = []
    for root in roots:
        try:
            datasets = await zfs.list_datasets(root, recursive=recursive,
                                               user_properties=[*extra, *properties])
            snapshots = await zfs.list_snapshots(root, recursive=recursive)
        except CallError as e:
            if e.errno == errno.ENOENT:
                continue
            raise
        by_dataset: dict[str, list[Snapshot]] = {}
        for s in snapshots:
            by_dataset.setdefault(s.dataset, []).append(s)
        for ds in datasets:
            token = await _decode_token(zfs, ds.receive_resume_token) if ds.receive_resume_token else None
            infos.append(_dataset_info(ds, by_dataset.get(ds.name, []), token, properties, unlisted))
    return Listing.of(infos)


async def list_target(zfs: Zfs, target: str) -> Listing:
    """The target tree; when it does not exist, its nearest existing ancestors instead (none: no pool).
    It also tells whether the target host has native encryption."""
    encryption = (await zfs.features()).has(Feature.ENCRYPTION)
    listing = await list_side(zfs, [target], recursive=True)
    if target in listing:
        return Listing(listing.datasets, native_encryption=encryption)
    ancestors: list[DatasetInfo] = []
    parts = target.split("/")
    for i in range(len(parts) - 1, 0, -1):
        found = await list_side(zfs, ["/".join(parts[:i])], recursive=False)
        ancestors += found.datasets.values()
        if found.datasets:
            break
    return Listing.of(ancestors, native_encryption=encryption)


# --- plan and run ----------------------------------------------------------------------------------


async def plan_task(task: Mapping[str, Any], transport: Transport, *, now: datetime | None = None,
                    mount: bool = True, only_from_scratch: bool = False, log: Log | None = None) -> Plan:
    """List both sides and plan one run of `task` (what `replication.plan` shows); `log` gets each command."""
    now = now or datetime.now()
    spec = build_spec(task, mount=mount, only_from_scratch=only_from_scratch)
    wanted = [*spec.properties_exclude, *spec.properties_override]
    source_runner = LoggingRunner(transport.source, log) if log else transport.source
    target_runner = LoggingRunner(transport.target, log) if log else transport.target
    # Both sides are listed at once (over SSH each listing is a round trip); a source error is the one reported.
    target_listing = asyncio.ensure_future(list_target(Zfs(target_runner), spec.target_dataset))
    try:
        source = await list_side(Zfs(source_runner), spec.source_datasets,
                                 recursive=spec.recursive or spec.replicate, properties=list(dict.fromkeys(wanted)))
        target = await target_listing
    finally:
        if not target_listing.done():
            target_listing.cancel()
        elif not target_listing.cancelled():
            target_listing.exception()  # retrieved, so that a failure beside the source's is not reported twice
    retention = (custom_retention(task, naming_schemas(task))
                 if spec.retention_policy is RetentionPolicy.CUSTOM else None)
    try:
        return plan_replication(spec, source, target, now, select=make_selector(task), retention=retention)
    except AmbiguousSnapshotName as e:
        raise CallError(str(e), errno.EINVAL) from None


async def run_task(task: Mapping[str, Any], transport: Transport, *, progress: ProgressCallback, log: Log,
                   now: datetime | None = None, mount: bool = True, only_from_scratch: bool = False,
                   stall_timeout: float | None = 600.0, backoff_initial: float = 1.0,
                   backoff_max: float = 60.0) -> ExecuteResult:
    """Plan and execute one run; raises ReplicationFailed when any dataset was not replicated."""
    async def replan() -> Plan:
        return await plan_task(task, transport, now=now, mount=mount, only_from_scratch=only_from_scratch, log=log)

    plan = await replan()
    options = ExecuteOptions(
        retries=int(task.get("retries") or 5), stall_timeout=stall_timeout, backoff_initial=backoff_initial,
        backoff_max=backoff_max, encryption_key=task.get("encryption_key"), replan=replan,
    )
    result = await execute(plan, transport, progress=progress, log=log, options=options)
    if not result.ok:
        raise ReplicationFailed(result)
    return result


async def pending_snapshots_owner(task: Mapping[str, Any], transport: Transport, *,
                                  now: datetime | None = None) -> PendingSnapshotsOwner:
    """The source-side owner of a PUSH task with `hold_pending_snapshots`: keeps unsent snapshots and the
    base. When the target cannot be listed, every selected source snapshot is kept."""
    select = make_selector(task)
    try:
        plan = await plan_task(task, transport, now=now)
    except CallError:
        source = await list_side(Zfs(transport.source), task["source_datasets"], recursive=True)
        return PendingSnapshotsOwner(all_selected(source, task["source_datasets"], select))
    source = await list_side(Zfs(transport.source), task["source_datasets"],
                             recursive=bool(task.get("recursive") or task.get("replicate")))
    return PendingSnapshotsOwner(pending_snapshots(plan, source, select))


# --- transports ------------------------------------------------------------------------------------


def make_transport(task: Mapping[str, Any], *, local: Runner, remote: SshRunner | None = None) -> Transport:
    """The task's transport. `remote` is the runner for the task's SSH credentials (None for LOCAL)."""
    kind = task["transport"]
    if kind == "LOCAL":
        return LocalTransport(local)
    if remote is None:
        raise CallError(f"{kind} replication needs SSH credentials", errno.EINVAL)
    if kind == "SSH":
        # The OpenSSH data path runs the `ssh` client through the local runner, which must then be this
        # machine; a local ZFS that is itself reached over SSH (`local_zfs_ssh`) streams over asyncssh.
        data_path = DataPath.OPENSSH if isinstance(local, LocalRunner) else DataPath.ASYNCSSH
        return SshTransport(local, remote, task["direction"], data_path=data_path,
                            compression=task.get("compression"), speed_limit=task.get("speed_limit"))
    if kind == "SSH+NETCAT":
        netcat = importlib.import_module("middlewared_plugin.replication.transports.netcat")
        push = task["direction"] == "PUSH"
        return netcat.NetcatTransport(
            local if push else remote, remote if push else local,
            remote_runner=remote, direction=task["direction"],
            active_side=task.get("netcat_active_side") or "LOCAL",
            listen_address=task.get("netcat_active_side_listen_address"),
            port_min=task.get("netcat_active_side_port_min"),
            port_max=task.get("netcat_active_side_port_max"),
            connect_address=task.get("netcat_passive_side_connect_address"),
        )
    raise CallError(f"Unknown transport {kind!r}", errno.EINVAL)
