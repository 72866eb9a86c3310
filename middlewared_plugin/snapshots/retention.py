"""Which snapshots to destroy: zettarepl's owner-voting model as a pure function.

Every *owner* (a periodic snapshot task today; replication tasks later) says, for the snapshots it
claims, whether it wants them gone or retained. A snapshot is destroyed only when some owner wants it
destroyed and no owner retains it, it carries no `zfs hold`, and it is not the newest snapshot of its
naming schema on its dataset (zettarepl spares the newest only when a schema would lose every snapshot;
sparing it always is simpler to state and keeps the latest incremental base).

A snapshot that carries the removal-date user property (`org.truenas:destroy_at_<hostid8>`, set when a
task's retention was "fixated") is decided by that date instead of by periodic snapshot tasks; owners
that protect data in flight (replication) still retain it. `now` and every time here are naive wall-clock
values of the configured timezone, like the times parsed from snapshot names.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Protocol

from dateutil.relativedelta import relativedelta

from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.snapshots.naming import AmbiguousSnapshotName, ParsedName, parse_snapshot_names
from middlewared_plugin.zfs.types import is_same_or_descendant

REMOVAL_DATE_PREFIX = "org.truenas:destroy_at_"


def removal_date_property_name(host_id: str) -> str:
    """TrueNAS's property name: `org.truenas:destroy_at_` + the first 8 characters of the host id."""
    return REMOVAL_DATE_PREFIX + host_id[:8]


@dataclass(frozen=True)
class SnapshotInfo:
    """What retention needs to know about one existing snapshot."""

    dataset: str
    name: str
    held: bool = False
    #: User properties read with the snapshot (only the removal-date one matters here).
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.dataset}@{self.name}"


class Vote(Enum):
    DESTROY = "destroy"
    RETAIN = "retain"


class SnapshotOwner(Protocol):
    """Something with an opinion about some snapshots.

    `naming_schemas` are the schemas whose snapshots it may claim (None: it claims by other means, e.g.
    replication owners that list exact names). `yields_to_removal_date` is True for owners whose opinion
    a removal-date property overrides (lifetime-based owners), False for owners protecting data.
    """

    naming_schemas: frozenset[str] | None
    yields_to_removal_date: bool

    def vote(self, snapshot: SnapshotInfo, parsed: ParsedName | None, now: datetime) -> Vote | None:
        """DESTROY, RETAIN, or None when this owner does not claim the snapshot."""


class LifetimeUnit(Enum):
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


_UNIT_DELTAS = {
    LifetimeUnit.HOUR: lambda n: relativedelta(hours=n),
    LifetimeUnit.DAY: lambda n: relativedelta(days=n),
    LifetimeUnit.WEEK: lambda n: relativedelta(weeks=n),
    # Calendar months and years, as ISO-8601 durations (P1M, P1Y) mean in zettarepl.
    LifetimeUnit.MONTH: lambda n: relativedelta(months=n),
    LifetimeUnit.YEAR: lambda n: relativedelta(years=n),
}


def lifetime_delta(value: int, unit: LifetimeUnit | str) -> relativedelta:
    return _UNIT_DELTAS[LifetimeUnit(unit)](value)


@dataclass(frozen=True)
class PeriodicSnapshotTaskOwner:
    """A periodic snapshot task: claims its schema's snapshots in its tree whose time fits its schedule,
    and retains them while younger than its lifetime."""

    dataset: str
    naming_schema: str
    lifetime_value: int
    lifetime_unit: LifetimeUnit | str
    recursive: bool = False
    exclude: Sequence[str] = ()
    schedule: Schedule = field(default_factory=Schedule)
    yields_to_removal_date: bool = True

    @property
    def naming_schemas(self) -> frozenset[str]:
        return frozenset([self.naming_schema])

    def owns_dataset(self, dataset: str) -> bool:
        if not self.recursive:
            return dataset == self.dataset
        return is_same_or_descendant(dataset, self.dataset) and not any(
            is_same_or_descendant(dataset, e) for e in self.exclude
        )

    def vote(self, snapshot: SnapshotInfo, parsed: ParsedName | None, now: datetime) -> Vote | None:
        if parsed is None or parsed.schema != self.naming_schema or not self.owns_dataset(snapshot.dataset):
            return None
        if not self.schedule.matches(parsed.datetime):
            return None
        return Vote.RETAIN if self.expires_at(parsed) > now.replace(second=0, microsecond=0) else Vote.DESTROY

    def expires_at(self, parsed: ParsedName) -> datetime:
        """When this task stops retaining a snapshot (shown as `retention` in snapshot queries)."""
        return parsed.datetime.replace(second=0, microsecond=0) + lifetime_delta(
            self.lifetime_value, self.lifetime_unit
        )


