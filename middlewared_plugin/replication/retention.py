"""Retention owners for replication, on top of the snapshot retention model (`snapshots.retention`).

- Target side: the task's `retention_policy`. SOURCE and NONE are rules the planner applies itself; CUSTOM
  is `custom_retention(...)`, the planner's `RetentionFn`: a selected target snapshot goes once the time in
  its name plus its lifetime has passed. `lifetimes` entries (longest first) give another lifetime to the
  snapshots whose time matches their cron schedule; the others get `lifetime_value`/`lifetime_unit`.
- Source side: `PendingSnapshotsOwner` retains every snapshot a push task still has to send, and the last
  common snapshot (the incremental base), so local retention never strands the target. Its snapshot set
  comes from a plan (`pending_snapshots`): exactly what the next run would send, plus the base.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from middlewared_plugin.replication.listing import Listing
from middlewared_plugin.replication.plan import Plan, Resume
from middlewared_plugin.replication.planner import RetentionFn, Selector
from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.snapshots.naming import ParsedName, parse_snapshot_names
from middlewared_plugin.snapshots.retention import SnapshotInfo, Vote, lifetime_delta


@dataclass(frozen=True)
class Lifetime:
    value: int
    unit: str
    schedule: Schedule | None = None  # None: the default lifetime

    def expires(self, when: datetime) -> datetime:
        return when.replace(second=0, microsecond=0) + lifetime_delta(self.value, self.unit)


def lifetimes_of(task: Mapping[str, Any]) -> list[Lifetime]:
    """The task's extra lifetimes, longest first, then its default lifetime."""
    extra = [
        Lifetime(int(e["lifetime_value"]), e["lifetime_unit"],
                 Schedule.from_api({"minute": "*", **(e.get("schedule") or {})}))
        for e in task.get("lifetimes") or []
    ]
    probe = datetime(2000, 1, 1)
    extra.sort(key=lambda lt: lt.expires(probe), reverse=True)
    return [*extra, Lifetime(int(task["lifetime_value"]), task["lifetime_unit"])]


def custom_retention(task: Mapping[str, Any], schemas: Sequence[str]) -> RetentionFn:
    """CUSTOM target retention: the names (among those given) whose lifetime has run out at `now`."""
    lifetimes = lifetimes_of(task)

    def doomed(names: Sequence[str], now: datetime) -> Set[str]:
        parsed = parse_snapshot_names(names, schemas)
        return {name for name, p in parsed.items() if _lifetime(lifetimes, p).expires(p.datetime) <= now}

    return doomed


def _lifetime(lifetimes: list[Lifetime], parsed: ParsedName) -> Lifetime:
    return next(lt for lt in lifetimes if lt.schedule is None or lt.schedule.matches(parsed.datetime))


@dataclass(frozen=True)
class PendingSnapshotsOwner:
    """Retains exactly the listed snapshots ("dataset@name"); claims no others."""

    retained: frozenset[str]
    naming_schemas: frozenset[str] | None = None
    yields_to_removal_date: bool = False

    def vote(self, snapshot: SnapshotInfo, parsed: ParsedName | None, now: datetime) -> Vote | None:
        return Vote.RETAIN if snapshot.full_name in self.retained else None


def pending_snapshots(plan: Plan, source: Listing, select: Selector) -> frozenset[str]:
    """Source snapshots a push task must keep: what `plan` would send, and each dataset's base.

    A dataset in conflict keeps every selected snapshot newer than its base (nothing can be sent until a
    person resolves it, and deleting them would lose what the target never got).
    """
    kept: set[str] = set()
    for d in plan.datasets:
        info = source.get(d.source)
        if info is None or d.skipped is not None:
            continue
        names: set[str] = {d.base} if d.base else set()
        if d.runnable:
            for s in d.sends:
                names.update(s.arrives)
                if isinstance(s, Resume):
                    names.add(s.snapshot)
        else:
            ordered = info.ordered_snapshots()
            start = next((i + 1 for i, s in enumerate(ordered) if s.name == d.base), 0)
            names.update(s.name for s in ordered[start:] if select(s.name))
        replicated = any(getattr(s, "send", None) is not None and s.send.replicate for s in d.sends)
        for ds in (source.tree(d.source) if replicated else [info]):
            present = {s.name for s in ds.snapshots}
            kept.update(f"{ds.name}@{n}" for n in names & present)
    return frozenset(kept)


def all_selected(source: Listing, roots: Iterable[str], select: Selector) -> frozenset[str]:
    """Every selected snapshot under `roots`: what to keep when the target cannot be listed."""
    return frozenset(f"{ds.name}@{s.name}" for root in roots for ds in source.tree(root)
                     for s in ds.snapshots if select(s.name))
