"""`pool.snapshottask.*`: periodic snapshot tasks (reference §2.3), their scheduler handler and retention.

Each minute the scheduler calls `on_tick`: every enabled task whose schedule matches takes its snapshot
(`snapshots/taker.py`), then local retention destroys what expired. `run` does the same for one task now.

Other services plug in without this module knowing them:
- `on_snapshots_taken`: callbacks `(task, full snapshot names)` awaited after a task took its snapshots
  (replication starts its bound `auto` tasks there);
- a service with `async retention_owners(datasets) -> list[SnapshotOwner]` adds owners to every retention
  run (replication: pending snapshots, the last common snapshot);
- a service with `async snapshot_task_bindings(task_id) -> list[SnapshotTaskBinding]` reports which of its
  tasks use a snapshot task, so disabling or deleting it can be refused (§2.3); one with
  `async snapshot_task_deleted(task_id)` is told after a task was deleted, to drop its bindings.

`dataset_attachments` answers pool and pool.dataset (see `attachments.py`).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from middlewared_plugin.attachments import Attachment
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.scheduling.schedule import Schedule, validate_schedule
from middlewared_plugin.services.base import ApiModel, CallContext, CRUDService, IdArgs, api_method
from middlewared_plugin.services.common import SnapshotNameSchema
from middlewared_plugin.services.pool import publish_snapshot_event, publish_snapshots_added
from middlewared_plugin.snapshots.retention import SnapshotOwner, removal_date_property_name
from middlewared_plugin.snapshots.taker import (
    PeriodicTask,
    SnapshotAlreadyExists,
    TakeResult,
    owned_snapshots,
    removal_dates,
    retention_roots,
    run_retention,
    take_snapshot,
    taking_order,
)
from middlewared_plugin.snapshots.task_state import TaskStates, periodic_snapshot_task_key
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.types import split_snapshot_name

logger = logging.getLogger(__name__)

READ = "SNAPSHOT_TASK_READ"
WRITE = "SNAPSHOT_TASK_WRITE"
MAX_COUNT = 512
MAX_TOTAL_COUNT = 10000

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class CronWindowModel(ApiModel):
    """TrueNAS's task schedule: cron fields plus a daily [begin, end] window ("HH:MM")."""

    minute: str = "00"
    hour: str = "*"
    dom: str = "*"
    month: str = "*"
    dow: str = "*"
    begin: str = "00:00"
    end: str = "23:59"

    @model_validator(mode="after")
    def _check(self) -> CronWindowModel:
        for key in ("begin", "end"):
            if not _HHMM.match(getattr(self, key)):
                raise ValueError(f"{key} should be a time in HH:MM format")
        verrors = ValidationErrors()
        validate_schedule(verrors, "schedule", self.model_dump())
        if verrors:
            raise ValueError(f"Please ensure fields match cron syntax - {verrors.errors[0].errmsg}")
        return self


class PoolSnapshotTaskCreate(ApiModel):
    dataset: str
    recursive: bool = False
    lifetime_value: int = 2
    lifetime_unit: Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"] = "WEEK"
    enabled: bool = True
    exclude: list[str] = []
    naming_schema: SnapshotNameSchema = "auto-%Y-%m-%d_%H-%M"
    allow_empty: bool = True
    schedule: CronWindowModel = CronWindowModel()


class UpdateArgs(ApiModel):
    id: int
    data: dict[str, Any] = {}


class DeleteOptions(ApiModel):
    fixate_removal_date: bool = False


class DeleteArgs(ApiModel):
    id: int
    options: DeleteOptions = DeleteOptions()


class FixateRemovalDateArgs(ApiModel):
    datasets: dict[str, list[str]]
    task: dict[str, Any]


@dataclass(frozen=True)
class SnapshotTaskBinding:
    """One task of another service that uses a periodic snapshot task (reported by `snapshot_task_bindings`)."""

    id: int
    name: str
    enabled: bool
    direction: str
    #: Every periodic snapshot task id the binding task uses.
    periodic_snapshot_tasks: tuple[int, ...]
    also_include_naming_schema: tuple[str, ...] = ()


SnapshotsTakenCallback = Callable[[dict[str, Any], list[str]], Awaitable[None]]


