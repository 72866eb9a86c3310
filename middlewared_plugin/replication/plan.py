"""The replication plan: everything a run will do, decided before it starts.

The planner (`planner.plan_replication`) computes a `Plan`; the executor runs it and decides nothing; the
`replication.plan` API method returns `Plan.to_dict()` as-is. Whatever a run destroys or rolls back is named
in the plan first (`Plan.destroys()`), so a dry run shows exactly the damage.

A plan holds one `DatasetPlan` per replicated dataset, parents before children. The executor runs the
`steps` of every *runnable* dataset plan (no conflicts, not skipped) in order, and skips a plan whose
`depends_on` target was not created because that plan failed or was not runnable. Step meanings, in
ZFS terms (the ZFS layer builds the argv; "target" and "source" are full dataset names):

- `CreateParents(datasets)`: make sure each listed filesystem exists, creating the missing ones in order
  (`zfs create -p <last>` does all; two dataset plans may list the same parent).
- `DiscardResumeToken(dataset)`: abort the interrupted receive, dropping its partial state
  (`zfs recv -A dataset`).
- `Resume(target, token)`: finish the interrupted receive (`zfs send -t token | zfs recv -s target`);
  afterwards the target holds `snapshot`.
- `DestroySnapshots(dataset, snapshots)`: destroy exactly those snapshots (`zfs destroy dataset@a,b,...`,
  batched). `reason` says why: target retention run before receiving, or a replication from scratch.
- `Rollback(dataset, snapshot, destroys)`: `zfs rollback [-r] dataset@snapshot`, discarding the changes
  made since it; `destroys` lists the later snapshots that go with them. `reason` CHANGES: changes made on
  the target, which only a task that allows it discards (logged with `written`, the bytes discarded where
  ZFS reports them, and counted in the run's summary); MOUNT: only what this run's own mounting changed.
- `FullSend(source@snapshot -> target)`: `zfs send [flags] source@snapshot | zfs recv -s -u [flags] target`.
- `IncrementalSend(source@base..snapshot -> target)`: `zfs send -I source@base source@snapshot` when
  `intermediates` (every snapshot between arrives too, as listed in `arrives`), else `zfs send -i`.
  `if_modified`: where ZFS cannot report `written` (zfs-fuse), the planner cannot see changes made on the
  target; a task that allows discarding them carries this rollback, run only when the receive is refused
  because the target was modified since `base`, after which the send is tried once more.
- `SetReadonly(dataset)`: `zfs set readonly=on dataset`.
- `Mount(dataset)`: `zfs mount -o ro` what the receives (all `-u`) left unmounted, once the read-only
  policy is applied, so that neither mounting nor anyone else writes to a target after its newest snapshot
  (OpenZFS upgrades the accounting of a newly encrypted dataset at its first read-write mount). The
  `readonly` property is left as the policy set it (IGNORE: untouched). `recursive`: the descendant
  filesystems too (-R streams). `reverts`: rollbacks run when the step did mount something: where mounting
  a filesystem inside another changes the outer one (zfs-fuse stamps the access time of the mountpoint
  directory), that change is ours alone, and it would make the next incremental receive fail.

Send flags (`SendOptions`): `raw` -w, `replicate` -R, `properties` -p (implied by -R and -w), `large_block`
-L, `embed` -e, `compressed` -c. Receive flags (`ReceiveOptions`): always -s where supported; `force` -F
(only for a full stream where the plan already lists what it destroys, or the target holds no snapshots:
incremental receives are never forced, changes on the target are rolled back by explicit steps), always -u
(`Mount` steps mount afterwards; `mount` says whether the run mounts at all),
`exclude_properties` -x each, `override_properties` -o each, `encryption`: NEW_KEY
-o encryption=on -o keyformat=.. -o keylocation=.. (the key itself never enters the plan), INHERIT
-x encryption, KEEP nothing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar

# --- options carried by send steps -----------------------------------------------------------------


class EncryptionMode(StrEnum):
    KEEP = "KEEP"  # receive as the stream says (raw streams stay encrypted; plain streams inherit)
    INHERIT = "INHERIT"  # the new dataset inherits its parent's encryption
    NEW_KEY = "NEW_KEY"  # the new dataset becomes an encryption root with the task's key


@dataclass(frozen=True)
class ReceiveEncryption:
    mode: EncryptionMode = EncryptionMode.KEEP
    key_format: str | None = None  # "hex" or "passphrase" (NEW_KEY only)
    key_location: str | None = None  # where the executor writes the key (NEW_KEY only)


@dataclass(frozen=True)
class SendOptions:
    raw: bool = False
    replicate: bool = False
    properties: bool = True
    large_block: bool = True
    embed: bool = False
    compressed: bool = True


@dataclass(frozen=True)
class ReceiveOptions:
    force: bool = False
    mount: bool = True
    exclude_properties: tuple[str, ...] = ()
    override_properties: tuple[tuple[str, str], ...] = ()
    encryption: ReceiveEncryption = ReceiveEncryption()


@dataclass(frozen=True)
class ByteEstimate:
    """Expected stream size. `exact` when measured by `zfs send -nvP`; the planner's own figures come from
    the snapshots' `referenced`/`written` and are not."""

    bytes: int
    exact: bool = False


