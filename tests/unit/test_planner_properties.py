"""Properties of the replication planner, checked by applying plans to a simulated target.

The simulator below follows ZFS's rules for each step (an incremental stream must start from the
target's newest snapshot, a full stream cannot land on a dataset that has snapshots, `-I` delivers every
snapshot in between, ...) and records every snapshot that disappears. It is test code on purpose: the
package only plans, and the simulator must not trust the plan's own `arrives` or `destroys`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from middlewared_plugin.replication.listing import DatasetInfo, Listing, ResumeToken, SnapshotInfo
from middlewared_plugin.replication.plan import (
    CreateParents,
    DestroySnapshots,
    DiscardResumeToken,
    FullSend,
    IncrementalSend,
    Mount,
    Plan,
    Resume,
    Rollback,
    SetReadonly,
)
from middlewared_plugin.replication.planner import ReplicationSpec, RetentionPolicy, plan_replication

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def selected(name: str) -> bool:
    return name.startswith("auto")


# --- the simulator -------------------------------------------------------------------------------

@dataclass
class Target:
    """One side's state: dataset -> [(snapshot name, guid)] oldest first, plus resume tokens."""

    datasets: dict[str, list[tuple[str, int]]]
    tokens: dict[str, ResumeToken] = field(default_factory=dict)
    removed: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, listing: Listing) -> Target:
        return cls({d.name: [(s.name, s.guid) for s in d.ordered_snapshots()] for d in listing.datasets.values()},
                   {d.name: d.resume_token for d in listing.datasets.values() if d.resume_token})

    def parent_exists(self, name: str) -> bool:
        parent = name.rpartition("/")[0]
        return parent in self.datasets


def apply(plan: Plan, source: Listing, target: Target) -> None:
    """Run the runnable dataset plans the way ZFS would, asserting every precondition ZFS enforces."""
    for d in plan.datasets:
        if not d.runnable or (d.depends_on and d.depends_on not in target.datasets):
            continue
        src = source.get(d.source)
        assert src is not None
        order = [(s.name, s.guid) for s in src.ordered_snapshots()]
        by_guid = {g: n for n, g in order}
        for step in d.steps:
            if isinstance(step, CreateParents):
                for name in step.datasets:
                    assert target.parent_exists(name), name
                    target.datasets.setdefault(name, [])
            elif isinstance(step, DiscardResumeToken):
                assert target.tokens.pop(step.dataset).token == step.token
            elif isinstance(step, Resume):
                token = target.tokens.pop(step.target)
                snaps = target.datasets[step.target]
                assert (snaps[-1][1] if snaps else None) == token.fromguid  # what `zfs recv` checks
                snaps.append((by_guid[token.toguid], token.toguid))
            elif isinstance(step, DestroySnapshots):
                snaps = target.datasets[step.dataset]
                for name in step.snapshots:
                    (victim,) = [s for s in snaps if s[0] == name]
                    snaps.remove(victim)
                    target.removed.append((step.dataset, name))
            elif isinstance(step, Rollback):
                snaps = target.datasets[step.dataset]
                at = [n for n, _ in snaps].index(step.snapshot)
                later = snaps[at + 1:]
                assert tuple(n for n, _ in later) == step.destroys
                del snaps[at + 1:]
                target.removed += [(step.dataset, n) for n, _ in later]
            elif isinstance(step, FullSend):
                if step.target in target.datasets:
                    assert step.receive.force and not target.datasets[step.target]  # "destination has snapshots"
                else:
                    assert target.parent_exists(step.target)
                names = [n for n, _ in order]
                upto = names.index(step.snapshot)
                arrived = order[:upto + 1] if step.send.replicate else [order[upto]]
                assert tuple(n for n, _ in arrived) == step.arrives
                target.datasets[step.target] = list(arrived)
            elif isinstance(step, IncrementalSend):
                snaps = target.datasets[step.target]
                base = dict(order)[step.base]
                assert snaps and snaps[-1] == (step.base, base), "the stream must start at the newest snapshot"
                names = [n for n, _ in order]
                lo, hi = names.index(step.base), names.index(step.snapshot)
                assert lo < hi
                arrived = order[lo + 1:hi + 1] if step.intermediates else [order[hi]]
                assert tuple(n for n, _ in arrived) == step.arrives
                snaps += arrived
            elif isinstance(step, Mount):
                # Mounting never changes snapshots; its reverts roll back to the newest one, destroying nothing.
                assert step.dataset in target.datasets
                for revert in step.reverts:
                    assert target.datasets[revert.dataset][-1][0] == revert.snapshot and not revert.destroys
            else:
                assert isinstance(step, SetReadonly) and step.dataset in target.datasets


# --- strategies ----------------------------------------------------------------------------------

@st.composite
def source_snapshots(draw, min_size: int = 0) -> tuple[SnapshotInfo, ...]:
    kinds = draw(st.lists(st.sampled_from(["auto", "auto", "manual"]), min_size=min_size, max_size=9))
    return tuple(SnapshotInfo(f"{k}-{i}", 1000 + i, 10 * (i + 1), referenced=100, written=i)
                 for i, k in enumerate(kinds))


