"""What the planner is told about one side of a replication: datasets, their snapshots, resume state.

These are the planner's only inputs about ZFS, kept minimal and independent of `zfs/` so the planner stays
a pure function. The executor builds them from `zfs.types` values with a trivial adapter:

    SnapshotInfo(s.name, s.guid, s.createtxg, referenced=s.referenced, written=s.written)
    DatasetInfo(d.name, DatasetType(d.type), snapshots, resume_token=ResumeToken(...) if token else None,
                readonly=d.readonly, referenced=d.referenced, encrypted=..., written=..., properties=...)

A listing of the target side must also hold the target dataset's existing ancestors (so the planner knows
which parents to create and what an inheriting dataset would inherit from).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class DatasetType(StrEnum):
    FILESYSTEM = "filesystem"
    VOLUME = "volume"


@dataclass(frozen=True)
class SnapshotInfo:
    name: str  # the part after "@"
    guid: int
    createtxg: int
    #: Bytes the snapshot references: the size estimate of a full send of it.
    referenced: int | None = None
    #: Bytes written since the previous snapshot: summed to estimate an incremental send.
    written: int | None = None


@dataclass(frozen=True)
class ResumeToken:
    """A target's `receive_resume_token`, with the fields the ZFS layer decoded from it (`zfs send -nvt`).

    Undecoded fields are None; a token whose `toguid` is unknown cannot be checked and is discarded.
    """

    token: str
    toguid: int | None = None
    #: The incremental source's guid; None for a token of a full stream.
    fromguid: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    type: DatasetType = DatasetType.FILESYSTEM
    snapshots: tuple[SnapshotInfo, ...] = ()
    resume_token: ResumeToken | None = None
    readonly: bool | None = None
    encrypted: bool = False
    #: Bytes the head references; decides whether an existing target without snapshots is empty.
    referenced: int | None = None
    #: Bytes written to the head since its newest snapshot (the `written` property); None when unknown.
    written: int | None = None
    #: Values of the properties the task excludes or overrides, only those that apply to this dataset's
    #: type (`zfs get` reports source "-" for the others). None when not fetched: nothing is filtered.
    properties: Mapping[str, str] | None = None

    def ordered_snapshots(self) -> list[SnapshotInfo]:
        """Oldest first: by createtxg, then name (snapshots taken by one command share a txg)."""
        return sorted(self.snapshots, key=lambda s: (s.createtxg, s.name))


@dataclass(frozen=True)
class Listing:
    """Every dataset known on one side, by full name."""

    datasets: Mapping[str, DatasetInfo] = field(default_factory=dict)
    #: Whether this side's ZFS has native encryption (a target without it cannot encrypt what it receives).
    native_encryption: bool = True

    @classmethod
    def of(cls, datasets: Iterable[DatasetInfo], *, native_encryption: bool = True) -> Listing:
        return cls({d.name: d for d in datasets}, native_encryption)

    def get(self, name: str) -> DatasetInfo | None:
        return self.datasets.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.datasets

    def tree(self, root: str) -> Iterator[DatasetInfo]:
        """`root` and its descendants, parents before children."""
        names = [n for n in self.datasets if n == root or n.startswith(root + "/")]
        for name in sorted(names, key=lambda n: n.split("/")):
            yield self.datasets[name]
