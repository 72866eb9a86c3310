"""The periodic snapshot executor: take a task's snapshot, drop it when empty, and run local retention.

It decides nothing about *when* (the scheduler and the service do) and nothing about *what to destroy*
(`retention.snapshots_to_destroy` does); it runs those decisions against one host's ZFS.

Empty snapshots (`allow_empty: false`): a snapshot is empty when nothing was written to its dataset since
the previous snapshot. Where ZFS has the `written` property that is exactly `written == 0`. zfs-fuse has
neither `written` nor `zfs diff`, so there the rule is derived from copy-on-write: any change rewrites the
dataset's root block, so the previous snapshot P gains unique space (`used > 0`) once the new snapshot N
exists, or `referenced` differs. That holds only if P's root block is not shared with P's own predecessor
Q, which is certain when Q has unique space or a different `referenced`, or when P is the first snapshot;
when it cannot be shown the snapshot is kept (a kept empty snapshot costs nothing, a dropped full one
loses a restore point). A recursive snapshot is empty only when it is empty on every dataset (zettarepl).
"""
from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from middlewared_plugin.errors import CallError
from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.snapshots.naming import format_snapshot_name, parse_snapshot_name
from middlewared_plugin.snapshots.retention import (
    PeriodicSnapshotTaskOwner,
    SnapshotInfo,
    SnapshotOwner,
    lifetime_delta,
    snapshots_to_destroy,
)
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.types import Snapshot, is_same_or_descendant, split_snapshot_name

#: Lifetimes so long that adding them to a date overflows are treated as this (effectively forever).
_FOREVER = (5000, "YEAR")


@dataclass(frozen=True)
class PeriodicTask:
    """A periodic snapshot task as the executor sees it (built from a `pool.snapshottask` entry)."""

    id: int
    dataset: str
    naming_schema: str
    recursive: bool = False
    exclude: tuple[str, ...] = ()
    lifetime_value: int = 2
    lifetime_unit: str = "WEEK"
    allow_empty: bool = True
    enabled: bool = True
    schedule: Schedule = field(default_factory=Schedule)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> PeriodicTask:
        return cls(
            id=entry["id"], dataset=entry["dataset"], naming_schema=entry["naming_schema"],
            recursive=entry["recursive"], exclude=tuple(entry["exclude"]),
            lifetime_value=entry["lifetime_value"], lifetime_unit=entry["lifetime_unit"],
            allow_empty=entry["allow_empty"], enabled=entry["enabled"],
            schedule=Schedule.from_api(entry["schedule"]),
        )

    def owner(self) -> PeriodicSnapshotTaskOwner:
        value, unit = self.lifetime_value, self.lifetime_unit
        try:
            datetime(2000, 1, 1) + lifetime_delta(value, unit)
        except (OverflowError, ValueError):
            value, unit = _FOREVER
        return PeriodicSnapshotTaskOwner(
            dataset=self.dataset, naming_schema=self.naming_schema, lifetime_value=value, lifetime_unit=unit,
            recursive=self.recursive, exclude=tuple(self.exclude), schedule=self.schedule,
        )

    def snapshot_name(self, when: datetime) -> str:
        return format_snapshot_name(self.naming_schema, when)


def taking_order(tasks: Sequence[PeriodicTask]) -> list[PeriodicTask]:
    """zettarepl's order: recursive before non-recursive, without excludes before with, then by dataset,
    so that a recursive parent's snapshot already covers a child task sharing its name."""
    return sorted(tasks, key=lambda t: (not t.recursive, bool(t.exclude), t.dataset, t.id))


class SnapshotAlreadyExists(CallError):
    def __init__(self, full_name: str):
        super().__init__(
            f"Snapshot {full_name} already existed. This probably happened because the task already ran on "
            "schedule.", errno.EEXIST,
        )


@dataclass(frozen=True)
class TakeResult:
    #: Full names of the snapshots this task now has for this run (empty when an empty one was dropped).
    snapshots: list[str]
    #: True when `allow_empty` is off and nothing had changed, so the new snapshots were destroyed again.
    dropped_empty: bool = False
    #: True when another task of the same run had already created exactly these snapshots.
    shared: bool = False


