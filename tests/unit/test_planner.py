"""The replication planner, rule by rule, on hand-written listings."""
from __future__ import annotations

import json
import re
import zlib
from datetime import UTC, datetime

import pytest

from middlewared_plugin.replication.listing import DatasetInfo, DatasetType, Listing, ResumeToken, SnapshotInfo
from middlewared_plugin.replication.plan import (
    CreateParents,
    DestroyReason,
    DestroySnapshots,
    DiscardResumeToken,
    Diverged,
    EncryptionConflict,
    EncryptionMode,
    FullSend,
    IncrementalSend,
    Mount,
    NoCommonBase,
    NoSelectedSnapshots,
    ParentIsVolume,
    Plan,
    ReadonlyRequired,
    ReplicateChildMissingBase,
    Resume,
    Rollback,
    RollbackReason,
    SetReadonly,
    SourceMissing,
    TargetExists,
    TargetHasData,
    TargetModified,
    TargetTypeMismatch,
    UnrelatedSnapshot,
)
from middlewared_plugin.replication.planner import (
    ReadonlyPolicy,
    ReplicationSpec,
    RetentionPolicy,
    TargetEncryption,
    plan_replication,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AUTO = re.compile(r"auto-\d+")


def guid(name: str, salt: str = "") -> int:
    return zlib.crc32((salt + name).encode()) + 1


def snaps(*names: str, salt: str = "", txg0: int = 1) -> tuple[SnapshotInfo, ...]:
    """Snapshots in creation order; the same name and salt give the same guid on either side."""
    return tuple(SnapshotInfo(n, guid(n, salt), txg0 + i, referenced=1000, written=10)
                 for i, n in enumerate(names))


def fs(name: str, *snapshots: SnapshotInfo, **kwargs) -> DatasetInfo:
    return DatasetInfo(name, snapshots=tuple(snapshots), **kwargs)


def run(spec: ReplicationSpec, source: list[DatasetInfo], target: list[DatasetInfo],
        select=lambda n: AUTO.fullmatch(n) is not None, **kwargs) -> Plan:
    return plan_replication(spec, Listing.of(source), Listing.of(target), NOW, select=select, **kwargs)


def spec(**kwargs) -> ReplicationSpec:
    kwargs.setdefault("source_datasets", ("src/data",))
    kwargs.setdefault("target_dataset", "dst/backup")
    return ReplicationSpec(**kwargs)


def only(plan: Plan):
    assert len(plan.datasets) == 1
    return plan.datasets[0]


def sends(dataset_plan) -> list[tuple[str, str | None, str, tuple[str, ...]]]:
    """(kind, base, snapshot, arrives) per send step: the chain as a reader would describe it."""
    out = []
    for s in dataset_plan.sends:
        if isinstance(s, FullSend):
            out.append(("full", None, s.snapshot, s.arrives))
        elif isinstance(s, IncrementalSend):
            out.append(("-I" if s.intermediates else "-i", s.base, s.snapshot, s.arrives))
        else:
            out.append(("resume", None, s.snapshot, s.arrives))
    return out


# --- sending to a new target ----------------------------------------------------------------------

def test_new_target_gets_a_full_send_of_the_oldest_then_one_I_stream_of_the_rest():
    plan = run(spec(), [fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))], [fs("dst")])
    d = only(plan)
    assert plan.ok and d.base is None
    assert sends(d) == [("full", None, "auto-1", ("auto-1",)),
                        ("-I", "auto-1", "auto-3", ("auto-2", "auto-3"))]
    assert not d.sends[0].receive.force  # nothing on the target to overwrite
    assert plan.snapshots_total == 3


def test_missing_target_parents_are_created_top_down_but_never_the_pool():
    d = only(run(spec(target_dataset="dst/a/b/c"), [fs("src/data", *snaps("auto-1"))], [fs("dst")]))
    assert d.steps[0] == CreateParents(("dst/a", "dst/a/b"))
    assert isinstance(d.steps[1], FullSend) and d.steps[1].target == "dst/a/b/c"


