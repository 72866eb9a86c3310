"""The replication planner: a pure function from a task and two listings to a `Plan`. No I/O.

Rules (the tests in tests/unit/test_planner.py state each one):

- The incremental base is the newest snapshot (by source createtxg) present on both sides with the same
  name **and** guid. A same-named snapshot with another guid is unrelated: never a base, and a conflict
  when it is newer than the base or in the way of a snapshot to send.
- Only selected snapshots (`select(name)`) newer than the base are sent. Runs of them with no unselected
  snapshot in between travel in one `-I` stream; across a gap, `-i` steps skip the unselected ones.
- A target with snapshots but no common base is a conflict unless `allow_from_scratch`; then the plan
  destroys every target snapshot (listed) and sends a full stream over it. A target without snapshots
  that holds data is treated the same way.
- Target snapshots newer than the base (diverged) or changes written after it are a conflict unless
  `allow_rollback`; then the plan rolls back to the base and lists what the rollback destroys. Incremental
  receives are never forced (-F): where ZFS cannot report `written` (zfs-fuse), a task that allows rollback
  carries a rollback to the base that runs only if the receive is refused because the target changed.
- Receives never mount (-u). With `mount`, a `Mount` step follows the sends and the read-only policy and
  mounts read-only (`-o ro`; IGNORE leaves the `readonly` property untouched), so nothing our own mounting
  does lands after the newest snapshot; under IGNORE (no read-only property), the parent a child is mounted
  into is rolled back to its newest snapshot when the mount happened.
- Target retention runs first (pre-retention), never on the base, only on selected snapshots.
- A resume token is resumed first when it still fits both sides, else discarded.
- A missing target whose pool does not exist on the target host is a conflict (zfs create cannot make a
  pool), and so is target encryption on a host whose ZFS has no native encryption.
- `recursive` plans every dataset of the tree (minus `exclude`) separately; `replicate` sends the root
  with -R and checks the children.

How the service maps a TrueNAS `replication` entry onto the planner's inputs:

- `ReplicationSpec` takes the same-named fields. `direction` only decides which host each listing comes
  from (PUSH: source local, target remote; PULL: the reverse). `encryption`/`encryption_inherit`/
  `encryption_key_format`/`encryption_key_location` become `TargetEncryption` (the key stays with the
  executor). `mount` and `only_from_scratch` come from `run_onetime`; `exclude_mountpoint_property` and
  TrueNAS's implicit `mountpoint`/`sharenfs`/`sharesmb` go into `properties_exclude`. TrueNAS has no
  rollback switch (zettarepl always receives with -F): map `allow_rollback` from `allow_from_scratch`,
  so only a task that may replace the target may also roll it back.
- `select`: the naming schemas (bound periodic tasks' schemas plus `also_include_naming_schema` for
  PUSH, `naming_schema` for PULL) or `name_regex`, and `restrict_schedule` / `only_matching_schedule`
  applied to the datetime parsed from the name.
- `retention`: for `retention_policy=CUSTOM`, the retention module's lifetime rule (`lifetime_value`,
  `lifetime_unit`, `lifetimes`); SOURCE and NONE need no function.
"""
from __future__ import annotations

import fnmatch
import os.path
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from middlewared_plugin.replication.listing import DatasetInfo, DatasetType, Listing, SnapshotInfo
from middlewared_plugin.replication.plan import (
    ByteEstimate,
    Conflict,
    CreateParents,
    DatasetPlan,
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
    PoolMissing,
    ReadonlyRequired,
    ReceiveEncryption,
    ReceiveOptions,
    ReplicateChildMissingBase,
    Resume,
    Rollback,
    RollbackReason,
    SendOptions,
    SendStep,
    SetReadonly,
    SourceMissing,
    Step,
    TargetExists,
    TargetHasData,
    TargetModified,
    TargetTypeMismatch,
    UnrelatedSnapshot,
)