# --- steps ------------------------------------------------------------------------------------------


class DestroyReason(StrEnum):
    RETENTION = "RETENTION"  # target retention, run before receiving to free space
    FROM_SCRATCH = "FROM_SCRATCH"  # no common snapshot; allow_from_scratch replaces the target


@dataclass(frozen=True)
class Step:
    kind: ClassVar[str]


@dataclass(frozen=True)
class CreateParents(Step):
    kind: ClassVar[str] = "create_parents"
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class DiscardResumeToken(Step):
    kind: ClassVar[str] = "discard_resume_token"
    dataset: str
    token: str
    reason: str


@dataclass(frozen=True)
class Resume(Step):
    kind: ClassVar[str] = "resume"
    source: str
    target: str
    token: str
    snapshot: str  # the source snapshot the interrupted stream delivers
    receive: ReceiveOptions = ReceiveOptions()
    estimate: ByteEstimate | None = None

    @property
    def arrives(self) -> tuple[str, ...]:
        return (self.snapshot,)


@dataclass(frozen=True)
class DestroySnapshots(Step):
    kind: ClassVar[str] = "destroy_snapshots"
    dataset: str
    snapshots: tuple[str, ...]
    reason: DestroyReason


class RollbackReason(StrEnum):
    CHANGES = "CHANGES"  # snapshots or data made on the target since `snapshot`: needs the task's permission
    MOUNT = "MOUNT"  # only what this run's own mounting changed (no data)


@dataclass(frozen=True)
class Rollback(Step):
    kind: ClassVar[str] = "rollback"
    dataset: str
    snapshot: str
    destroys: tuple[str, ...] = ()  # later snapshots destroyed by the rollback, oldest first
    reason: RollbackReason = RollbackReason.CHANGES
    #: Bytes written to the target since `snapshot` (what a CHANGES rollback discards); None: unknown.
    written: int | None = None


@dataclass(frozen=True)
class FullSend(Step):
    kind: ClassVar[str] = "full_send"
    source: str
    target: str
    snapshot: str
    #: Snapshots the target holds afterwards, oldest first (more than one only for -R streams).
    arrives: tuple[str, ...]
    send: SendOptions = SendOptions()
    receive: ReceiveOptions = ReceiveOptions()
    estimate: ByteEstimate | None = None


@dataclass(frozen=True)
class IncrementalSend(Step):
    kind: ClassVar[str] = "incremental_send"
    source: str
    target: str
    base: str
    snapshot: str
    intermediates: bool  # True: -I (every snapshot between base and snapshot), False: -i
    arrives: tuple[str, ...]  # snapshots the stream creates on the target, oldest first
    send: SendOptions = SendOptions()
    receive: ReceiveOptions = ReceiveOptions()
    estimate: ByteEstimate | None = None
    #: Run when the receive is refused because the target was modified since `base`, then send again.
    if_modified: Rollback | None = None


@dataclass(frozen=True)
class SetReadonly(Step):
    kind: ClassVar[str] = "set_readonly"
    dataset: str


@dataclass(frozen=True)
class Mount(Step):
    kind: ClassVar[str] = "mount"
    dataset: str
    recursive: bool = False
    reverts: tuple[Rollback, ...] = ()  # run when this step mounted something (reason MOUNT)


SendStep = Resume | FullSend | IncrementalSend

# --- conflicts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    """Why a dataset cannot be replicated as configured. `message` is what the user reads."""

    code: ClassVar[str]
    dataset: str

    @property
    def message(self) -> str:
        raise NotImplementedError


