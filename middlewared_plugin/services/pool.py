"""`pool.dataset.query` and `pool.snapshot.query`: read-only views of this host's ZFS, for clients and
the web page to browse. Entries follow TrueNAS's shapes closely enough for its clients (id = name,
properties as `{value, rawvalue, parsed}`).
"""
from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from middlewared_plugin.errors import CallError
from middlewared_plugin.query.filters import filter_list
from middlewared_plugin.services.base import CallContext, QueryArgs, Service, api_method
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.types import Dataset, Snapshot

T = TypeVar("T")


def _prop(value: Any, raw: Any = None) -> dict[str, Any]:
    return {"value": str(value), "rawvalue": str(raw if raw is not None else value), "parsed": value}


def dataset_entry(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.name,
        "name": dataset.name,
        "pool": dataset.pool,
        "type": dataset.type.upper(),
        "mountpoint": dataset.mountpoint,
        "encrypted": False,
        "readonly": _prop(dataset.readonly, "on" if dataset.readonly else "off"),
        "used": _prop(dataset.used),
        "referenced": _prop(dataset.referenced),
        "creation": _prop(dataset.creation),
        "guid": _prop(str(dataset.guid)),
        "user_properties": dict(dataset.user_properties),
    }


def snapshot_entry(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.full_name,
        "name": snapshot.full_name,
        "dataset": snapshot.dataset,
        "snapshot_name": snapshot.name,
        "pool": snapshot.dataset.split("/", 1)[0],
        "type": "SNAPSHOT",
        "createtxg": str(snapshot.createtxg),
        "holds": {} if not snapshot.held else {"userrefs": snapshot.userrefs},
        "properties": {
            "creation": _prop(snapshot.creation),
            "used": _prop(snapshot.used),
            "referenced": _prop(snapshot.referenced),
            "written": _prop(snapshot.written),
            "guid": _prop(str(snapshot.guid)),
            "userrefs": _prop(snapshot.userrefs),
        },
        "user_properties": dict(snapshot.user_properties),
    }


class PoolDatasetService(Service):
    namespace = "pool.dataset"
    role_prefix = "DATASET"

    @api_method(QueryArgs, roles=("DATASET_READ",), filterable=True)
    async def query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        zfs = Zfs(self.app.zfs_runner)
        entries = []
        for pool in await zfs.pools():
            entries.extend(dataset_entry(d) for d in await _of_pool(zfs.list_datasets, pool.name))
        return filter_list(entries, filters, options)


class PoolSnapshotService(Service):
    namespace = "pool.snapshot"
    role_prefix = "SNAPSHOT"

    @api_method(QueryArgs, roles=("SNAPSHOT_READ",), filterable=True)
    async def query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        zfs = Zfs(self.app.zfs_runner)
        entries = []
        for pool in await zfs.pools():
            entries.extend(snapshot_entry(s) for s in await _of_pool(zfs.list_snapshots, pool.name))
        return filter_list(entries, filters, options)


async def _of_pool(lister: Callable[[str], Awaitable[list[T]]], pool: str) -> list[T]:
    """What a pool holds; nothing when it went away between listing the pools and listing it."""
    try:
        return await lister(pool)
    except CallError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
