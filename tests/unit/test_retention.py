"""Retention: destroy only what some owner wants gone and nobody retains; never held, never the last."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.snapshots.naming import ParsedName, format_snapshot_name, parse_snapshot_name
from middlewared_plugin.snapshots.retention import (
    PeriodicSnapshotTaskOwner,
    SnapshotInfo,
    Vote,
    lifetime_delta,
    removal_date_property_name,
    snapshots_to_destroy,
)

SCHEMA = "auto-%Y-%m-%d_%H-%M"
NOW = datetime(2024, 6, 15, 12, 0)
PROP = removal_date_property_name("0123456789abcdef")


def hourly(dataset: str = "tank/data", hours: int = 1, **kw) -> PeriodicSnapshotTaskOwner:
    return PeriodicSnapshotTaskOwner(dataset, SCHEMA, hours, "HOUR", schedule=Schedule(minute="0"), **kw)


def snap(when: datetime, dataset: str = "tank/data", **kw) -> SnapshotInfo:
    return SnapshotInfo(dataset, format_snapshot_name(SCHEMA, when), **kw)


def names(result) -> list[str]:
    return sorted(s.full_name for s in result.destroy)


def test_expired_snapshots_are_destroyed_and_younger_ones_kept():
    snaps = [snap(NOW - timedelta(hours=h)) for h in (0, 1, 2, 3)]
    result = snapshots_to_destroy([hourly(hours=2)], snaps, NOW)
    # Retained while time > now - lifetime: 0h and 1h old stay, 2h and 3h old go.
    assert names(result) == sorted(s.full_name for s in snaps[2:])


def test_the_newest_snapshot_of_a_schema_survives_even_when_expired():
    snaps = [snap(NOW - timedelta(days=d)) for d in (5, 6, 7)]
    result = snapshots_to_destroy([hourly()], snaps, NOW)
    assert names(result) == sorted(s.full_name for s in snaps[1:])


def test_held_snapshots_are_never_destroyed():
    snaps = [snap(NOW - timedelta(days=3), held=True), snap(NOW - timedelta(days=2)), snap(NOW)]
    assert names(snapshots_to_destroy([hourly()], snaps, NOW)) == [snaps[1].full_name]


def test_a_longer_lived_task_with_the_same_schema_retains_what_it_claims():
    # hourly kept 1 hour + every-2-hours kept 1 day: odd hours go, even hours stay.
    two_hourly = PeriodicSnapshotTaskOwner("tank/data", SCHEMA, 1, "DAY", schedule=Schedule(minute="0", hour="*/2"))
    snaps = [snap(NOW - timedelta(hours=h)) for h in range(0, 6)]
    result = snapshots_to_destroy([hourly(), two_hourly], snaps, NOW)
    assert names(result) == sorted(s.full_name for s in snaps if s.name[-5:-3] in ("11", "09", "07"))


def test_snapshots_outside_the_schedule_are_not_claimed():
    manual = snap(NOW.replace(minute=17) - timedelta(days=3))
    scheduled = snap(NOW - timedelta(days=3))
    assert names(snapshots_to_destroy([hourly()], [manual, scheduled, snap(NOW)], NOW)) == [scheduled.full_name]


def test_tree_ownership_follows_recursive_and_exclude():
    owner = hourly("tank", recursive=True, exclude=["tank/skip"])
    old = NOW - timedelta(days=2)
    snaps = [snap(old, d) for d in ("tank", "tank/a", "tank/skip", "tank/skip/x", "other")]
    snaps += [snap(NOW, d) for d in ("tank", "tank/a", "tank/skip", "tank/skip/x", "other")]
    assert names(snapshots_to_destroy([owner], snaps, NOW)) == [f"tank/a@{snaps[0].name}", f"tank@{snaps[0].name}"]
    assert not hourly("tank").owns_dataset("tank/a")


def test_removal_date_overrides_the_task_lifetime():
    keep_longer = snap(NOW - timedelta(days=3), properties={PROP: "2030-01-01T00:00:00"})
    expire_now = snap(NOW - timedelta(minutes=30), properties={PROP: "2024-06-15T11:00:00"})
    bad_date = snap(NOW - timedelta(days=4), properties={PROP: "not-a-date"})
    snaps = [keep_longer, expire_now, bad_date, snap(NOW)]
    result = snapshots_to_destroy([hourly()], snaps, NOW, removal_date_property=PROP)
    # The property decides for its snapshots; an unparseable one falls back to the task's lifetime.
    assert names(result) == sorted([expire_now.full_name, bad_date.full_name])


def test_removal_date_applies_to_snapshots_no_task_owns():
    foreign = SnapshotInfo("tank/data", "manual-keep", properties={PROP: "2024-06-01T00:00:00"})
    future = SnapshotInfo("tank/data", "manual-later", properties={PROP: "2024-07-01T00:00:00"})
    assert names(snapshots_to_destroy([], [foreign, future], NOW, removal_date_property=PROP)) == [
        foreign.full_name
    ]


@dataclass(frozen=True)
class RetainNames:
    """What a replication owner will be: retains exact names (unsent, last common), never destroys."""

    keep: frozenset[str]
    naming_schemas: frozenset[str] | None = None
    yields_to_removal_date: bool = False

    def vote(self, snapshot: SnapshotInfo, parsed: ParsedName | None, now: datetime) -> Vote | None:
        return Vote.RETAIN if snapshot.full_name in self.keep else None


def test_an_owner_retaining_a_snapshot_vetoes_its_destruction_even_past_a_removal_date():
    base = snap(NOW - timedelta(days=3), properties={PROP: "2024-01-01T00:00:00"})
    unsent = snap(NOW - timedelta(days=2))
    result = snapshots_to_destroy(
        [hourly(), RetainNames(frozenset([base.full_name, unsent.full_name]))],
        [base, unsent, snap(NOW)], NOW, removal_date_property=PROP,
    )
    assert result.destroy == []


def test_ambiguous_names_skip_the_dataset():
    owners = [
        PeriodicSnapshotTaskOwner("tank/data", "%Y-%m-%d-%H-%M", 1, "HOUR"),
        PeriodicSnapshotTaskOwner("tank/data", "%Y-%d-%m-%H-%M", 1, "HOUR"),
    ]
    snaps = [SnapshotInfo("tank/data", "2020-01-02-00-00"), SnapshotInfo("tank/data", "2020-01-01-00-00")]
    result = snapshots_to_destroy(owners, snaps, NOW)
    assert result.destroy == []
    assert "parsed ambiguously" in result.skipped_datasets["tank/data"]


def test_lifetime_units_use_calendar_months_and_years():
    start = datetime(2024, 1, 31)
    assert start + lifetime_delta(1, "MONTH") == datetime(2024, 2, 29)
    assert start + lifetime_delta(2, "WEEK") == datetime(2024, 2, 14)
    assert start + lifetime_delta(1, "YEAR") == datetime(2025, 1, 31)


def test_schedule_window_wraps_midnight():
    night = Schedule.from_api({"minute": "0", "begin": "22:00", "end": "02:00"})
    assert night.matches(datetime(2024, 1, 1, 23, 0))
    assert night.matches(datetime(2024, 1, 1, 1, 0))
    assert not night.matches(datetime(2024, 1, 1, 12, 0))
    assert not night.matches(datetime(2024, 1, 1, 23, 30))


# ------------------------------------------------------------------------------------ properties

hours_ago = st.lists(st.integers(min_value=0, max_value=24 * 60), min_size=1, max_size=30, unique=True)
lifetimes = st.integers(min_value=1, max_value=48)


def _case(ages: list[int], held: list[bool]) -> list[SnapshotInfo]:
    return [snap(NOW - timedelta(hours=a), held=h) for a, h in zip(ages, held, strict=False)]


@given(ages=hours_ago, lifetime=lifetimes, held=st.lists(st.booleans(), min_size=30, max_size=30))
def test_retention_invariants(ages: list[int], lifetime: int, held: list[bool]):
    snaps = _case(ages, held)
    owner = hourly(hours=lifetime)
    doomed = snapshots_to_destroy([owner], snaps, NOW).destroy

    assert not any(s.held for s in doomed)
    assert len(doomed) < len(snaps)  # the newest always survives
    newest = max(snaps, key=lambda s: parse_snapshot_name(s.name, SCHEMA).datetime)
    assert newest not in doomed
    for s in doomed:  # only expired snapshots go
        assert owner.vote(s, parse_snapshot_name(s.name, SCHEMA), NOW) is Vote.DESTROY
    for s in snaps:  # every expired, unheld snapshot but the newest goes
        if s is not newest and not s.held and owner.vote(s, parse_snapshot_name(s.name, SCHEMA), NOW) is Vote.DESTROY:
            assert s in doomed


@given(ages=hours_ago, lifetime=lifetimes, keep=st.sets(st.integers(min_value=0, max_value=29)))
def test_adding_an_owner_never_destroys_more(ages: list[int], lifetime: int, keep: set[int]):
    snaps = _case(ages, [False] * len(ages))
    kept = frozenset(snaps[i].full_name for i in keep if i < len(snaps))
    alone = {s.full_name for s in snapshots_to_destroy([hourly(hours=lifetime)], snaps, NOW).destroy}
    both = {s.full_name for s in snapshots_to_destroy([hourly(hours=lifetime), RetainNames(kept)], snaps, NOW).destroy}
    assert both <= alone
    assert not both & kept