def _names(snapshots: tuple[str, ...], limit: int = 5) -> str:
    shown = ", ".join(snapshots[:limit])
    more = len(snapshots) - limit
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class SourceMissing(Conflict):
    code: ClassVar[str] = "SOURCE_MISSING"

    @property
    def message(self) -> str:
        return f"Source dataset {self.dataset!r} does not exist"


@dataclass(frozen=True)
class NoSelectedSnapshots(Conflict):
    code: ClassVar[str] = "NO_SELECTED_SNAPSHOTS"

    @property
    def message(self) -> str:
        return f"Dataset {self.dataset!r} does not have any matching snapshots to replicate"


@dataclass(frozen=True)
class TargetTypeMismatch(Conflict):
    code: ClassVar[str] = "TARGET_TYPE_MISMATCH"
    source_type: str
    target_type: str

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} is a {self.target_type} but its source is a {self.source_type}; "
                f"choose another target")


@dataclass(frozen=True)
class ParentIsVolume(Conflict):
    code: ClassVar[str] = "PARENT_IS_VOLUME"
    parent: str

    @property
    def message(self) -> str:
        return f"Target {self.dataset!r} cannot be created: its parent {self.parent!r} is a volume"


@dataclass(frozen=True)
class PoolMissing(Conflict):
    code: ClassVar[str] = "POOL_MISSING"
    pool: str

    @property
    def message(self) -> str:
        return f"Target {self.dataset!r} cannot be created: pool {self.pool!r} does not exist on the target host"


@dataclass(frozen=True)
class TargetExists(Conflict):
    code: ClassVar[str] = "TARGET_EXISTS"

    @property
    def message(self) -> str:
        return f"Target dataset {self.dataset!r} already exists (this run only replicates from scratch)"


@dataclass(frozen=True)
class NoCommonBase(Conflict):
    code: ClassVar[str] = "NO_COMMON_BASE"
    source: str
    snapshots: tuple[str, ...]  # the target's snapshots, none of which is on the source

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} has {len(self.snapshots)} snapshot(s) ({_names(self.snapshots)}) "
                f"but none is also on {self.source!r} with the same name and guid, so there is no "
                f"incremental base. Replicating from scratch would destroy them: enable "
                f"'allow from scratch' to do so, or destroy them yourself")


@dataclass(frozen=True)
class TargetHasData(Conflict):
    code: ClassVar[str] = "TARGET_HAS_DATA"
    referenced: int | None

    @property
    def message(self) -> str:
        size = "an unknown amount" if self.referenced is None else f"{self.referenced} bytes"
        return (f"Target {self.dataset!r} has no snapshots but holds data ({size}); a full receive would "
                f"overwrite it. Enable 'allow from scratch' or choose an empty target")


@dataclass(frozen=True)
class Diverged(Conflict):
    code: ClassVar[str] = "DIVERGED"
    base: str
    snapshots: tuple[str, ...]  # target snapshots newer than the base, oldest first

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} has diverged: snapshot(s) {_names(self.snapshots)} were taken "
                f"after the last common snapshot {self.base!r} and are not on the source. Allow rollback "
                f"to destroy them, or destroy them yourself")


@dataclass(frozen=True)
class TargetModified(Conflict):
    code: ClassVar[str] = "TARGET_MODIFIED"
    base: str
    written: int

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} was modified since its snapshot {self.base!r} ({self.written} "
                f"bytes written). Allow rollback to discard the changes, or roll it back yourself")


@dataclass(frozen=True)
class UnrelatedSnapshot(Conflict):
    code: ClassVar[str] = "UNRELATED_SNAPSHOT"
    snapshot: str
    source_guid: int
    target_guid: int

    @property
    def message(self) -> str:
        return (f"Snapshot {self.dataset}@{self.snapshot} is not the source's snapshot of the same name "
                f"(guid {self.target_guid} on the target, {self.source_guid} on the source); rename or "
                f"destroy it on the target")


@dataclass(frozen=True)
class ReadonlyRequired(Conflict):
    code: ClassVar[str] = "READONLY_REQUIRED"

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} exists and is not read-only, but the task requires read-only "
                f"targets: set readonly=on on it or change the task's read-only policy")


@dataclass(frozen=True)
class EncryptionConflict(Conflict):
    code: ClassVar[str] = "ENCRYPTION"
    reason: str

    @property
    def message(self) -> str:
        return f"Target {self.dataset!r}: {self.reason}"


