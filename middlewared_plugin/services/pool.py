"""`pool.*`, `pool.dataset.*` and `pool.snapshot.query`: this host's pools, datasets and snapshots.

Listings are views of ZFS for clients and the web page to browse; their entries follow TrueNAS's shapes
closely enough for its clients (dataset id = name, properties as `{value, rawvalue, parsed}`). Pools get
stable integer ids (TrueNAS's `pool.export(id)` takes one) from the `pool` table, which records each pool
this server has seen imported, by guid.

What changes a pool or deletes a dataset also acts on the tasks that use it (`attachments.py`): deleting
a dataset deletes them, exporting a pool disables them (or deletes them, with `cascade`), importing a pool
enables its disabled ones again.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field

from middlewared_plugin.attachments import attachments_of, delete_all, listing, toggle_all
from middlewared_plugin.errors import CallError
from middlewared_plugin.query.filters import filter_list
from middlewared_plugin.services.base import ApiModel, CallContext, IdArgs, NonEmptyStr, QueryArgs, Service, api_method
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.types import Dataset, Pool, Snapshot

T = TypeVar("T")
logger = logging.getLogger(__name__)


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


class ExportOptions(ApiModel):
    cascade: bool = False
    restart_services: bool = False
    destroy: bool = False


class ExportArgs(ApiModel):
    id: int
    options: ExportOptions = ExportOptions()


class PoolImport(ApiModel):
    guid: NonEmptyStr
    name: Annotated[str, Field(min_length=1, max_length=50)] | None = None


class ImportArgs(ApiModel):
    pool_import: PoolImport


class PoolService(Service):
    namespace = "pool"
    role_prefix = "POOL"

    def zfs(self) -> Zfs:
        return Zfs(self.app.zfs_runner)

    async def _recorded(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """guid -> (pool id, row) of every pool this server has recorded."""
        return {doc["guid"]: (id, doc) for id, doc in await self.app.store.all("pool")}

    async def _imported(self, recorded: dict[str, tuple[int, dict[str, Any]]]) -> list[tuple[int, Pool]]:
        """The imported pools with their ids; a pool seen for the first time is recorded (and gets one) now."""
        found = []
        for pool in await self.zfs().pools():
            if pool.guid not in recorded:
                row = {"name": pool.name, "guid": pool.guid}
                recorded[pool.guid] = (await self.app.store.insert("pool", row), row)
            found.append((recorded[pool.guid][0], pool))
        return found

    async def _entries(self) -> list[dict[str, Any]]:
        recorded = await self._recorded()
        imported = await self._imported(recorded)
        seen = {pool.guid for _, pool in imported}
        entries = [{"id": id, "name": pool.name, "guid": pool.guid, "status": pool.health,
                    "healthy": pool.health == "ONLINE", "path": await self._mountpoint(pool.name),
                    "is_decrypted": True} for id, pool in imported]
        # Recorded but not imported any more (exported by someone else, disks gone): OFFLINE, as TrueNAS shows.
        entries += [{"id": id, "name": doc["name"], "guid": guid, "status": "OFFLINE", "healthy": False,
                     "path": None, "is_decrypted": True}
                    for guid, (id, doc) in recorded.items() if guid not in seen]
        return sorted(entries, key=lambda e: e["id"])

    async def _mountpoint(self, name: str) -> str | None:
        try:
            return (await self.zfs().get_properties(name, ["mountpoint"]))["mountpoint"]
        except CallError:
            return None

    async def _get(self, id: int) -> dict[str, Any]:
        found = [e for e in await self._entries() if e["id"] == id]
        if not found:
            raise CallError(f"Pool {id} does not exist", errno.ENOENT)
        return found[0]

    @api_method(QueryArgs, roles=("POOL_READ",), filterable=True)
    async def query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        """Pools this server knows: the imported ones, and recorded ones that are gone (status OFFLINE)."""
        return filter_list(await self._entries(), filters, options)

    @api_method(IdArgs, roles=("POOL_READ",))
    async def attachments(self, ctx: CallContext, id: int) -> list[dict[str, Any]]:
        """Enabled tasks that use the pool, grouped by type."""
        pool = await self._get(id)
        return listing(await attachments_of(self.app, pool["name"]))

    @api_method(ExportArgs, roles=("POOL_WRITE",), job=True, lock=lambda args: f"pool_export_{args[0]}")
    async def export(self, ctx: CallContext, id: int, options: dict[str, Any]) -> None:
        """Export the pool (or, with `destroy`, PERMANENTLY destroy it). Tasks that use it are disabled, or
        deleted with `cascade`, first: none of them can run without the pool."""
        job = ctx.job
        assert job is not None
        pool = await self._get(id)
        attached = await attachments_of(self.app, pool["name"])
        # Disabled first, so nothing starts on the pool while it goes; deleted (`cascade`) only once it is gone.
        job.set_progress(10, "Disabling pool attachments")
        disabled = [a for a in attached if a.enabled]
        await toggle_all(disabled, False)
        if pool["status"] != "OFFLINE":
            try:
                if options["destroy"]:
                    job.set_progress(50, f"Destroying pool {pool['name']}")
                    await self.zfs().destroy_pool(pool["name"])
                    job.log(f"Destroyed pool {pool['name']}")
                else:
                    job.set_progress(50, f"Exporting pool {pool['name']}")
                    await self.zfs().export_pool(pool["name"])
            except CallError:
                await toggle_all(disabled, True)  # the pool stays: so do its tasks, as they were
                raise
        if options["cascade"]:
            job.set_progress(90, "Deleting pool attachments")
            await delete_all(attached)
        for attachment in attached if options["cascade"] else disabled:
            job.log(f"{'Deleted' if options['cascade'] else 'Disabled'} {attachment.type} {attachment.name}")
        await self.app.store.delete("pool", id)
        job.set_progress(100, f"Pool {pool['name']} {'destroyed' if options['destroy'] else 'exported'}")

    @api_method(roles=("POOL_WRITE",), job=True)
    async def import_find(self, ctx: CallContext) -> list[dict[str, Any]]:
        """Exported pools that can be imported, on the devices (and directories) searched."""
        found = await self.zfs().importable_pools(self.app.settings.pool_import_dirs)
        return [{"name": p.name, "guid": p.guid, "status": p.state, "hostname": ""} for p in found]

    @api_method(ImportArgs, roles=("POOL_WRITE",), job=True, lock="pool_import")
    async def import_pool(self, ctx: CallContext, pool_import: dict[str, Any]) -> bool:
        """Import a pool `import_find` found, by guid (optionally under a new name); the tasks that use it and
        were disabled are enabled again."""
        job = ctx.job
        assert job is not None
        guid, new_name = pool_import["guid"], pool_import.get("name")
        zfs = self.zfs()
        found = {p.guid: p for p in await zfs.importable_pools(self.app.settings.pool_import_dirs)}
        if guid not in found:
            raise CallError(f"Pool with guid {guid!r} not found", errno.ENOENT)
        name = new_name or found[guid].name
        job.set_progress(10, f"Importing pool {name}")
        await zfs.import_pool(guid, new_name=new_name, search_dirs=self.app.settings.pool_import_dirs)
        await self._imported(await self._recorded())
        job.set_progress(90, "Enabling pool attachments")
        disabled = [a for a in await attachments_of(self.app, name) if not a.enabled]
        await toggle_all(disabled, True)
        for attachment in disabled:
            job.log(f"Enabled {attachment.type} {attachment.name}")
        job.set_progress(100, f"Pool {name} imported")
        return True


class DatasetDeleteOptions(ApiModel):
    recursive: bool = False
    force: bool = False


class DatasetDeleteArgs(ApiModel):
    id: NonEmptyStr
    options: DatasetDeleteOptions = DatasetDeleteOptions()


class DatasetIdArgs(ApiModel):
    id: NonEmptyStr


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

    @api_method(DatasetIdArgs, roles=("DATASET_READ",))
    async def attachments(self, ctx: CallContext, id: str) -> list[dict[str, Any]]:
        """Enabled tasks that use the dataset or a dataset below it, grouped by type."""
        return listing(await attachments_of(self.app, id))

    @api_method(DatasetDeleteArgs, roles=("DATASET_DELETE",))
    async def delete(self, ctx: CallContext, id: str, options: dict[str, Any]) -> bool:
        """Destroy a dataset (with `recursive`, its children too), then delete the tasks that used it."""
        zfs = Zfs(self.app.zfs_runner)
        if "@" in id or not await zfs.exists(id):
            raise CallError(f"Dataset {id!r} does not exist", errno.ENOENT)
        if "/" not in id:
            raise CallError(f"{id!r} is the root dataset of a pool: export or destroy the pool instead",
                            errno.EINVAL)
        attached = await attachments_of(self.app, id)
        await zfs.destroy_dataset(id, recursive=options["recursive"], force=options["force"])
        await delete_all(attached)
        logger.info("Destroyed dataset %s%s; deleted with it: %s", id, " and its children" * options["recursive"],
                    ", ".join(f"{a.type} {a.name}" for a in attached) or "no task")
        return True


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