async def take_snapshot(
    zfs: Zfs,
    task: PeriodicTask,
    when: datetime,
    taken: set[str] | None = None,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> TakeResult:
    """Take `task`'s snapshot named for `when` in one transaction group.

    `taken` collects full names created during one scheduler minute: a task whose snapshots another task
    already created in that minute (a recursive parent with the same schema) succeeds without a command.
    `on_start` is awaited once the snapshot is known not to exist yet, just before it is taken (so a
    refused run never shows as started).
    """
    name = task.snapshot_name(when)
    root = f"{task.dataset}@{name}"
    if taken is not None and root in taken:
        return TakeResult([root], shared=True)
    if await zfs.exists(root):
        raise SnapshotAlreadyExists(root)
    if on_start is not None:
        await on_start()
    try:
        created = await zfs.create_snapshots(task.dataset, name, recursive=task.recursive, exclude=task.exclude)
    except CallError:
        if not await zfs.exists(task.dataset):
            raise CallError(f"Dataset {task.dataset} does not exist", errno.ENOENT) from None
        raise
    if taken is not None:
        taken.update(created)
    if task.allow_empty:
        return TakeResult(created)
    listed = await zfs.list_snapshots(task.dataset, recursive=task.recursive)
    if all(snapshot_is_empty(full, listed) for full in created):
        result = await zfs.destroy_snapshots(created)
        if result.skipped:
            # Someone held or cloned it in between: it stays, and it is the task's snapshot.
            return TakeResult(created)
        if taken is not None:
            taken.difference_update(created)
        return TakeResult([], dropped_empty=True)
    return TakeResult(created)


def snapshot_is_empty(full_name: str, listed: Sequence[Snapshot]) -> bool:
    """Whether nothing was written to the dataset between the previous snapshot and `full_name`
    (see the module docstring for the rule used without the `written` property)."""
    dataset, name = split_snapshot_name(full_name)
    chain = sorted((s for s in listed if s.dataset == dataset), key=lambda s: s.createtxg)
    index = next((i for i, s in enumerate(chain) if s.name == name), None)
    if index is None:
        return False
    new = chain[index]
    if new.written is not None:
        return new.written == 0
    if index == 0:
        return False
    previous = chain[index - 1]
    if previous.used > 0 or previous.referenced != new.referenced:
        return False
    if index == 1:
        return True
    before = chain[index - 2]
    return before.used > 0 or before.referenced != previous.referenced


@dataclass
class RetentionReport:
    destroyed: list[str] = field(default_factory=list)
    #: full name -> why ZFS refused (held, busy, cloned)
    refused: dict[str, str] = field(default_factory=dict)
    #: dataset -> why nothing there was considered (ambiguous names, dataset gone)
    skipped_datasets: dict[str, str] = field(default_factory=dict)


def retention_roots(tasks: Sequence[PeriodicTask]) -> list[tuple[str, bool]]:
    """(dataset, recursive) listings that cover every task's tree once."""
    recursive_roots = sorted({t.dataset for t in tasks if t.recursive})
    recursive_roots = [r for r in recursive_roots
                       if not any(o != r and is_same_or_descendant(r, o) for o in recursive_roots)]
    roots = [(r, True) for r in recursive_roots]
    for dataset in sorted({t.dataset for t in tasks if not t.recursive}):
        if not any(is_same_or_descendant(dataset, r) for r in recursive_roots):
            roots.append((dataset, False))
    return roots


async def list_for_retention(
    zfs: Zfs, roots: Sequence[tuple[str, bool]], removal_date_property: str,
) -> tuple[list[SnapshotInfo], dict[str, str]]:
    """Snapshots under the roots with their hold count and removal date; roots that vanished are reported."""
    snapshots: list[SnapshotInfo] = []
    missing: dict[str, str] = {}
    for root, recursive in roots:
        try:
            listed = await zfs.list_snapshots(root, recursive=recursive, user_properties=[removal_date_property])
        except CallError as e:
            if e.errno != errno.ENOENT:
                raise
            missing[root] = e.errmsg
            continue
        snapshots.extend(
            SnapshotInfo(s.dataset, s.name, held=s.held, properties=dict(s.user_properties)) for s in listed
        )
    return snapshots, missing


async def run_retention(
    zfs: Zfs,
    tasks: Sequence[PeriodicTask],
    extra_owners: Sequence[SnapshotOwner],
    now: datetime,
    removal_date_property: str,
) -> RetentionReport:
    """Destroy what the owners' votes condemn in the trees of `tasks` (enabled periodic tasks)."""
    report = RetentionReport()
    if not tasks:
        return report
    snapshots, report.skipped_datasets = await list_for_retention(zfs, retention_roots(tasks), removal_date_property)
    owners: list[SnapshotOwner] = [t.owner() for t in tasks]
    owners.extend(extra_owners)
    decision = snapshots_to_destroy(owners, snapshots, now, removal_date_property=removal_date_property)
    report.skipped_datasets.update(decision.skipped_datasets)
    if decision.destroy:
        result = await zfs.destroy_snapshots([s.full_name for s in decision.destroy])
        report.destroyed = list(result.destroyed)
        report.refused = dict(result.skipped)
    return report


def owned_snapshots(task: PeriodicTask, snapshots: Sequence[Snapshot]) -> set[str]:
    """Full names a task's retention covers: its schema's snapshots in its tree (schedule not considered,
    as TrueNAS's `*_will_change_retention_for`)."""
    owner = task.owner()
    return {
        s.full_name for s in snapshots
        if owner.owns_dataset(s.dataset) and parse_snapshot_name(s.name, task.naming_schema) is not None
    }


def removal_dates(task: PeriodicTask, full_names: Sequence[str]) -> dict[str, datetime]:
    """When each snapshot would expire under `task` (what fixating its retention writes down)."""
    owner = task.owner()
    dates = {}
    for full in full_names:
        _, name = split_snapshot_name(full)
        parsed = parse_snapshot_name(name, task.naming_schema)
        if parsed is not None:
            dates[full] = owner.expires_at(parsed)
    return dates