@dataclass(frozen=True)
class ReplicateChildMissingBase(Conflict):
    code: ClassVar[str] = "REPLICATE_CHILD_MISSING_BASE"
    base: str

    @property
    def message(self) -> str:
        return (f"Target {self.dataset!r} lacks the common snapshot {self.base!r} that full-filesystem "
                f"replication needs on every child (an earlier -R transfer stopped half-way); destroy "
                f"{self.dataset!r} on the target or allow from scratch")


# --- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPlan:
    source: str
    target: str
    #: The newest snapshot on both sides by name and guid, once a planned `Resume` has delivered its
    #: snapshot: where the incremental sends start (None: no common base, the first send is full).
    base: str | None = None
    steps: tuple[Step, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    #: A target this plan needs an earlier dataset plan to create (by its full send).
    depends_on: str | None = None
    #: Why nothing is done for this dataset (not an error: e.g. no snapshot yet).
    skipped: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def runnable(self) -> bool:
        return not self.conflicts and self.skipped is None

    @property
    def sends(self) -> tuple[SendStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, Resume | FullSend | IncrementalSend))

    def destroys(self) -> list[tuple[str, str]]:
        """(dataset, snapshot) for every snapshot the steps destroy, in step order."""
        out: list[tuple[str, str]] = []
        for step in self.steps:
            if isinstance(step, DestroySnapshots):
                out += [(step.dataset, s) for s in step.snapshots]
            elif isinstance(step, Rollback):
                out += [(step.dataset, s) for s in step.destroys]
        return out

    def rollbacks(self) -> list[Rollback]:
        """Rollbacks that discard changes made on the target (CHANGES): planned ones, and the conditional
        ones that run only if a receive is refused because the target was modified."""
        planned = [s for s in self.steps if isinstance(s, Rollback)]
        conditional = [s.if_modified for s in self.steps if isinstance(s, IncrementalSend) and s.if_modified]
        return [r for r in planned + conditional if r.reason is RollbackReason.CHANGES]


@dataclass(frozen=True)
class Plan:
    now: datetime
    datasets: tuple[DatasetPlan, ...] = ()

    @property
    def conflicts(self) -> tuple[Conflict, ...]:
        return tuple(c for d in self.datasets for c in d.conflicts)

    @property
    def ok(self) -> bool:
        return not self.conflicts

    def destroys(self) -> list[tuple[str, str]]:
        return [x for d in self.datasets for x in d.destroys()]

    @property
    def snapshots_total(self) -> int:
        """Snapshots the runnable plans deliver: the denominator of snapshot-weighted progress."""
        return sum(len(s.arrives) for d in self.datasets if d.runnable for s in d.sends)

    @property
    def estimated_bytes(self) -> int | None:
        """Sum of the runnable sends' estimates; None when any is unknown."""
        sends = [s for d in self.datasets if d.runnable for s in d.sends]
        if any(s.estimate is None for s in sends):
            return None
        return sum(s.estimate.bytes for s in sends if s.estimate is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: steps carry their `kind`, conflicts their `code` and `message`."""
        return {
            "now": self.now.isoformat(),
            "ok": self.ok,
            "snapshots_total": self.snapshots_total,
            "estimated_bytes": self.estimated_bytes,
            # Summaries for readers that do not walk every dataset: all conflicts, all destruction.
            "conflicts": [_jsonable(c) for c in self.conflicts],
            "destroys": [f"{dataset}@{snapshot}" for dataset, snapshot in self.destroys()],
            "rollbacks": [f"{r.dataset}@{r.snapshot}" for d in self.datasets for r in d.rollbacks()],
            "datasets": [_jsonable(d) for d in self.datasets],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Step | Conflict | DatasetPlan | ByteEstimate | SendOptions | ReceiveOptions
                  | ReceiveEncryption):
        out: dict[str, Any] = {}
        if isinstance(value, Step):
            out["kind"] = value.kind
        if isinstance(value, Conflict):
            out["code"] = value.code
            out["message"] = value.message
        for f in dataclasses.fields(value):
            out[f.name] = _jsonable(getattr(value, f.name))
        if isinstance(value, DatasetPlan):
            out["runnable"] = value.runnable
        if isinstance(value, ReceiveOptions):
            out["override_properties"] = dict(value.override_properties)
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