@dataclass(frozen=True)
class RemovalDateOwner:
    """Snapshots carrying the removal-date property are destroyed once that date has passed."""

    property_name: str
    naming_schemas: frozenset[str] | None = None
    yields_to_removal_date: bool = False

    def vote(self, snapshot: SnapshotInfo, parsed: ParsedName | None, now: datetime) -> Vote | None:
        when = parse_removal_date(snapshot.properties.get(self.property_name))
        if when is None:
            return None
        return Vote.DESTROY if when <= now else Vote.RETAIN


def parse_removal_date(value: str | None) -> datetime | None:
    """The property's ISO-8601 value (TrueNAS writes naive `2071-03-31T06:30:00`); None if unset or invalid."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=None)


@dataclass(frozen=True)
class RetentionResult:
    destroy: list[SnapshotInfo]
    #: dataset -> why it was skipped (ambiguous names): nothing there is destroyed.
    skipped_datasets: dict[str, str] = field(default_factory=dict)


def snapshots_to_destroy(
    owners: Iterable[SnapshotOwner],
    snapshots: Iterable[SnapshotInfo],
    now: datetime,
    *,
    removal_date_property: str | None = None,
) -> RetentionResult:
    """Decide what retention destroys. Pure: the caller lists snapshots and destroys the result."""
    now = now.replace(tzinfo=None)
    owners = list(owners)
    if removal_date_property:
        owners.append(RemovalDateOwner(removal_date_property))
    schemas = sorted({s for o in owners if o.naming_schemas for s in o.naming_schemas})

    by_dataset: dict[str, list[SnapshotInfo]] = defaultdict(list)
    for snap in snapshots:
        by_dataset[snap.dataset].append(snap)

    destroy: list[SnapshotInfo] = []
    skipped: dict[str, str] = {}
    for dataset, snaps in sorted(by_dataset.items()):
        try:
            parsed = parse_snapshot_names((s.name for s in snaps), schemas)
        except AmbiguousSnapshotName as e:
            skipped[dataset] = str(e)
            continue
        doomed = [s for s in snaps if _decide(owners, s, parsed.get(s.name), now, removal_date_property)]
        destroy.extend(_keep_newest_per_schema(snaps, doomed, parsed))
    return RetentionResult(destroy, skipped)


def _decide(
    owners: Sequence[SnapshotOwner], snap: SnapshotInfo, parsed: ParsedName | None, now: datetime,
    removal_date_property: str | None,
) -> bool:
    if snap.held:
        return False
    has_removal_date = bool(removal_date_property) and (
        parse_removal_date(snap.properties.get(removal_date_property or "")) is not None
    )
    votes = set()
    for owner in owners:
        if has_removal_date and owner.yields_to_removal_date:
            continue
        if owner.naming_schemas is not None and (parsed is None or parsed.schema not in owner.naming_schemas):
            continue
        vote = owner.vote(snap, parsed, now)
        if vote is not None:
            votes.add(vote)
    return Vote.DESTROY in votes and Vote.RETAIN not in votes


def _keep_newest_per_schema(
    snaps: Sequence[SnapshotInfo], doomed: Sequence[SnapshotInfo], parsed: Mapping[str, ParsedName],
) -> list[SnapshotInfo]:
    """Spare the newest snapshot of each schema: it is the latest incremental base a dataset has."""
    newest: dict[str, ParsedName] = {}
    for s in snaps:
        p = parsed.get(s.name)
        if p is not None and (p.schema not in newest or p.sort_key > newest[p.schema].sort_key):
            newest[p.schema] = p
    spared = {p.name for p in newest.values()}
    return [s for s in doomed if s.name not in spared]


__all__ = [
    "LifetimeUnit",
    "PeriodicSnapshotTaskOwner",
    "RemovalDateOwner",
    "RetentionResult",
    "SnapshotInfo",
    "SnapshotOwner",
    "Vote",
    "lifetime_delta",
    "parse_removal_date",
    "removal_date_property_name",
    "snapshots_to_destroy",
]