#: An existing target without snapshots that references more than this holds data (an empty filesystem
#: references a few dozen KiB).
EMPTY_TARGET_MAX_REFERENCED = 1024 * 1024

#: Snapshot name -> whether the task replicates it.
Selector = Callable[[str], bool]
#: (selected target snapshot names oldest first, now) -> the names target retention would destroy.
RetentionFn = Callable[[Sequence[str], datetime], Set[str]]


class ReadonlyPolicy(StrEnum):
    SET = "SET"
    REQUIRE = "REQUIRE"
    IGNORE = "IGNORE"


class RetentionPolicy(StrEnum):
    SOURCE = "SOURCE"
    CUSTOM = "CUSTOM"
    NONE = "NONE"


@dataclass(frozen=True)
class TargetEncryption:
    """Encrypt targets the run creates: inherit the parent's encryption, or a new key of this format."""

    inherit: bool = False
    key_format: str | None = None
    key_location: str | None = None


@dataclass(frozen=True)
class ReplicationSpec:
    """The task fields the planner needs (see the module docstring for the mapping from TrueNAS)."""

    source_datasets: tuple[str, ...]
    target_dataset: str
    recursive: bool = False
    exclude: tuple[str, ...] = ()
    replicate: bool = False
    properties: bool = True
    properties_exclude: tuple[str, ...] = ()
    properties_override: Mapping[str, str] = field(default_factory=dict)
    retention_policy: RetentionPolicy = RetentionPolicy.NONE
    allow_from_scratch: bool = False
    only_from_scratch: bool = False
    allow_rollback: bool = False
    readonly: ReadonlyPolicy = ReadonlyPolicy.SET
    mount: bool = True
    encryption: TargetEncryption | None = None
    large_block: bool = True
    embed: bool = False
    compressed: bool = True


def plan_replication(spec: ReplicationSpec, source: Listing, target: Listing, now: datetime, *,
                     select: Selector, retention: RetentionFn | None = None) -> Plan:
    """Plan one run of `spec`: one `DatasetPlan` per replicated dataset, parents before children."""
    if spec.retention_policy is RetentionPolicy.CUSTOM and retention is None:
        raise ValueError("CUSTOM retention needs a retention function")
    return _Planner(spec, source, target, now, select, retention).plan()


def _key(snapshot: SnapshotInfo) -> tuple[int, str]:
    return snapshot.createtxg, snapshot.name


def _path_key(name: str) -> list[str]:
    return name.split("/")


def _ancestors(name: str) -> list[str]:
    """Nearest first: "p/a/b" -> ["p/a", "p"]."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


class _Tree:
    """One dataset's snapshots oldest first, indexed by name for base and order questions."""

    def __init__(self, snapshots: list[SnapshotInfo]):
        self.snapshots = snapshots
        self.by_name = {s.name: s for s in snapshots}
        self.index = {s.name: i for i, s in enumerate(snapshots)}


