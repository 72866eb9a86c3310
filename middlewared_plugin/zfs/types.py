"""Plain values describing what `zfs` reported: datasets, snapshots, pools, destroy outcomes.

They carry no behaviour beyond naming helpers so that the planner and retention can be pure functions of
them. Sizes are bytes, `creation` is timezone-aware UTC, `guid`/`createtxg` are ZFS's own identifiers
(the planner matches snapshots by guid, orders them by createtxg).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Dataset:
    name: str
    type: str  # "filesystem" or "volume"
    guid: int
    createtxg: int
    creation: datetime
    used: int
    referenced: int
    readonly: bool
    mountpoint: str | None  # None for volumes and for mountpoint=none/legacy
    #: Set while a resumable receive into this dataset was interrupted (None where unsupported or unset).
    receive_resume_token: str | None = None
    user_properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class PropertyValue:
    """One native property as `zfs get -p` reported it."""

    #: The exact value as printed (`-` where unset or not applicable).
    raw: str
    #: Where it comes from, in TrueNAS's words: NONE, DEFAULT, LOCAL, TEMPORARY, INHERITED or RECEIVED.
    source: str
    #: int for numbers, datetime for `creation`, None where unset, the raw text otherwise.
    parsed: Any


@dataclass(frozen=True)
class Snapshot:
    dataset: str
    name: str  # the part after "@"
    guid: int
    createtxg: int
    creation: datetime
    used: int
    referenced: int
    #: Number of `zfs hold` tags; a held snapshot cannot be destroyed.
    userrefs: int = 0
    #: Bytes written since the previous snapshot (None where the `written` property does not exist).
    written: int | None = None
    user_properties: Mapping[str, str] = field(default_factory=dict)
    #: Every native property read with it (the ones above and any asked for), by name.
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.dataset}@{self.name}"

    @property
    def held(self) -> bool:
        return self.userrefs > 0


@dataclass(frozen=True)
class Pool:
    name: str
    health: str
    guid: str


@dataclass(frozen=True)
class ImportablePool:
    """An exported pool `zpool import` found on the searched devices."""

    name: str
    guid: str
    state: str


@dataclass(frozen=True)
class DestroyResult:
    """What a batched snapshot destroy did. Snapshots ZFS refused (held, busy, cloned) are skipped, not fatal."""

    destroyed: list[str] = field(default_factory=list)
    #: full snapshot name -> ZFS's reason ("dataset is busy", "snapshot has dependent clones", ...)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Names that no longer existed when we tried (someone else destroyed them first).
    missing: list[str] = field(default_factory=list)


def split_snapshot_name(full_name: str) -> tuple[str, str]:
    """"pool/ds@snap" -> ("pool/ds", "snap"); raises ValueError without exactly one "@"."""
    dataset, sep, name = full_name.partition("@")
    if not sep or not dataset or not name or "@" in name:
        raise ValueError(f"{full_name!r} is not a snapshot name (dataset@name)")
    return dataset, name


def is_same_or_descendant(name: str, ancestor: str) -> bool:
    """True for `ancestor` itself and every dataset below it (not for siblings sharing a prefix)."""
    return name == ancestor or name.startswith(ancestor + "/")