@st.composite
def scenario(draw):
    """A source dataset and a target that is some mix of replica, gaps, local snapshots and clashes."""
    src = draw(source_snapshots())
    exists = draw(st.booleans())
    target_snaps: list[SnapshotInfo] = []
    token = None
    if exists:
        kept = sorted(draw(st.sets(st.sampled_from(range(len(src))), max_size=len(src)))) if src else []
        chosen: list[tuple[str, int]] = [(src[i].name, src[i].guid) for i in kept]
        for j, (pos, kind) in enumerate(draw(st.lists(
                st.tuples(st.integers(0, 20), st.sampled_from(["local", "auto-local", "clash"])), max_size=3))):
            free = [s.name for s in src if s.name not in {n for n, _ in chosen}]
            if kind == "clash" and free:
                extra = (draw(st.sampled_from(free)), 5000 + j)
            else:
                extra = (f"{kind.replace('clash', 'local')}-x{j}", 5000 + j)
            chosen.insert(min(pos, len(chosen)), extra)
        target_snaps = [SnapshotInfo(n, g, 100 + i) for i, (n, g) in enumerate(chosen)]
        if draw(st.booleans()) and src:
            fromguid = target_snaps[-1].guid if target_snaps and draw(st.booleans()) else None
            token = ResumeToken("1-tok", draw(st.sampled_from([s.guid for s in src] + [None, 7])), fromguid)
    target = [DatasetInfo("dst")]
    if exists:
        target.append(DatasetInfo("dst/b", snapshots=tuple(target_snaps), resume_token=token, readonly=True,
                                  referenced=draw(st.sampled_from([10, 10**9])),
                                  written=draw(st.sampled_from([0, 0, 512]))))
    retention_policy = draw(st.sampled_from(list(RetentionPolicy)))
    expired = draw(st.sets(st.sampled_from([s.name for s in target_snaps] or ["none"])))
    spec = ReplicationSpec(("src/a",), "dst/b", allow_from_scratch=draw(st.booleans()),
                           allow_rollback=draw(st.booleans()), retention_policy=retention_policy)
    return spec, Listing.of([DatasetInfo("src/a", snapshots=src)]), Listing.of(target), expired


def plan_of(spec: ReplicationSpec, source: Listing, target: Listing, expired: set[str] = frozenset()) -> Plan:
    return plan_replication(spec, source, target, NOW, select=selected,
                            retention=lambda names, now: {n for n in names if n in expired})


# --- properties ----------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(scenario())
def test_the_plan_never_destroys_a_snapshot_it_does_not_list(case):
    spec, source, target, expired = case
    plan = plan_of(spec, source, target, expired)
    state = Target.of(target)
    apply(plan, source, state)
    before = {(d, n) for d, snaps in Target.of(target).datasets.items() for n, _ in snaps}
    after = {(d, n) for d, snaps in state.datasets.items() for n, _ in snaps}
    listed = set(plan.destroys())
    assert before - after <= listed
    assert set(state.removed) == listed if plan.ok else set(state.removed) <= listed
    assert listed <= before  # it only ever lists snapshots that exist


@settings(max_examples=400, deadline=None)
@given(scenario())
def test_a_runnable_plan_leaves_the_target_with_every_selected_snapshot_after_the_base_in_order(case):
    spec, source, target, expired = case
    plan = plan_of(spec, source, target, expired)
    (d,) = plan.datasets
    if not d.runnable:
        return
    state = Target.of(target)
    apply(plan, source, state)
    order = [(s.name, s.guid) for s in source.get("src/a").ordered_snapshots()]
    resumed = [s.snapshot for s in d.steps if isinstance(s, Resume)]
    start = [n for n, _ in order].index(d.base) + 1 if d.base else 0
    expected = [x for x in order[start:] if selected(x[0])]
    final = state.datasets["dst/b"]
    assert final[len(final) - len(expected):] == expected
    if d.base:
        assert (d.base, dict(order)[d.base]) in final
        assert resumed or d.base in {s.name for s in target.get("dst/b").snapshots}


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_the_base_is_on_both_sides_with_the_same_guid(case):
    spec, source, target, expired = case
    (d,) = plan_of(spec, source, target, expired).datasets
    if d.base is None:
        return
    src = {s.name: s.guid for s in source.get("src/a").snapshots}
    tgt = {s.name: s.guid for s in target.get("dst/b").snapshots}
    resumed = {s.snapshot for s in d.steps if isinstance(s, Resume)}
    assert d.base in src
    assert tgt.get(d.base) == src[d.base] or d.base in resumed
    token = target.get("dst/b").resume_token
    if d.base in resumed:
        assert token is not None and token.toguid == src[d.base]


@st.composite
def source_tree(draw):
    """A root with up to three descendants, each with its own snapshots."""
    names = ["src/a"] + draw(st.lists(st.sampled_from(["src/a/x", "src/a/y", "src/a/x/z"]), unique=True))
    return Listing.of([DatasetInfo(n, snapshots=draw(source_snapshots(min_size=1 if n == "src/a" else 0)))
                       for n in names])


@settings(max_examples=300, deadline=None)
@given(source_tree())
def test_sending_to_an_empty_target_reproduces_the_selected_snapshots_in_order(source):
    spec = ReplicationSpec(("src/a",), "dst/b", recursive=True)
    empty = Listing.of([DatasetInfo("dst")])
    plan = plan_of(spec, source, empty)
    assert plan.destroys() == []
    state = Target.of(empty)
    apply(plan, source, state)
    for d in plan.datasets:
        expected = [(s.name, s.guid) for s in source.get(d.source).ordered_snapshots() if selected(s.name)]
        if d.runnable:
            assert state.datasets[d.target] == expected
        else:  # only a dataset without any selected snapshot (or below one) is left out
            assert d.skipped or [c.code for c in d.conflicts] == ["NO_SELECTED_SNAPSHOTS"]
            assert not expected or d.skipped.startswith("its parent")