class _Planner:
    def __init__(self, spec: ReplicationSpec, source: Listing, target: Listing, now: datetime,
                 select: Selector, retention: RetentionFn | None):
        self.spec = spec
        self.source = source
        self.target = target
        self.now = now
        self.select = select
        self.retention = retention
        self.roots = tuple(dict.fromkeys(spec.source_datasets))
        self.source_base = self._source_base()
        self.planned: dict[str, DatasetPlan] = {}  # by target name

    # --- naming ---------------------------------------------------------------------------------

    def _source_base(self) -> str:
        """The common ancestor of the sources; each maps to target_dataset/<path below it>."""
        if len(self.roots) == 1:
            return self.roots[0]
        return os.path.commonpath(self.roots)

    def target_name(self, source_name: str) -> str:
        rel = source_name[len(self.source_base):].lstrip("/") if self.source_base else source_name
        return f"{self.spec.target_dataset}/{rel}" if rel else self.spec.target_dataset

    def excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + "/") or fnmatch.fnmatchcase(name, e)
                   for e in self.spec.exclude)

    # --- top level ------------------------------------------------------------------------------

    def plan(self) -> Plan:
        work: dict[str, DatasetInfo | None] = {}
        for root in self.roots:
            info = self.source.get(root)
            if info is None or not self.spec.recursive or self.spec.replicate:
                work.setdefault(root, info)
            else:
                for ds in self.source.tree(root):
                    if ds.name == root or not self.excluded(ds.name):
                        work.setdefault(ds.name, ds)
        for name in sorted(work, key=_path_key):
            info = work[name]
            tname = self.target_name(name)
            if info is None:
                plan = DatasetPlan(name, tname, conflicts=(SourceMissing(name),))
            elif self.spec.replicate:
                plan = self.plan_dataset(info, tname, is_root=True, replicate=True)
            else:
                plan = self.plan_dataset(info, tname, is_root=name in self.roots, replicate=False)
            self.planned[tname] = plan
        return Plan(self.now, tuple(self.planned.values()))

    # --- one dataset ----------------------------------------------------------------------------

    def plan_dataset(self, src: DatasetInfo, tname: str, *, is_root: bool, replicate: bool) -> DatasetPlan:
        spec = self.spec
        tgt = self.target.get(tname)
        if tgt is not None and tgt.type is not src.type:
            return DatasetPlan(src.name, tname, conflicts=(
                TargetTypeMismatch(tname, src.type.value, tgt.type.value),))

        steps: list[Step] = []
        conflicts: list[Conflict] = []
        notes: list[str] = []
        depends_on: str | None = None
        if tgt is None:
            parents, depends_on, skip, conflict = self.parents(tname)
            if skip:
                return DatasetPlan(src.name, tname, skipped=skip)
            if conflict:
                return DatasetPlan(src.name, tname, conflicts=(conflict,))
            if parents:
                steps.append(CreateParents(parents))

        source_tree = _Tree(src.ordered_snapshots())
        target_snaps = tgt.ordered_snapshots() if tgt else []
        send_options = self.send_options(src, replicate)
        receive = self.receive_options(src)

        # Resume first: a resumed snapshot then counts as on the target for the rest of the plan.
        resumed = False
        # Discarding a partial *full* receive leaves no data of its own behind (`recv -A` removes the dataset
        # that receive created, or only its %recv state after a `-F` receive into an empty target).
        discarded_full_receive = False
        if replicate:
            for t in self.target.tree(tname):
                if t.resume_token:
                    steps.append(DiscardResumeToken(t.name, t.resume_token.token,
                                                    "resume is not supported with full-filesystem replication"))
        elif tgt is not None and tgt.resume_token is not None:
            token = tgt.resume_token
            reason = self.stale_token_reason(tgt, source_tree)
            if reason:
                steps.append(DiscardResumeToken(tname, token.token, reason))
                discarded_full_receive = token.fromguid is None and not target_snaps
            else:
                snap = next(s for s in source_tree.snapshots if s.guid == token.toguid)
                steps.append(Resume(src.name, tname, token.token, snap.name, replace(receive, force=False)))
                top = max((t.createtxg for t in target_snaps), default=0)
                target_snaps.append(SnapshotInfo(snap.name, snap.guid, top + 1))
                resumed = True

        base = self.common_base(source_tree, target_snaps)
        to_send = [s for s in source_tree.snapshots
                   if self.select(s.name) and (base is None or _key(s) > _key(source_tree.by_name[base]))]
        target_has_data = bool(target_snaps) or (
            tgt is not None and not discarded_full_receive
            and (tgt.referenced is None or tgt.referenced > EMPTY_TARGET_MAX_REFERENCED))

        if base is None and not to_send:
            if is_root:
                return DatasetPlan(src.name, tname, conflicts=(NoSelectedSnapshots(src.name),))
            return DatasetPlan(src.name, tname, skipped="no matching snapshots to replicate yet")

        if tgt is not None and spec.only_from_scratch:
            conflicts.append(TargetExists(tname))
        if tgt is not None and spec.readonly is ReadonlyPolicy.REQUIRE and tgt.readonly is not True:
            conflicts.append(ReadonlyRequired(tname))

        creating = base is None  # the first send is a full stream
        if creating and tgt is not None and target_has_data:
            if not spec.allow_from_scratch:
                if target_snaps:
                    conflicts.append(NoCommonBase(tname, src.name, tuple(t.name for t in target_snaps)))
                    conflicts += self.unrelated(tname, source_tree, target_snaps, {t.name for t in target_snaps})
                else:
                    conflicts.append(TargetHasData(tname, tgt.referenced))
            else:
                for t in self.target.tree(tname) if replicate else [tgt]:
                    if t.snapshots:
                        steps.append(DestroySnapshots(t.name, tuple(s.name for s in t.ordered_snapshots()),
                                                      DestroyReason.FROM_SCRATCH))
                notes.append(f"{tname} is replaced by a full stream of {src.name}")
        elif base is not None and tgt is not None:
            rs, rc = self.reconcile(tname, tgt, source_tree, target_snaps, base, to_send, resumed)
            steps += rs
            conflicts += rc
            if replicate:
                for child in list(self.source.tree(src.name))[1:]:
                    rs, rc = self.reconcile_replicated_child(child, base, to_send)
                    steps += rs
                    conflicts += rc

        encryption, enc_conflict = self.encryption(src, tgt, tname, creating, send_options.raw)
        if enc_conflict:
            conflicts.append(enc_conflict)
        if conflicts:  # nothing runs, so no steps: a partial list would read as what happens
            if resumed:  # nor the resume, so the base is what the target really holds
                base = self.common_base(source_tree, tgt.ordered_snapshots() if tgt else [])
            return DatasetPlan(src.name, tname, base=base, conflicts=tuple(conflicts), depends_on=depends_on)

        sends = self.sends(src, tname, source_tree, base, to_send, send_options, receive, encryption,
                           force_full=tgt is not None, replicate=replicate)
        if (sends and base is not None and spec.allow_rollback and not resumed and not replicate
                and tgt is not None and tgt.written is None
                and not any(isinstance(s, Rollback) and s.dataset == tname for s in steps)):
            # The listing cannot tell whether the target changed since the base: if the receive says it did,
            # the task allows discarding that, explicitly and logged, rather than by a blind `receive -F`.
            first = sends[0]
            assert isinstance(first, IncrementalSend) and first.base == base
            sends[0] = replace(first, if_modified=Rollback(tname, base))
        steps += sends
        if spec.readonly is not ReadonlyPolicy.IGNORE and (
                tgt is None or creating or tgt.readonly is not True):
            steps.append(SetReadonly(tname))
        if spec.mount and (sends or resumed) and src.type is DatasetType.FILESYSTEM:
            steps.append(self.mount(src, tname, sends, replicate))
        return DatasetPlan(src.name, tname, base=base, steps=tuple(steps), depends_on=depends_on,
                           notes=tuple(notes))

    def mount(self, src: DatasetInfo, tname: str, sends: list[SendStep], replicate: bool) -> Mount:
        """Mount the target (read-only) once its read-only policy is applied. Under IGNORE the filesystem it
        is mounted into (when this plan replicates that one too) is rolled back to its newest snapshot if the
        mount happened: zfs-fuse stamps the access time of the mountpoint directory unless the `readonly`
        property is on, and that change of ours would make the next incremental receive into the parent fail."""
        if self.spec.readonly is not ReadonlyPolicy.IGNORE:
            return Mount(tname, recursive=replicate)
        reverts: list[Rollback] = []
        if replicate:
            newest = sends[-1].arrives[-1]
            for ds in self.source.tree(src.name):
                has_children = any(c.name.rsplit("/", 1)[0] == ds.name for c in self.source.tree(ds.name))
                if has_children and any(s.name == newest for s in ds.snapshots):
                    reverts.append(Rollback(self.target_name(ds.name), newest, reason=RollbackReason.MOUNT))
        elif "/" in tname:
            parent = self.planned.get(tname.rsplit("/", 1)[0])
            if parent is not None and parent.runnable:
                newest = parent.sends[-1].arrives[-1] if parent.sends else parent.base
                if newest is not None:
                    reverts.append(Rollback(parent.target, newest, reason=RollbackReason.MOUNT))
        return Mount(tname, recursive=replicate, reverts=tuple(reverts))

    # --- target parents -------------------------------------------------------------------------

    def parents(self, tname: str) -> tuple[tuple[str, ...], str | None, str | None, Conflict | None]:
        """(parents to create top-down, target created earlier in this plan, skip reason, conflict)."""
        missing: list[str] = []
        if "/" not in tname:
            return (), None, None, PoolMissing(tname, tname)  # the target is a pool, and it does not exist
        for ancestor in _ancestors(tname):
            info = self.target.get(ancestor)
            if info is not None:
                if info.type is DatasetType.VOLUME:
                    return (), None, None, ParentIsVolume(tname, ancestor)
                break
            planned = self.planned.get(ancestor)
            if planned is not None:
                if not planned.runnable:
                    return (), None, f"its parent {ancestor!r} is not replicated in this run", None
                return tuple(reversed(missing)), ancestor, None, None
            if "/" not in ancestor:
                # The pool itself is missing (the target listing holds the nearest existing ancestor):
                # zfs create cannot make one, so say so instead of letting the receive fail.
                return (), None, None, PoolMissing(tname, ancestor)
            missing.append(ancestor)
        return tuple(reversed(missing)), None, None, None

    # --- base, resume, reconcile ----------------------------------------------------------------

    @staticmethod
    def common_base(source_tree: _Tree, target_snaps: list[SnapshotInfo]) -> str | None:
        common = [source_tree.by_name[t.name] for t in target_snaps
                  if t.name in source_tree.by_name and source_tree.by_name[t.name].guid == t.guid]
        return max(common, key=_key).name if common else None

    @staticmethod
    def stale_token_reason(tgt: DatasetInfo, source_tree: _Tree) -> str | None:
        token = tgt.resume_token
        assert token is not None
        target_snaps = tgt.ordered_snapshots()
        position = {s.guid: i for i, s in enumerate(source_tree.snapshots)}
        if token.toguid is None:
            return "the token's contents are unknown"
        if token.toguid not in position:
            return "the snapshot it was receiving no longer exists on the source"
        if any(t.guid == token.toguid for t in target_snaps):
            return "the target already has the snapshot it was receiving"
        receiving = source_tree.snapshots[position[token.toguid]].name
        if any(t.name == receiving for t in target_snaps):
            # The receive could never finish: the name is taken by another snapshot.
            return f"the target has another snapshot named {receiving!r}"
        if token.fromguid is None:
            if target_snaps:
                return "it belongs to a full stream but the target now has snapshots"
        elif not target_snaps or target_snaps[-1].guid != token.fromguid:
            return "its incremental source is no longer the target's newest snapshot"
        elif token.fromguid not in position:
            return "its incremental source no longer exists on the source"
        elif position[token.fromguid] >= position[token.toguid]:
            return "its incremental source is not older than its snapshot on the source"
        return None

    def retention_destroys(self, source_tree: _Tree, target_snaps: list[SnapshotInfo],
                           base: str) -> tuple[str, ...]:
        """Pre-retention: selected target snapshots the target policy drops; never the base."""
        selected = [t for t in target_snaps if self.select(t.name)]
        policy = self.spec.retention_policy
        if policy is RetentionPolicy.SOURCE:
            doomed = {t.name for t in selected if t.name not in source_tree.by_name}
        elif policy is RetentionPolicy.CUSTOM:
            assert self.retention is not None
            doomed = set(self.retention([t.name for t in selected], self.now))
        else:
            doomed = set()
        return tuple(t.name for t in selected if t.name in doomed and t.name != base)

    def reconcile(self, tname: str, tgt: DatasetInfo, source_tree: _Tree, target_snaps: list[SnapshotInfo],
                  base: str, to_send: list[SnapshotInfo], resumed: bool) -> tuple[list[Step], list[Conflict]]:
        """Bring an existing target back to `base`: pre-retention, then rollback (or the conflicts)."""
        steps: list[Step] = []
        conflicts: list[Conflict] = []
        retained_away = self.retention_destroys(source_tree, target_snaps, base)
        if retained_away:
            steps.append(DestroySnapshots(tname, retained_away, DestroyReason.RETENTION))
        base_txg = next(t for t in target_snaps if t.name == base).createtxg
        newer = [t for t in target_snaps if (t.createtxg, t.name) > (base_txg, base)]
        rollback = tuple(t.name for t in newer if t.name not in retained_away)
        if newer:
            if self.spec.allow_rollback:
                steps.append(Rollback(tname, base, rollback, written=tgt.written))
            else:
                conflicts.append(Diverged(tname, base, tuple(t.name for t in newer)))
        elif tgt.written and not resumed:
            if self.spec.allow_rollback:
                steps.append(Rollback(tname, base, written=tgt.written))
            else:
                conflicts.append(TargetModified(tname, base, tgt.written))
        removed = set(retained_away) | (set(rollback) if self.spec.allow_rollback else set())
        in_the_way = {t.name for t in newer} | {s.name for s in to_send}
        conflicts += self.unrelated(tname, source_tree, target_snaps, in_the_way - removed)
        return steps, conflicts

    @staticmethod
    def unrelated(tname: str, source_tree: _Tree, target_snaps: list[SnapshotInfo],
                  names: set[str]) -> list[Conflict]:
        return [UnrelatedSnapshot(tname, t.name, source_tree.by_name[t.name].guid, t.guid)
                for t in target_snaps
                if t.name in names and t.name in source_tree.by_name
                and source_tree.by_name[t.name].guid != t.guid]

    def reconcile_replicated_child(self, child: DatasetInfo, base: str,
                                   to_send: list[SnapshotInfo]) -> tuple[list[Step], list[Conflict]]:
        """-R needs the root's base on every existing child target, and nothing newer than it there."""
        tname = self.target_name(child.name)
        tgt = self.target.get(tname)
        source_tree = _Tree(child.ordered_snapshots())
        if tgt is None or base not in source_tree.by_name:
            return [], []  # the -R stream creates it in full
        target_snaps = tgt.ordered_snapshots()
        if self.common_base(source_tree, target_snaps) != base:
            return [], [ReplicateChildMissingBase(tname, base)]
        return self.reconcile(tname, tgt, source_tree, target_snaps, base,
                              [s for s in to_send if s.name in source_tree.by_name], resumed=False)

    # --- options --------------------------------------------------------------------------------

    def send_options(self, src: DatasetInfo, replicate: bool) -> SendOptions:
        spec = self.spec
        tree = list(self.source.tree(src.name)) if replicate else [src]
        return SendOptions(raw=spec.properties and any(d.encrypted for d in tree), replicate=replicate,
                           properties=spec.properties, large_block=spec.large_block, embed=spec.embed,
                           compressed=spec.compressed)

    def receive_options(self, src: DatasetInfo) -> ReceiveOptions:
        """-x/-o for properties that apply to this dataset's type (when the listing says which do)."""
        def applies(name: str) -> bool:
            return src.properties is None or name in src.properties

        # Never forced and never mounting: rollbacks are explicit steps, mounting is the `Mount` step.
        return ReceiveOptions(
            mount=False,
            exclude_properties=tuple(p for p in self.spec.properties_exclude if applies(p)),
            override_properties=tuple((k, v) for k, v in self.spec.properties_override.items() if applies(k)),
        )

    def encryption(self, src: DatasetInfo, tgt: DatasetInfo | None, tname: str, creating: bool,
                   raw: bool) -> tuple[ReceiveEncryption, Conflict | None]:
        """How a created target is encrypted; the guards zettarepl applies, as conflicts."""
        wanted = self.spec.encryption
        keep = ReceiveEncryption()
        if wanted is None:
            return keep, None
        if not self.target.native_encryption:
            return keep, EncryptionConflict(tname, "ZFS on the target host does not support native encryption")
        if raw:
            return keep, EncryptionConflict(tname, f"source {src.name!r} is encrypted and sent raw with its "
                                                   f"properties, so it cannot be encrypted with another key")
        if not creating:
            if tgt is not None and not tgt.encrypted:
                return keep, EncryptionConflict(tname, "it exists unencrypted; target encryption only applies "
                                                       "to targets the replication creates")
            return keep, None
        inherited = self.parent_encrypted(tname)
        if wanted.inherit or inherited:
            if not inherited:
                return keep, EncryptionConflict(tname, "encryption is inherited but its parent is not encrypted")
            return ReceiveEncryption(EncryptionMode.INHERIT), None
        return ReceiveEncryption(EncryptionMode.NEW_KEY, wanted.key_format, wanted.key_location), None

    def parent_encrypted(self, tname: str) -> bool:
        """Whether the nearest parent that exists, or that this plan creates by a send, is encrypted."""
        for ancestor in _ancestors(tname):
            planned = self.planned.get(ancestor)
            if planned is not None and ancestor not in self.target:
                full = next((s for s in planned.sends if isinstance(s, FullSend)), None)
                if full is not None:
                    return full.send.raw or full.receive.encryption.mode is not EncryptionMode.KEEP
            info = self.target.get(ancestor)
            if info is not None:
                return info.encrypted
        return False

    # --- sends ----------------------------------------------------------------------------------

    def sends(self, src: DatasetInfo, tname: str, source_tree: _Tree, base: str | None,
              to_send: list[SnapshotInfo], send: SendOptions, receive: ReceiveOptions,
              encryption: ReceiveEncryption, *, force_full: bool, replicate: bool) -> list[SendStep]:
        """The chain from `base` (or a full stream) through `to_send`: `-I` runs split by `-i` at gaps."""
        steps: list[SendStep] = []
        if not to_send:
            return steps
        snaps = source_tree.snapshots
        if base is None:
            first, rest = to_send[0], to_send[1:]
            arrives = tuple(s.name for s in snaps if _key(s) <= _key(first)) if replicate else (first.name,)
            steps.append(FullSend(
                src.name, tname, first.name, arrives, send,
                ReceiveOptions(force=force_full, mount=receive.mount,
                               exclude_properties=receive.exclude_properties,
                               override_properties=receive.override_properties, encryption=encryption),
                ByteEstimate(first.referenced) if first.referenced is not None else None))
            current = first.name
        else:
            rest, current = to_send, base

        def incremental(frm: str, run: list[SnapshotInfo]) -> IncrementalSend:
            lo, hi = source_tree.index[frm], source_tree.index[run[-1].name]
            written = [s.written for s in snaps[lo + 1:hi + 1] if s.written is not None]
            estimate = ByteEstimate(sum(written)) if len(written) == hi - lo else None
            return IncrementalSend(src.name, tname, frm, run[-1].name, len(run) > 1,
                                   tuple(s.name for s in run), send, receive, estimate)

        run: list[SnapshotInfo] = []
        for snap in rest:
            previous = run[-1].name if run else current
            if source_tree.index[snap.name] - source_tree.index[previous] == 1:
                run.append(snap)
                continue
            if run:  # unselected snapshots lie between: close the -I run, then step over them with -i
                steps.append(incremental(current, run))
                current = run[-1].name
                run = []
            steps.append(incremental(current, [snap]))
            current = snap.name
        if run:
            steps.append(incremental(current, run))
        return steps