def _group(full_names: Iterable[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for full in full_names:
        dataset, name = split_snapshot_name(full)
        grouped[dataset].append(name)
    return {dataset: sorted(names) for dataset, names in sorted(grouped.items())}


def _read_host_id(data_dir: Path) -> str:
    """A stable id of this host: hashed machine id (as TrueNAS hashes its hostid), else a stored random one."""
    for source in (Path("/etc/machine-id"), Path("/etc/hostid")):
        try:
            raw = source.read_bytes().strip()
        except OSError:
            continue
        if raw:
            return hashlib.sha256(raw).hexdigest()
    stored = data_dir / "host_id"
    if not stored.exists():
        stored.write_text(secrets.token_hex(32))
    return stored.read_text().strip()


class PeriodicSnapshotTaskService(CRUDService):
    namespace = "pool.snapshottask"
    role_prefix = "SNAPSHOT_TASK"
    #: TrueNAS's attachment delegate name for these tasks (`attachments.py`).
    attachment_delegate = "snapshottask"
    table = "pool_snapshottask"
    entry_name = "Periodic snapshot task"
    entry_model = PoolSnapshotTaskCreate
    create_schema = "periodic_snapshot_create"
    update_schema = "periodic_snapshot_update"

    def __init__(self, app: Any):
        super().__init__(app)
        self.states = TaskStates(app.store)
        self.on_snapshots_taken: list[SnapshotsTakenCallback] = []
        self.host_id = ""
        # One lock per task: a task still taking its snapshot is not started again.
        self._task_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._retention_lock = asyncio.Lock()

    async def setup(self) -> None:
        await self.states.load()
        self.host_id = await asyncio.to_thread(_read_host_id, self.app.settings.data_dir)
        self.app.scheduler.add(self.namespace, self.on_tick)

    def zfs(self) -> Zfs:
        return Zfs(self.app.zfs_runner)

    @property
    def removal_date_property_name(self) -> str:
        return removal_date_property_name(self.host_id)

    # CRUD hooks ------------------------------------------------------------------------------------

    def state_of(self, task_id: int) -> dict[str, Any]:
        return self.states.get(periodic_snapshot_task_key(task_id)) or {"state": "PENDING"}

    async def extend(self, ctx: CallContext, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = self.app.scheduler.clock()
        for entry in entries:
            schedule = Schedule.from_api(entry["schedule"])
            entry["schedule_description"] = schedule.describe()
            # When the schedule fires next (enabled or not: clients say "disabled" themselves).
            entry["next_run"] = schedule.next_run(now)
            entry["vmware_sync"] = False
            entry["state"] = self.state_of(entry["id"])
        return entries

    async def validate(
        self, ctx: CallContext, verrors: ValidationErrors, schema: str, data: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> None:
        dataset = data["dataset"]
        if not await self._is_filesystem(dataset):
            verrors.add(f"{schema}.dataset", "Dataset not found")
        if data["exclude"] and not data["recursive"]:
            verrors.add(f"{schema}.exclude",
                        "Excluding datasets is not necessary for non-recursive periodic snapshot tasks")
        for i, excluded in enumerate(data["exclude"]):
            if not excluded.startswith(f"{dataset}/"):
                verrors.add(f"{schema}.exclude.{i}",
                            "Excluded dataset should be a child or other descendant of the selected dataset")
        if old is not None and not data["enabled"]:
            for binding in await self.bindings(old["id"]):
                if binding.enabled:
                    verrors.add(f"{schema}.enabled",
                                "You can't disable this periodic snapshot task because it is bound to enabled "
                                f"replication task {binding.id}")
                    break

    async def _is_filesystem(self, name: str) -> bool:
        if not name or "@" in name or "#" in name:
            return False
        zfs = self.zfs()
        if not await zfs.exists(name):
            return False
        try:
            found = await zfs.list_datasets(name, recursive=False)
        except CallError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return bool(found) and found[0].type == "filesystem"

    async def bindings(self, task_id: int) -> list[SnapshotTaskBinding]:
        """Tasks of other services that use this snapshot task."""
        found: list[SnapshotTaskBinding] = []
        for service in self.app.services.values():
            finder = getattr(service, "snapshot_task_bindings", None)
            if finder is not None:
                found.extend(await finder(task_id))
        return found

    async def before_delete(self, ctx: CallContext, entry: dict[str, Any], options: dict[str, Any]) -> None:
        for binding in await self.bindings(entry["id"]):
            if (binding.enabled and binding.direction == "PUSH" and not binding.also_include_naming_schema
                    and set(binding.periodic_snapshot_tasks) == {entry["id"]}):
                raise CallError(
                    f"You are deleting the last periodic snapshot task bound to enabled replication task "
                    f"'{binding.name}' which will break it. Please, disable that replication task first.",
                    errno.EINVAL,
                )
        if options.get("fixate_removal_date"):
            will_change = await self.delete_will_change_retention_for(CallContext(self.app, None), entry["id"])
            if will_change:
                await self._fixate(will_change, entry)

    async def after_delete(self, ctx: CallContext, entry: dict[str, Any]) -> None:
        await self.states.remove(periodic_snapshot_task_key(entry["id"]))
        self._task_locks.pop(entry["id"], None)
        # Bindings live with the binding service (TrueNAS: ON DELETE CASCADE of the M2M table).
        for service in self.app.services.values():
            unbind = getattr(service, "snapshot_task_deleted", None)
            if unbind is not None:
                await unbind(entry["id"])

    async def dataset_attachments(self) -> list[Attachment]:
        """Every task, using its dataset only (a recursive task on a parent does not use a child: deleting
        the child leaves it)."""
        return [
            Attachment("Snapshot Task", task["dataset"], task["enabled"], order=0,
                       delete=lambda id=task["id"]: self.delete(CallContext(self.app, None), id),
                       toggle=lambda enabled, id=task["id"]: self.save_fields(id, enabled=enabled),
                       delegate=self.attachment_delegate, datasets=(task["dataset"],),
                       entry=lambda id=task["id"]: self.get_instance(CallContext(self.app, None), id))
            for task in await self.stored()
        ]

    # Public methods --------------------------------------------------------------------------------

    async def update(self, ctx: CallContext, id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Update a task; with `fixate_removal_date` present, snapshots whose retention the change would
        alter keep their current expiry (written to them as the removal-date property)."""
        old = await self.get_instance(CallContext(self.app, None), id)
        changes = dict(data)
        fixate = "fixate_removal_date" in changes
        if fixate and not isinstance(changes.pop("fixate_removal_date"), bool):
            raise ValidationErrors([(f"{self.update_arg}.fixate_removal_date", "Input should be a valid boolean",
                                     errno.EINVAL)])
        merged = self._validate_model(self.update_arg, {**self.compress(old), **changes})
        verrors = ValidationErrors()
        await self.validate(ctx, verrors, self.update_schema or self.update_arg, merged, old)
        verrors.check()
        will_change = await self._will_change(old, merged) if fixate else {}
        await self.app.store.update(self.table, id, self._encode(merged))
        if will_change:
            await self._fixate(will_change, old)
        entry = await self.get_instance(CallContext(self.app, None), id)
        self.publish("CHANGED", id, entry)
        return self.redact(ctx.credentials, entry)

    @api_method(DeleteArgs, roles=(WRITE,))
    async def delete(self, ctx: CallContext, id: int, options: dict[str, Any] | None = None) -> bool:
        """Delete a task; `fixate_removal_date` keeps the current expiry of the snapshots it owned."""
        return await super().delete(ctx, id, options)

    @api_method(IdArgs, roles=(WRITE,), job=True)
    async def run(self, ctx: CallContext, id: int) -> None:
        """Take the task's snapshot now (then run retention), as if its schedule had fired."""
        entry = await self.get_instance(CallContext(self.app, None), id)
        if not entry["enabled"]:
            raise CallError("Task is not enabled")
        task = PeriodicTask.from_entry(entry)
        job = ctx.job
        assert job is not None
        job.set_progress(0, f"Taking snapshot of {task.dataset}{' (recursive)' if task.recursive else ''}")
        when = self.app.scheduler.clock()
        result = await self._take(task, when, set(), manual=True)
        assert result is not None
        job.set_progress(50, _describe(result))
        await self._retention(when)
        job.set_progress(100, _describe(result))

    @api_method(roles=(READ,))
    async def max_count(self, ctx: CallContext) -> int:
        """Snapshots per dataset that clients (Windows "Previous Versions") cope with."""
        return MAX_COUNT

    @api_method(roles=(READ,))
    async def max_total_count(self, ctx: CallContext) -> int:
        """Snapshots on the system above which performance suffers."""
        return MAX_TOTAL_COUNT

    @api_method(UpdateArgs, roles=(READ,))
    async def update_will_change_retention_for(
        self, ctx: CallContext, id: int, data: dict[str, Any],
    ) -> dict[str, list[str]]:
        """Snapshots the task owns now but would no longer own after `data` is applied, by dataset."""
        old = await self.get_instance(CallContext(self.app, None), id)
        merged = self._validate_model(self.update_arg, {**self.compress(old), **data})
        return await self._will_change(old, merged)

    @api_method(IdArgs, roles=(READ,))
    async def delete_will_change_retention_for(self, ctx: CallContext, id: int) -> dict[str, list[str]]:
        """Every snapshot the task owns, by dataset (what deleting it leaves without retention)."""
        task = PeriodicTask.from_entry(await self.get_instance(CallContext(self.app, None), id))
        listed = await self._owned_listing(task)
        return _group(owned_snapshots(task, listed)) if listed else {}

    @api_method(private=True)
    async def removal_date_property(self, ctx: CallContext) -> str:
        """The user property holding a snapshot's fixated removal date."""
        return self.removal_date_property_name

    @api_method(FixateRemovalDateArgs, private=True, job=True,
                lock=lambda args: f"pool.snapshottask.fixate_removal_date:{args[1]['dataset'].split('/')[0]}")
    async def fixate_removal_date(self, ctx: CallContext, datasets: dict[str, list[str]], task: dict[str, Any]) -> None:
        """Write each snapshot's current expiry under `task` into the removal-date property."""
        periodic = PeriodicTask.from_entry({**self._validate_model("task", self.compress(task)), "id": task["id"]})
        names = [f"{dataset}@{name}" for dataset, snaps in datasets.items() for name in snaps]
        dates = removal_dates(periodic, names)
        zfs = self.zfs()
        job = ctx.job
        for i, (full, when) in enumerate(sorted(dates.items()), start=1):
            await zfs.set_properties(full, {self.removal_date_property_name: when.isoformat()})
            if job is not None:
                job.set_progress(100 * i / len(dates), f"Fixated removal date of {full}: {when.isoformat()}")

    # Retention helpers -----------------------------------------------------------------------------

    async def _owned_listing(self, task: PeriodicTask) -> list[Any]:
        """The task's tree snapshots, or [] when its dataset is gone (ENOENT only; other errors propagate)."""
        try:
            return await self.zfs().list_snapshots(task.dataset, recursive=task.recursive)
        except CallError as e:
            if e.errno == errno.ENOENT:
                return []
            raise

    async def _will_change(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
        before = PeriodicTask.from_entry(old)
        after = PeriodicTask.from_entry({**new, "id": old["id"]})
        listed = await self._owned_listing(before)
        return _group(owned_snapshots(before, listed) - owned_snapshots(after, listed))

    async def _fixate(self, datasets: dict[str, list[str]], task: dict[str, Any]) -> None:
        stored_task = {**self.compress(task), "id": task["id"]}
        await self.app.call("pool.snapshottask.fixate_removal_date", datasets, stored_task)

    # Scheduling and execution ----------------------------------------------------------------------

    async def on_tick(self, minute: datetime) -> None:
        """Scheduler handler: take the snapshots due in `minute`, then run retention."""
        due = [
            PeriodicTask.from_entry(e) for e in await self.stored()
            if e["enabled"] and Schedule.from_api(e["schedule"]).matches(minute)
        ]
        if not due:
            return
        taken: set[str] = set()
        for task in taking_order(due):
            await self._take(task, minute, taken, manual=False)
        await self._retention(minute)

    async def _set_state(self, task_id: int, state: dict[str, Any]) -> None:
        await self.states.set(periodic_snapshot_task_key(task_id), state)
        self.publish("CHANGED", task_id, {"state": self.state_of(task_id)})

    async def _take(self, task: PeriodicTask, when: datetime, taken: set[str], *, manual: bool) -> TakeResult | None:
        """Take one task's snapshot with state updates. A scheduled run of a task that is still running is
        skipped; a manual one waits for it. Manual runs raise what failed, scheduled ones record it."""
        lock = self._task_locks[task.id]
        if lock.locked() and not manual:
            logger.warning("Periodic snapshot task %s is still running; skipping its run for %s", task.id, when)
            return None
        async with lock:
            last_snapshot = self.state_of(task.id).get("last_snapshot")

            async def started() -> None:
                await self._set_state(task.id, {"state": "RUNNING", "datetime": datetime.now(UTC),
                                                "last_snapshot": last_snapshot})

            try:
                result = await take_snapshot(self.zfs(), task, when, taken, on_start=started)
            except SnapshotAlreadyExists:
                # Nothing to do: that minute's snapshot exists, and the state stays what it was.
                if manual:
                    raise
                logger.info("Periodic snapshot task %s: snapshot for %s already exists", task.id, when)
                return None
            except Exception as e:
                error = e.errmsg if isinstance(e, CallError) else str(e) or type(e).__name__
                await self._set_state(task.id, {"state": "ERROR", "datetime": datetime.now(UTC), "error": error,
                                                "last_snapshot": last_snapshot})
                if manual:
                    raise
                logger.error("Periodic snapshot task %s failed: %s", task.id, error)
                return None
            await self._set_state(task.id, {
                "state": "FINISHED", "datetime": datetime.now(UTC),
                "last_snapshot": result.snapshots[0] if result.snapshots else last_snapshot,
            })
        if result.snapshots and not result.shared:  # a shared one was announced by the task that took it
            try:
                await publish_snapshots_added(self.app, result.snapshots)
            except CallError as e:  # the snapshot was taken all the same
                logger.warning("Cannot read back %s for pool.snapshot.query events: %s", result.snapshots[0], e)
        if result.snapshots:
            await self._snapshots_taken(task, result.snapshots)
        return result

    async def _snapshots_taken(self, task: PeriodicTask, snapshots: list[str]) -> None:
        entry = await self.stored_one(task.id)
        if entry is None:
            return
        for callback in list(self.on_snapshots_taken):
            try:
                await callback(entry, list(snapshots))
            except Exception:
                logger.exception("on_snapshots_taken callback %r failed for task %s", callback, task.id)

    async def _extra_owners(self, datasets: list[str]) -> list[SnapshotOwner]:
        owners: list[SnapshotOwner] = []
        for service in self.app.services.values():
            provider = getattr(service, "retention_owners", None)
            if provider is not None:
                owners.extend(await provider(datasets))
        return owners

    async def _retention(self, now: datetime) -> None:
        """Local retention over every enabled task's tree. Failures are logged: a retention problem must
        not fail the snapshot that was just taken, and the next run tries again."""
        async with self._retention_lock:
            try:
                tasks = [PeriodicTask.from_entry(e) for e in await self.stored() if e["enabled"]]
                extra = await self._extra_owners([root for root, _ in retention_roots(tasks)])
                report = await run_retention(self.zfs(), tasks, extra, now, self.removal_date_property_name)
            except Exception:
                logger.exception("Snapshot retention failed")
                return
        for name in report.destroyed:
            logger.info("Retention destroyed %s", name)
            publish_snapshot_event(self.app, "REMOVED", name)
        for name, reason in report.refused.items():
            logger.warning("Retention could not destroy %s: %s", name, reason)
        for dataset, reason in report.skipped_datasets.items():
            logger.warning("Retention skipped %s: %s", dataset, reason)


def _describe(result: TakeResult) -> str:
    if result.dropped_empty:
        return "Nothing changed since the previous snapshot: the empty snapshot was not kept"
    count = len(result.snapshots)
    return f"Took snapshot {result.snapshots[0]}" + (f" and {count - 1} more" if count > 1 else "")