def test_existing_parent_is_not_created():
    d = only(run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst")]))
    assert not any(isinstance(s, CreateParents) for s in d.steps)


def test_root_without_selected_snapshots_is_a_conflict_naming_the_dataset():
    plan = run(spec(), [fs("src/data", *snaps("manual-1"))], [fs("dst")])
    assert only(plan).conflicts == (NoSelectedSnapshots("src/data"),)
    assert "does not have any matching snapshots" in plan.conflicts[0].message
    assert not plan.ok


def test_source_that_does_not_exist_is_a_conflict():
    plan = run(spec(), [], [fs("dst")])
    assert plan.conflicts == (SourceMissing("src/data"),)


# --- incremental base -----------------------------------------------------------------------------

def test_base_is_the_newest_snapshot_on_both_sides_by_name_and_guid():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3", "auto-4"))
    target = fs("dst/backup", *snaps("auto-1", "auto-2", txg0=50), readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.base == "auto-2"
    assert sends(d) == [("-I", "auto-2", "auto-4", ("auto-3", "auto-4"))]


def test_base_order_comes_from_createtxg_not_from_names():
    source = fs("src/data", SnapshotInfo("auto-9", 1, 10), SnapshotInfo("auto-1", 2, 20),
                SnapshotInfo("auto-5", 3, 30))
    target = fs("dst/backup", SnapshotInfo("auto-9", 1, 5), SnapshotInfo("auto-1", 2, 6), readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.base == "auto-1"
    assert sends(d) == [("-i", "auto-1", "auto-5", ("auto-5",))]


def test_same_named_snapshot_with_another_guid_is_not_a_base_but_an_unrelated_snapshot():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", *snaps("auto-2", salt="other"), readonly=True)
    plan = run(spec(), [source], [fs("dst"), target])
    d = only(plan)
    assert d.base is None and not d.steps
    assert {type(c) for c in d.conflicts} == {NoCommonBase, UnrelatedSnapshot}
    unrelated = next(c for c in d.conflicts if isinstance(c, UnrelatedSnapshot))
    assert unrelated.snapshot == "auto-2" and unrelated.target_guid == guid("auto-2", "other")
    assert "dst/backup@auto-2" in unrelated.message


def test_unrelated_snapshot_older_than_the_base_does_not_block_replication():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    target = fs("dst/backup", *snaps("auto-1", salt="other"), *snaps("auto-2", txg0=9), readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.runnable and d.base == "auto-2"
    assert sends(d) == [("-i", "auto-2", "auto-3", ("auto-3",))]


def test_up_to_date_target_has_no_sends():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", *snaps("auto-1", "auto-2"), readonly=True)
    plan = run(spec(), [source], [fs("dst"), target])
    assert plan.ok and only(plan).steps == () and plan.snapshots_total == 0


# --- selection and batching -----------------------------------------------------------------------

def test_unselected_snapshots_between_are_stepped_over_with_i_and_runs_use_I():
    source = fs("src/data", *snaps("auto-1", "auto-2", "manual-a", "auto-3", "auto-4", "auto-5",
                                   "manual-b", "auto-6"))
    target = fs("dst/backup", *snaps("auto-1"), readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert sends(d) == [
        ("-i", "auto-1", "auto-2", ("auto-2",)),
        ("-i", "auto-2", "auto-3", ("auto-3",)),
        ("-I", "auto-3", "auto-5", ("auto-4", "auto-5")),
        ("-i", "auto-5", "auto-6", ("auto-6",)),
    ]


def test_an_unselected_common_snapshot_can_still_be_the_base():
    source = fs("src/data", *snaps("auto-1", "manual-a", "auto-2"))
    target = fs("dst/backup", *snaps("auto-1", "manual-a"), readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.base == "manual-a" and sends(d) == [("-i", "manual-a", "auto-2", ("auto-2",))]


# --- targets that exist without a base ------------------------------------------------------------

def test_target_with_snapshots_but_no_common_base_is_a_conflict_listing_them():
    target = fs("dst/backup", *snaps("old-1", "old-2", salt="t"), readonly=True)
    plan = run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst"), target])
    (conflict,) = plan.conflicts
    assert isinstance(conflict, NoCommonBase) and conflict.snapshots == ("old-1", "old-2")
    assert "allow from scratch" in conflict.message and plan.destroys() == []


def test_allow_from_scratch_destroys_every_listed_target_snapshot_then_forces_a_full_send():
    target = fs("dst/backup", *snaps("old-1", "old-2", salt="t"), readonly=True)
    plan = run(spec(allow_from_scratch=True), [fs("src/data", *snaps("auto-1", "auto-2"))],
               [fs("dst"), target])
    d = only(plan)
    assert d.steps[0] == DestroySnapshots("dst/backup", ("old-1", "old-2"), DestroyReason.FROM_SCRATCH)
    assert plan.destroys() == [("dst/backup", "old-1"), ("dst/backup", "old-2")]
    full = d.steps[1]
    assert isinstance(full, FullSend) and full.receive.force
    assert isinstance(d.steps[-2], SetReadonly)  # the overwritten target is made read-only again


def test_existing_empty_target_without_snapshots_is_overwritten_by_a_forced_full_send():
    target = fs("dst/backup", referenced=100 * 1024)
    d = only(run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst"), target]))
    assert d.runnable and isinstance(d.steps[0], FullSend) and d.steps[0].receive.force


def test_existing_target_without_snapshots_but_holding_data_is_a_conflict():
    target = fs("dst/backup", referenced=50 * 1024 * 1024)
    plan = run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst"), target])
    assert plan.conflicts == (TargetHasData("dst/backup", 50 * 1024 * 1024),)
    unknown = run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst"), fs("dst/backup")])
    assert unknown.conflicts == (TargetHasData("dst/backup", None),)


def test_only_from_scratch_refuses_an_existing_target():
    target = fs("dst/backup", *snaps("auto-1"), readonly=True)
    plan = run(spec(only_from_scratch=True), [fs("src/data", *snaps("auto-1", "auto-2"))], [fs("dst"), target])
    assert plan.conflicts == (TargetExists("dst/backup"),)


def test_target_of_another_type_is_a_conflict():
    source = DatasetInfo("src/data", DatasetType.VOLUME, snaps("auto-1"))
    plan = run(spec(), [source], [fs("dst"), fs("dst/backup")])
    assert plan.conflicts == (TargetTypeMismatch("dst/backup", "volume", "filesystem"),)


def test_target_below_a_volume_is_a_conflict():
    plan = run(spec(target_dataset="dst/vol/x"), [fs("src/data", *snaps("auto-1"))],
               [fs("dst"), DatasetInfo("dst/vol", DatasetType.VOLUME)])
    assert plan.conflicts == (ParentIsVolume("dst/vol/x", "dst/vol"),)


# --- diverged and modified targets ----------------------------------------------------------------

def test_target_snapshots_newer_than_the_base_are_a_diverged_conflict_naming_them():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    target = fs("dst/backup", *snaps("auto-1", "auto-2"), *snaps("local-1", salt="t", txg0=9), readonly=True)
    plan = run(spec(), [source], [fs("dst"), target])
    assert plan.conflicts == (Diverged("dst/backup", "auto-2", ("local-1",)),)
    assert "local-1" in plan.conflicts[0].message and "auto-2" in plan.conflicts[0].message


def test_allow_rollback_rolls_back_to_the_base_and_lists_what_it_destroys():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    target = fs("dst/backup", *snaps("auto-1", "auto-2"), *snaps("local-1", "local-2", salt="t", txg0=9),
                readonly=True)
    plan = run(spec(allow_rollback=True), [source], [fs("dst"), target])
    d = only(plan)
    assert d.steps[0] == Rollback("dst/backup", "auto-2", ("local-1", "local-2"))
    assert plan.destroys() == [("dst/backup", "local-1"), ("dst/backup", "local-2")]
    # The rollback is the explicit step: the receive after it is not forced, nor a second rollback planned.
    assert sends(d) == [("-i", "auto-2", "auto-3", ("auto-3",))] and not d.sends[0].receive.force
    assert d.sends[0].if_modified is None


def test_target_written_to_since_the_base_is_a_conflict_unless_rollback_is_allowed():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", *snaps("auto-1"), readonly=True, written=4096)
    plan = run(spec(), [source], [fs("dst"), target])
    assert plan.conflicts == (TargetModified("dst/backup", "auto-1", 4096),)
    allowed = only(run(spec(allow_rollback=True), [source], [fs("dst"), target]))
    assert allowed.steps[0] == Rollback("dst/backup", "auto-1", (), RollbackReason.CHANGES, written=4096)
    assert allowed.rollbacks() == [allowed.steps[0]] and not allowed.sends[0].receive.force


def test_without_rollback_incremental_receives_are_not_forced():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", *snaps("auto-1"), readonly=True)
    assert not only(run(spec(), [source], [fs("dst"), target])).sends[0].receive.force


# --- pre-retention -----------------------------------------------------------------------------------------

def test_source_retention_destroys_selected_target_snapshots_gone_from_the_source_before_receiving():
    source = fs("src/data", *snaps("auto-3", "auto-4", "auto-5"))
    target = fs("dst/backup", *snaps("auto-1", "auto-2", "keep-me", "auto-3"), readonly=True)
    d = only(run(spec(retention_policy=RetentionPolicy.SOURCE), [source], [fs("dst"), target]))
    assert d.steps[0] == DestroySnapshots("dst/backup", ("auto-1", "auto-2"), DestroyReason.RETENTION)
    assert isinstance(d.steps[1], IncrementalSend)  # retention runs before receiving


def test_custom_retention_asks_the_function_about_selected_names_and_never_destroys_the_base():
    asked = []

    def retention(names, now):
        asked.append((list(names), now))
        return set(names)  # everything has expired

    source = fs("src/data", *snaps("auto-2", "auto-3"))
    target = fs("dst/backup", *snaps("auto-1", "manual-x", "auto-2"), readonly=True)
    d = only(run(spec(retention_policy=RetentionPolicy.CUSTOM), [source], [fs("dst"), target],
                 retention=retention))
    assert asked == [(["auto-1", "auto-2"], NOW)]
    assert d.steps[0] == DestroySnapshots("dst/backup", ("auto-1",), DestroyReason.RETENTION)


def test_custom_retention_needs_a_function():
    with pytest.raises(ValueError, match="retention function"):
        run(spec(retention_policy=RetentionPolicy.CUSTOM), [fs("src/data")], [])


def test_retention_of_a_newer_target_snapshot_still_needs_a_rollback_to_reach_the_base():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", *snaps("auto-1"), *snaps("auto-9", salt="t", txg0=5), readonly=True)
    strict = run(spec(retention_policy=RetentionPolicy.SOURCE), [source], [fs("dst"), target])
    assert strict.conflicts == (Diverged("dst/backup", "auto-1", ("auto-9",)),)
    d = only(run(spec(retention_policy=RetentionPolicy.SOURCE, allow_rollback=True), [source],
                 [fs("dst"), target]))
    assert d.steps[:2] == (DestroySnapshots("dst/backup", ("auto-9",), DestroyReason.RETENTION),
                           Rollback("dst/backup", "auto-1", ()))


# --- resume ---------------------------------------------------------------------------------------

def test_a_valid_resume_token_is_resumed_first_and_the_plan_continues_from_its_snapshot():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    token = ResumeToken("1-abc", toguid=guid("auto-2"), fromguid=guid("auto-1"))
    target = fs("dst/backup", *snaps("auto-1"), resume_token=token, readonly=True, written=123)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.steps[0] == Resume("src/data", "dst/backup", "1-abc", "auto-2", d.steps[0].receive)
    assert d.base == "auto-2" and sends(d)[1:] == [("-i", "auto-2", "auto-3", ("auto-3",))]
    assert d.runnable  # the partial receive's bytes are not "modified since the base"


def test_a_full_stream_token_on_a_dataset_without_snapshots_is_resumed():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    target = fs("dst/backup", resume_token=ResumeToken("1-f", toguid=guid("auto-1")))
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert sends(d) == [("resume", None, "auto-1", ("auto-1",)), ("-i", "auto-1", "auto-2", ("auto-2",))]


def test_a_resume_that_brings_the_newest_snapshot_is_followed_by_the_mount():
    # Every receive is `-u`, a resumed one too: without the Mount step the target would stay unmounted.
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    token = ResumeToken("1-abc", toguid=guid("auto-2"), fromguid=guid("auto-1"))
    target = fs("dst/backup", *snaps("auto-1"), resume_token=token, readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert [type(s) for s in d.steps] == [Resume, Mount]
    assert d.steps[-1] == Mount("dst/backup")


@pytest.mark.parametrize("token, reason", [
    (ResumeToken("1-x"), "contents are unknown"),
    (ResumeToken("1-x", toguid=424242, fromguid=guid("auto-1")), "no longer exists on the source"),
    (ResumeToken("1-x", toguid=guid("auto-3"), fromguid=guid("auto-2")), "no longer the target's newest"),
    (ResumeToken("1-x", toguid=guid("auto-0"), fromguid=guid("auto-1")), "not older than its snapshot"),
])
def test_a_stale_resume_token_is_discarded_with_the_reason(token, reason):
    source = fs("src/data", *snaps("auto-0", "auto-1", "auto-2", "auto-3"))
    target = fs("dst/backup", *snaps("auto-1"), resume_token=token, readonly=True)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert isinstance(d.steps[0], DiscardResumeToken) and reason in d.steps[0].reason
    assert sends(d) == [("-I", "auto-1", "auto-3", ("auto-2", "auto-3"))]


def test_a_stale_full_stream_token_is_discarded_and_the_target_received_again_from_scratch():
    # The snapshot the partial full receive was getting is gone from the source; `recv -A` removes what that
    # receive created, so the partial bytes are no reason to refuse ("holds data").
    source = fs("src/data", *snaps("auto-2"))
    target = fs("dst/backup", resume_token=ResumeToken("1-f", toguid=guid("auto-1")), referenced=50 << 20)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert d.runnable, d.conflicts
    assert isinstance(d.steps[0], DiscardResumeToken)
    assert sends(d) == [("full", None, "auto-2", ("auto-2",))]


def test_a_target_with_data_and_no_token_is_still_refused():
    source = fs("src/data", *snaps("auto-1"))
    target = fs("dst/backup", referenced=50 << 20)
    d = only(run(spec(), [source], [fs("dst"), target]))
    assert any(isinstance(c, TargetHasData) for c in d.conflicts)


# --- recursive, excludes, several sources ---------------------------------------------------------

def test_recursive_plans_each_dataset_parents_first_minus_excludes_and_globs():
    tree = [fs(n, *snaps("auto-1")) for n in
            ("src/data", "src/data/a", "src/data/a/x", "src/data/tmp", "src/data/tmp/y", "src/data/cache-1")]
    plan = run(spec(recursive=True, exclude=("src/data/tmp", "src/data/cache-*")), tree, [fs("dst")])
    assert [d.target for d in plan.datasets] == ["dst/backup", "dst/backup/a", "dst/backup/a/x"]
    assert [d.depends_on for d in plan.datasets] == [None, "dst/backup", "dst/backup/a"]


def test_excluding_a_dataset_excludes_its_descendants():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/skip", *snaps("auto-1")),
            fs("src/data/skip/deeper", *snaps("auto-1"))]
    plan = run(spec(recursive=True, exclude=("src/data/skip",)), tree, [fs("dst")])
    assert [d.target for d in plan.datasets] == ["dst/backup"]


def test_a_child_below_a_glob_excluded_dataset_gets_that_parent_created_empty():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/skip", *snaps("auto-1")),
            fs("src/data/skip/keep", *snaps("auto-1"))]
    plan = run(spec(recursive=True, exclude=("src/data/sk?p",)), tree, [fs("dst")])
    child = plan.datasets[1]
    assert child.target == "dst/backup/skip/keep" and child.depends_on == "dst/backup"
    assert child.steps[0] == CreateParents(("dst/backup/skip",))


def test_a_child_whose_parent_is_not_replicated_this_run_is_skipped():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/new"), fs("src/data/new/deeper", *snaps("auto-1"))]
    plan = run(spec(recursive=True), tree, [fs("dst"), fs("dst/backup", *snaps("auto-1"), readonly=True)])
    assert plan.datasets[1].skipped and plan.datasets[2].skipped
    assert "dst/backup/new" in plan.datasets[2].skipped and plan.ok


def test_a_child_without_snapshots_yet_is_skipped_not_a_conflict():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/new")]
    plan = run(spec(recursive=True), tree, [fs("dst")])
    assert plan.ok and plan.datasets[1].skipped == "no matching snapshots to replicate yet"


def test_several_sources_map_below_the_target_by_their_path_under_the_common_parent():
    plan = run(spec(source_datasets=("src/a", "src/b/c")),
               [fs("src/a", *snaps("auto-1")), fs("src/b/c", *snaps("auto-1"))], [fs("dst")])
    assert [(d.source, d.target) for d in plan.datasets] == [("src/a", "dst/backup/a"),
                                                             ("src/b/c", "dst/backup/b/c")]
    # each plan ensures its own parents exist: a dataset plan never relies on another's CreateParents
    assert [d.steps[0] for d in plan.datasets] == [CreateParents(("dst/backup",)),
                                                   CreateParents(("dst/backup", "dst/backup/b"))]


# --- full-filesystem replication (-R) -----------------------------------------------------------------------------

def test_replicate_sends_the_root_with_R_and_discards_every_resume_token_in_the_tree():
    source = [fs("src/data", *snaps("auto-1", "auto-2")), fs("src/data/c", *snaps("auto-1", "auto-2"))]
    target = [fs("dst"), fs("dst/backup", *snaps("auto-1"), readonly=True),
              fs("dst/backup/c", *snaps("auto-1"), resume_token=ResumeToken("1-t", guid("auto-2"), guid("auto-1")))]
    plan = run(spec(recursive=True, replicate=True, retention_policy=RetentionPolicy.SOURCE), source, target)
    d = only(plan)
    assert d.steps[0] == DiscardResumeToken("dst/backup/c", "1-t", d.steps[0].reason)
    assert sends(d) == [("-i", "auto-1", "auto-2", ("auto-2",))] and d.sends[0].send.replicate


def test_replicate_full_send_delivers_every_older_snapshot_too():
    source = [fs("src/data", *snaps("manual-0", "auto-1", "auto-2"))]
    d = only(run(spec(recursive=True, replicate=True), source, [fs("dst")]))
    assert sends(d)[0] == ("full", None, "auto-1", ("manual-0", "auto-1"))


def test_replicate_refuses_a_child_that_lacks_the_base():
    source = [fs("src/data", *snaps("auto-1", "auto-2")), fs("src/data/c", *snaps("auto-1", "auto-2"))]
    target = [fs("dst"), fs("dst/backup", *snaps("auto-1"), readonly=True), fs("dst/backup/c")]
    plan = run(spec(recursive=True, replicate=True), source, target)
    assert plan.conflicts == (ReplicateChildMissingBase("dst/backup/c", "auto-1"),)


# --- properties, readonly, mount, encryption ------------------------------------------------------

def test_properties_exclude_and_override_keep_only_properties_that_apply_to_the_dataset():
    source = DatasetInfo("src/data", DatasetType.VOLUME, snaps("auto-1"),
                         properties={"compression": "lz4", "org:x": "1"})
    d = only(run(spec(properties_exclude=("mountpoint", "compression"),
                      properties_override={"org:x": "2", "sharenfs": "on"}), [source], [fs("dst")]))
    receive = d.sends[0].receive
    assert receive.exclude_properties == ("compression",)
    assert receive.override_properties == (("org:x", "2"),)
    unfiltered = only(run(spec(properties_exclude=("mountpoint",)), [fs("src/data", *snaps("auto-1"))],
                          [fs("dst")]))
    assert unfiltered.sends[0].receive.exclude_properties == ("mountpoint",)


def test_readonly_set_adds_a_final_step_unless_the_target_already_is_readonly():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    writable = fs("dst/backup", *snaps("auto-1"), readonly=False)
    assert only(run(spec(), [source], [fs("dst"), writable])).steps[-2:] == (SetReadonly("dst/backup"),
                                                                             Mount("dst/backup"))
    already = fs("dst/backup", *snaps("auto-1"), readonly=True)
    assert not any(isinstance(s, SetReadonly) for s in only(run(spec(), [source], [fs("dst"), already])).steps)
    ignore = only(run(spec(readonly=ReadonlyPolicy.IGNORE), [source], [fs("dst"), writable]))
    assert not any(isinstance(s, SetReadonly) for s in ignore.steps)


def test_readonly_require_refuses_an_existing_writable_target():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    writable = fs("dst/backup", *snaps("auto-1"), readonly=False)
    plan = run(spec(readonly=ReadonlyPolicy.REQUIRE), [source], [fs("dst"), writable])
    assert plan.conflicts == (ReadonlyRequired("dst/backup"),)
    new = only(run(spec(readonly=ReadonlyPolicy.REQUIRE), [source], [fs("dst")]))
    assert new.runnable and new.steps[-2:] == (SetReadonly("dst/backup"), Mount("dst/backup"))


def test_mount_false_receives_unmounted():
    d = only(run(spec(mount=False), [fs("src/data", *snaps("auto-1", "auto-2"))], [fs("dst")]))
    assert all(not s.receive.mount for s in d.sends)


def test_new_key_encrypts_the_created_root_and_its_children_inherit():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/c", *snaps("auto-1"))]
    plan = run(spec(recursive=True, encryption=TargetEncryption(key_format="hex", key_location="$TrueNAS")),
               tree, [fs("dst")])
    root, child = (d.sends[0].receive.encryption for d in plan.datasets)
    assert (root.mode, root.key_format, root.key_location) == (EncryptionMode.NEW_KEY, "hex", "$TrueNAS")
    assert child.mode is EncryptionMode.INHERIT
    assert "key" not in json.dumps(plan.to_dict()).replace("key_format", "").replace("key_location", "")


def test_encryption_guards_are_conflicts():
    source = fs("src/data", *snaps("auto-1", "auto-2"))
    inherit = run(spec(encryption=TargetEncryption(inherit=True)), [source], [fs("dst")])
    assert "parent is not encrypted" in inherit.conflicts[0].message
    ok = only(run(spec(encryption=TargetEncryption(inherit=True)), [source], [fs("dst", encrypted=True)]))
    assert ok.sends[0].receive.encryption.mode is EncryptionMode.INHERIT
    existing = run(spec(encryption=TargetEncryption(key_format="hex")), [source],
                   [fs("dst"), fs("dst/backup", *snaps("auto-1"), readonly=True)])
    assert "exists unencrypted" in existing.conflicts[0].message
    raw = run(spec(encryption=TargetEncryption(key_format="hex")),
              [fs("src/data", *snaps("auto-1"), encrypted=True)], [fs("dst")])
    assert isinstance(raw.conflicts[0], EncryptionConflict) and "sent raw" in raw.conflicts[0].message


def test_an_encrypted_source_with_properties_is_sent_raw():
    d = only(run(spec(), [fs("src/data", *snaps("auto-1"), encrypted=True)], [fs("dst")]))
    assert d.sends[0].send.raw
    d = only(run(spec(properties=False), [fs("src/data", *snaps("auto-1"), encrypted=True)], [fs("dst")]))
    assert not d.sends[0].send.raw


# --- estimates and the JSON form ------------------------------------------------------------------

def test_estimates_use_referenced_for_full_and_summed_written_for_incremental_sends():
    source = fs("src/data", SnapshotInfo("auto-1", 1, 1, referenced=5000, written=5000),
                SnapshotInfo("manual", 2, 2, written=300), SnapshotInfo("auto-2", 3, 3, written=20))
    plan = run(spec(), [source], [fs("dst")])
    full, inc = only(plan).sends
    assert full.estimate.bytes == 5000 and inc.estimate.bytes == 320 and not inc.estimate.exact
    assert plan.estimated_bytes == 5320
    unknown = run(spec(), [fs("src/data", SnapshotInfo("auto-1", 1, 1))], [fs("dst")])
    assert unknown.estimated_bytes is None


def test_to_dict_is_json_with_step_kinds_and_readable_conflict_messages():
    target = fs("dst/backup", *snaps("old-1", salt="t"), readonly=True)
    plan = run(spec(), [fs("src/data", *snaps("auto-1"))], [fs("dst"), target])
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["ok"] is False and data["now"] == NOW.isoformat()
    (conflict,) = data["datasets"][0]["conflicts"]
    assert conflict["code"] == "NO_COMMON_BASE" and "old-1" in conflict["message"]
    fine = run(spec(), [fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))], [fs("dst")]).to_dict()
    assert [s["kind"] for s in fine["datasets"][0]["steps"]] == ["full_send", "incremental_send", "set_readonly",
                                                                 "mount"]
    assert fine["datasets"][0]["steps"][1]["intermediates"] is True


# --- safety: later runs never fail because of an earlier run, nothing is discarded blindly ---------------

def test_receives_are_never_forced_or_mounting_and_mount_follows_the_readonly_policy():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    existing = fs("dst/backup", *snaps("auto-1"), readonly=False, written=0)
    for policy in ReadonlyPolicy:
        for target in ([fs("dst")], [fs("dst"), existing]):
            d = only(run(spec(readonly=policy, allow_rollback=True), [source], target))
            if policy is ReadonlyPolicy.REQUIRE and len(target) == 2:
                continue  # refused: covered by the REQUIRE test
            assert d.sends and not any(isinstance(s, IncrementalSend) and s.receive.force for s in d.sends)
            assert not any(s.receive.mount for s in d.sends)  # all `receive -u`
            # Read-only (the property, and `-o ro` for the mount) before the first mount: it changes nothing.
            if policy is ReadonlyPolicy.IGNORE:
                assert d.steps[-1] == Mount("dst/backup")
                assert not any(isinstance(s, SetReadonly) for s in d.steps)
            else:
                assert d.steps[-2:] == (SetReadonly("dst/backup"), Mount("dst/backup"))


def test_nothing_is_mounted_without_mount_or_sends_and_volumes_are_never_mounted():
    source = fs("src/data", *snaps("auto-1"))
    assert not any(isinstance(s, Mount) for s in only(run(spec(mount=False), [source], [fs("dst")])).steps)
    up_to_date = fs("dst/backup", *snaps("auto-1"), readonly=True)
    assert only(run(spec(), [source], [fs("dst"), up_to_date])).steps == ()
    volume = DatasetInfo("src/data", DatasetType.VOLUME, snaps("auto-1"))
    assert not any(isinstance(s, Mount) for s in only(run(spec(), [volume], [fs("dst")])).steps)


def test_ignore_child_mount_reverts_its_parent_to_the_parents_newest_snapshot():
    tree = [fs("src/data", *snaps("auto-1", "auto-2")), fs("src/data/c", *snaps("auto-1", "auto-2")),
            fs("src/data/c/g", *snaps("auto-1"))]
    plan = run(spec(recursive=True, readonly=ReadonlyPolicy.IGNORE), tree, [fs("dst")])
    root, child, grandchild = plan.datasets
    assert root.steps[-1] == Mount("dst/backup")  # its own parent is not replicated
    assert child.steps[-1] == Mount("dst/backup/c", reverts=(
        Rollback("dst/backup", "auto-2", reason=RollbackReason.MOUNT),))
    assert grandchild.steps[-1] == Mount("dst/backup/c/g", reverts=(
        Rollback("dst/backup/c", "auto-2", reason=RollbackReason.MOUNT),))
    # A mount revert is not a discard of the user's changes: the plan lists no rollback for the reader.
    assert plan.destroys() == [] and all(d.rollbacks() == [] for d in plan.datasets)
    assert plan.to_dict()["rollbacks"] == []
    # The parent up to date (nothing sent to it this run): reverted to its base.
    target = [fs("dst"), fs("dst/backup", *snaps("auto-1", "auto-2"), readonly=False, written=0)]
    child_only = run(spec(recursive=True, readonly=ReadonlyPolicy.IGNORE), tree[:2], target).datasets[1]
    assert child_only.steps[-1].reverts == (Rollback("dst/backup", "auto-2", reason=RollbackReason.MOUNT),)
    # SET: the parent is read-only before the child is mounted into it: nothing to revert.
    set_plan = run(spec(recursive=True), tree, [fs("dst")])
    assert all(not s.reverts for d in set_plan.datasets for s in d.steps if isinstance(s, Mount))


def test_replicated_ignore_tree_is_mounted_recursively_reverting_every_parent():
    tree = [fs("src/data", *snaps("auto-1")), fs("src/data/c", *snaps("auto-1")),
            fs("src/data/c/g", *snaps("auto-1")), fs("src/data/d", *snaps("auto-1"))]
    d = only(run(spec(replicate=True, recursive=True, readonly=ReadonlyPolicy.IGNORE), tree, [fs("dst")]))
    assert d.steps[-1] == Mount("dst/backup", recursive=True, reverts=(
        Rollback("dst/backup", "auto-1", reason=RollbackReason.MOUNT),
        Rollback("dst/backup/c", "auto-1", reason=RollbackReason.MOUNT)))


def test_unknown_written_with_rollback_allowed_rolls_back_only_if_the_receive_is_refused():
    source = fs("src/data", *snaps("auto-1", "auto-2", "auto-3"))
    zfs_fuse_target = fs("dst/backup", *snaps("auto-1"), readonly=True)  # written=None: cannot be measured
    d = only(run(spec(allow_rollback=True), [source], [fs("dst"), zfs_fuse_target]))
    (send,) = d.sends
    assert not send.receive.force and send.if_modified == Rollback("dst/backup", "auto-1")
    assert not any(isinstance(s, Rollback) for s in d.steps)  # nothing is rolled back unless needed
    assert d.rollbacks() == [send.if_modified]
    assert run(spec(allow_rollback=True), [source], [fs("dst"), zfs_fuse_target]).to_dict()["rollbacks"] == [
        "dst/backup@auto-1"]
    # Not allowed: no rollback of any kind, the refusal stands.
    assert only(run(spec(), [source], [fs("dst"), zfs_fuse_target])).sends[0].if_modified is None
    # Measured (OpenZFS): nothing written, nothing to roll back; written: the planned rollback says how much.
    clean = fs("dst/backup", *snaps("auto-1"), readonly=True, written=0)
    assert only(run(spec(allow_rollback=True), [source], [fs("dst"), clean])).sends[0].if_modified is None
