"""`pool.*`, `pool.dataset.*` and `pool.snapshot.*`: this host's pools, datasets and snapshots.

Listings are views of ZFS for clients and the web page to browse; their entries follow TrueNAS's shapes
closely enough for its clients (dataset id = name, properties as `{value, rawvalue, parsed}`, snapshots'
with `source` too). Pools get stable integer ids (TrueNAS's `pool.export(id)` takes one) from the `pool`
table, which records each pool this server has seen imported, by guid.

What changes a pool or deletes a dataset also acts on the tasks that use it (`attachments.py`): deleting
a dataset deletes them, exporting a pool disables them (or deletes them, with `cascade`), importing a pool
enables its disabled ones again.
"""
from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from middlewared_plugin.attachments import (
    Attachment,
    attachments_of,
    dataset_of_path,
    delegate_names,
    delete_all,
    listing,
    toggle_all,
)
from middlewared_plugin.errors import CallError, InstanceNotFound, ValidationError, ValidationErrors
from middlewared_plugin.events import Event, EventKind
from middlewared_plugin.query.filters import filter_list
from middlewared_plugin.remote.runner import CommandFailed
from middlewared_plugin.services.base import (
    ApiModel,
    CallContext,
    IdArgs,
    NonEmptyStr,
    QueryArgs,
    Service,
    api_method,
    pydantic_to_validation_errors,
)
from middlewared_plugin.services.common import DatasetName, NewPoolName, SnapshotNameSchema
from middlewared_plugin.services.pool_dataset import (
    CREATE_ONLY,
    CREATE_SCHEMA,
    PROPERTIES,
    UPDATE_ONLY,
    UPDATE_SCHEMA,
    AttachmentDelegateArgs,
    AttachmentsWithPathArgs,
    DatasetCreateArgs,
    DatasetUpdateArgs,
    PoolDatasetUpdate,
    apply_update,
    check_encryption,
    check_name,
    check_recordsize,
    check_type_fields,
    check_user_properties_update,
    check_user_property_names,
    check_volume,
    properties_to_set,
    refusal,
    user_property_changes,
)
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.features import Feature
from middlewared_plugin.zfs.names import property_name_error, snapshot_name_error
from middlewared_plugin.zfs.types import Dataset, Pool, PropertyValue, Snapshot, split_snapshot_name

if TYPE_CHECKING:
    from middlewared_plugin.app import App

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


#: The properties of a `pool.snapshot.query` entry when `extra.properties` does not name them.
SNAPSHOT_PROPERTIES = ("createtxg", "creation", "used", "referenced", "written", "guid", "userrefs")
#: The hold tag TrueNAS's `pool.snapshot.hold` places, the one its entries' `holds` report.
TRUENAS_HOLD_TAG = "truenas"


def _zfs_prop(value: PropertyValue) -> dict[str, Any]:
    return {"value": value.raw, "rawvalue": value.raw, "source": value.source, "parsed": value.parsed}


def snapshot_entry(
    snapshot: Snapshot, properties: Iterable[str] = SNAPSHOT_PROPERTIES, held: Collection[str] | None = None,
) -> dict[str, Any]:
    """TrueNAS's entry: `properties` as read (`name` comes from the entry itself, as on TrueNAS), `holds`
    only when asked for (`held`: full names carrying the TrueNAS hold tag)."""
    props = {p: _zfs_prop(snapshot.properties[p]) for p in properties if p in snapshot.properties}
    if "name" in properties:
        props["name"] = {"value": snapshot.full_name, "rawvalue": snapshot.full_name, "source": "NONE",
                         "parsed": snapshot.full_name}
    entry = {
        "id": snapshot.full_name,
        "name": snapshot.full_name,
        "dataset": snapshot.dataset,
        "snapshot_name": snapshot.name,
        "pool": snapshot.dataset.split("/", 1)[0],
        "type": "SNAPSHOT",
        "createtxg": str(snapshot.createtxg),
        "properties": props,
        "user_properties": dict(snapshot.user_properties),
    }
    if held is not None:
        entry["holds"] = {TRUENAS_HOLD_TAG: 1} if snapshot.full_name in held else {}
    return entry


class ExportOptions(ApiModel):
    cascade: bool = False
    restart_services: bool = False
    destroy: bool = False


class ExportArgs(ApiModel):
    id: int
    options: ExportOptions = ExportOptions()


class PoolImport(ApiModel):
    guid: NonEmptyStr
    #: Reaches `zpool import` as the new name: ZFS's pool grammar, so never an option such as `-FX`.
    name: Annotated[NewPoolName, Field(max_length=50)] | None = None


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

    def event_roles(self) -> dict[str, tuple[str, ...]]:
        return {DATASET_EVENT: (self.read_role,)}

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

    @api_method(DatasetCreateArgs, roles=("DATASET_WRITE",))
    async def create(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """Create a filesystem (a volume where the host has zvols) with TrueNAS's arguments and rules
        (`services/pool_dataset.py`); returns its `query` entry."""
        zfs = Zfs(self.app.zfs_runner)
        features = await zfs.features()
        name, schema = data["name"], CREATE_SCHEMA
        verrors = ValidationErrors()
        check_name(verrors, name)
        verrors.check()
        parent = await _creation_parent(zfs, verrors, name, data["create_ancestors"])
        verrors.check()  # what follows reads the parent
        encryptable = features.has(Feature.ENCRYPTION)
        info = await zfs.get_properties(parent, ["type", "readonly", "available"] + ["encryption"] * encryptable)
        if await zfs.exists(name):
            verrors.add(f"{schema}.name", f"Dataset {name} already exists")
        if info["readonly"] == "on":
            verrors.add(f"{schema}.readonly", f"Turn off readonly mode on {parent} to create {name.rsplit('/', 1)[1]}")
        if info["type"] == "volume":
            verrors.add(f"{schema}.name", f"{parent}: parent may not be a ZFS volume")
        volume = data["type"] == "VOLUME"
        if volume and not features.has(Feature.ZVOLS):
            verrors.add(f"{schema}.type", f"ZFS on host {features.host} does not support {Feature.ZVOLS.value}")
        elif volume:
            check_volume(verrors, data, int(info["available"] or 0))
        if data["share_type"] != "GENERIC":
            verrors.add(f"{schema}.share_type", "Only GENERIC: this server sets no ACLs and manages no shares")
        given = [key for key, value in data.items() if value is not None]
        check_type_fields(verrors, schema, data["type"], given)
        check_recordsize(verrors, schema, data["recordsize"])
        check_user_property_names(verrors, f"{schema}.user_properties", data["user_properties"])
        values, _ = properties_to_set(verrors, schema, data, given, PROPERTIES + CREATE_ONLY, features)
        values.update((item["key"], item["value"]) for item in data["user_properties"])
        encryption = check_encryption(verrors, data, features, info.get("encryption") not in (None, "off"), parent)
        verrors.check()

        options = data["encryption_options"]
        watch = TreeWatch(self.app, name)  # ADDED for the dataset and any ancestor `create_ancestors` makes
        await watch.start()
        try:
            await zfs.create_dataset(name, parents=data["create_ancestors"], properties={**values, **encryption},
                                     volume_size=data["volsize"] if volume else None, sparse=bool(data["sparse"]),
                                     key=(options["passphrase"] or options["key"]) if data["encryption"] else None)
        except CommandFailed as exc:
            if (errors := refusal(exc, schema, values, PROPERTIES + CREATE_ONLY)) is not None:
                raise errors from exc
            raise CallError(f"Failed to create dataset {name}: {exc.stderr}") from exc
        finally:
            await watch.finish()
        return await _dataset_entry_of(zfs, name)

    @api_method(DatasetUpdateArgs, roles=("DATASET_WRITE",))
    async def update(self, ctx: CallContext, id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Change a dataset's properties with TrueNAS's arguments: what `data` gives changes, `"INHERIT"`
        inherits; `user_properties_update` sets or removes user properties one by one. Returns its entry."""
        try:
            model = PoolDatasetUpdate.model_validate(data)
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc, "data") from None
        given, changes = model.model_fields_set, model.model_dump()
        zfs = Zfs(self.app.zfs_runner)
        features = await zfs.features()
        verrors = ValidationErrors()
        if "@" in id or not await zfs.exists(id):
            verrors.add("id", f"{id} does not exist", errno.ENOENT)
            verrors.check()
        type_ = (await zfs.get_properties(id, ["type"]))["type"]
        check_type_fields(verrors, UPDATE_SCHEMA, (type_ or "").upper(), given)
        check_recordsize(verrors, UPDATE_SCHEMA, changes["recordsize"])
        check_user_properties_update(verrors, changes)
        for field_name in ("user_properties", "user_properties_update"):
            check_user_property_names(verrors, f"{UPDATE_SCHEMA}.{field_name}", changes[field_name] or [])
        if type_ == "volume" and changes["volsize"] is not None:
            current = (await zfs.get_properties(id, ["volsize"]))["volsize"]
            if current is not None and changes["volsize"] < int(current):
                verrors.add(f"{UPDATE_SCHEMA}.volsize",
                            "You cannot shrink a zvol from GUI, this may lead to data loss.")
        values, inherit = properties_to_set(verrors, UPDATE_SCHEMA, changes, given, PROPERTIES + UPDATE_ONLY,
                                            features)
        verrors.check()
        current_user = await zfs.user_properties(id) if changes["user_properties"] is not None else {}
        user_values, user_removed = user_property_changes(changes, current_user)
        await apply_update(zfs, id, {**values, **user_values}, [*inherit, *user_removed], PROPERTIES + UPDATE_ONLY)
        entry = await _dataset_entry_of(zfs, id)
        publish_dataset_event(self.app, "CHANGED", id, entry)
        return entry

    @api_method(AttachmentDelegateArgs, private=True)
    async def query_attachment_delegate(self, ctx: CallContext, name: str, path: str,
                                        enabled: bool) -> list[dict[str, Any]]:
        """The entries of attachment delegate `name` (`snapshottask`, `replication`) that use `path`, the
        enabled or the disabled ones, as their services' queries show them."""
        if name not in delegate_names(self.app):
            raise CallError(f"Unknown attachment delegate {name!r}", errno.EINVAL)
        return [await a.entry() for a in await self._at_path(path)
                if a.delegate == name and a.enabled == enabled]

    @api_method(AttachmentsWithPathArgs, private=True)
    async def attachments_with_path(self, ctx: CallContext, path: str, check_parent: bool,
                                    exact_match: bool) -> list[dict[str, Any]]:
        """The enabled tasks that use `path` (a dataset's mountpoint or a directory below it; `/mnt/<dataset>`
        as on TrueNAS), grouped by type as `attachments`. `exact_match`: only tasks on that very dataset;
        `check_parent`: also tasks on a dataset above it."""
        return listing(await self._at_path(path, check_parent=check_parent, exact_match=exact_match))

    async def _at_path(self, path: str, **options: bool) -> list[Attachment]:
        zfs = Zfs(self.app.zfs_runner)
        mountpoints = [(d.name, d.mountpoint) for pool in await zfs.pools()
                       for d in await _of_pool(zfs.list_datasets, pool.name) if d.mountpoint]
        dataset = dataset_of_path(path, mountpoints)
        return [] if dataset is None else await attachments_of(self.app, dataset, **options)

    @api_method(DatasetDeleteArgs, roles=("DATASET_DELETE",))
    async def delete(self, ctx: CallContext, id: str, options: dict[str, Any]) -> bool:
        """Destroy a dataset (with `recursive`, its children too), then delete the tasks that used it."""
        zfs = Zfs(self.app.zfs_runner)
        # TrueNAS's "not found" (get_instance's InstanceNotFound): what clients cleaning up ignore.
        missing = InstanceNotFound(f"PoolDataset {id} does not exist")
        if "@" in id or not await zfs.exists(id):
            raise missing
        if "/" not in id:
            raise CallError(f"{id!r} is the root dataset of a pool: export or destroy the pool instead",
                            errno.EINVAL)
        attached = await attachments_of(self.app, id)
        # REMOVED for the dataset and everything that goes with it, even when a refused destroy took part of it.
        watch = TreeWatch(self.app, id)
        await watch.start()
        try:
            await zfs.destroy_dataset(id, recursive=options["recursive"], force=options["force"],
                                      busy_timeout=self.app.settings.dataset_busy_timeout)
        except CallError as e:
            if e.errno == errno.ENOENT:  # destroyed by someone else meanwhile
                raise missing from e
            raise
        finally:
            await watch.finish()
        await delete_all(attached)
        logger.info("Destroyed dataset %s%s; deleted with it: %s", id, " and its children" * options["recursive"],
                    ", ".join(f"{a.type} {a.name}" for a in attached) or "no task")
        return True


class SnapshotQueryExtra(ApiModel):
    """`pool.snapshot.query`'s `options.extra`, as TrueNAS reads it; options it does not know are ignored."""

    model_config = ConfigDict(extra="ignore")

    #: Property names to read (unknown ones are skipped); None: `SNAPSHOT_PROPERTIES`; []: none.
    properties: list[str] | None = None
    #: False: no properties at all, whatever `properties` says.
    retrieve_properties: bool = True
    #: Only snapshots created in this transaction group range (0: unbounded).
    min_txg: Annotated[int, Field(ge=0)] = 0
    max_txg: Annotated[int, Field(ge=0)] = 0
    #: Add `holds` to every entry.
    holds: bool = False


class SnapshotCreate(ApiModel):
    dataset: DatasetName
    name: NonEmptyStr | None = None
    naming_schema: SnapshotNameSchema | None = None
    recursive: bool = False
    exclude: list[DatasetName] = []
    #: Accepted for TrueNAS's clients: there are no VMware hosts here to synchronise with.
    vmware_sync: bool = False
    #: User properties set on the new snapshots (`zfs snapshot -o`).
    properties: dict[str, str] = {}


class SnapshotCreateArgs(ApiModel):
    data: SnapshotCreate


class SnapshotDeleteOptions(ApiModel):
    defer: bool = False
    recursive: bool = False


class SnapshotDeleteArgs(ApiModel):
    id: str
    options: SnapshotDeleteOptions = SnapshotDeleteOptions()


class PoolSnapshotService(Service):
    namespace = "pool.snapshot"
    role_prefix = "SNAPSHOT"

    def event_roles(self) -> dict[str, tuple[str, ...]]:
        return {SNAPSHOT_EVENT: (self.read_role,)}

    @api_method(SnapshotCreateArgs, roles=("SNAPSHOT_WRITE",))
    async def create(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """Take a snapshot of `dataset` named `name` (or after `naming_schema`, now); with `recursive`, of every
        dataset below it too but the `exclude` subtrees, all in one transaction group. Returns its entry."""
        dataset, name = data["dataset"], data["name"]
        # TrueNAS's checks and messages (`snapshot_create.*`).
        verrors = ValidationErrors()
        if name is not None and data["naming_schema"] is not None:
            verrors.add("snapshot_create.naming_schema", "You can't specify name and naming schema at the same time")
        elif name is None and data["naming_schema"] is None:
            verrors.add("snapshot_create.naming_schema", "You must specify either name or naming schema")
        elif name is None:
            name = await self.app.call("replication.new_snapshot_name", data["naming_schema"])
        if data["exclude"]:
            if not data["recursive"]:
                verrors.add("snapshot_create.exclude", "This option has no sense for non-recursive snapshots")
            for key in ("vmware_sync", "properties"):
                if data[key]:
                    verrors.add(f"snapshot_create.{key}", "This option is not supported when excluding datasets")
        for key in data["properties"]:
            if (error := property_name_error(key)) is not None:
                verrors.add(f"snapshot_create.properties.{key}", error)
        if name is not None and (error := snapshot_name_error(f"{dataset}@{name}")) is not None:
            verrors.add("snapshot_create.name", f"Invalid snapshot name: {error}")
        verrors.check()
        zfs = Zfs(self.app.zfs_runner)
        try:
            created = await zfs.create_snapshots(dataset, name, recursive=data["recursive"], exclude=data["exclude"],
                                                 properties=data["properties"] or None)
        except CallError as exc:
            # Found out only when ZFS refuses, so that the usual call costs one command.
            if isinstance(exc, CommandFailed) and "already exists" in exc.stderr:
                raise ValidationError("pool.snapshot.create", f"{name} already exists.", errno.EEXIST) from None
            if not await zfs.exists(dataset):
                raise ValidationError("snapshot_create.dataset", f"Dataset {dataset} does not exist",
                                      errno.ENOENT) from None
            raise
        logger.info("Snapshot taken: %s@%s%s", dataset, name, f" and {len(created) - 1} more" * (len(created) > 1))
        entries = await publish_snapshots_added(self.app, created)
        if f"{dataset}@{name}" not in entries:
            raise CallError(f"Snapshot {dataset}@{name} was destroyed right after it was taken", errno.ENOENT)
        return entries[f"{dataset}@{name}"]

    @api_method(SnapshotDeleteArgs, roles=("SNAPSHOT_DELETE",))
    async def delete(self, ctx: CallContext, id: str, options: dict[str, Any]) -> bool:
        """Destroy snapshot `id` ("pool/dataset@name"); with `recursive`, that snapshot of every dataset below
        too. A held snapshot is refused, unless `defer`: ZFS then destroys it once its last hold is released (one
        with clones once its last clone goes)."""
        if (error := snapshot_name_error(id)) is not None:
            # TrueNAS's message, and why.
            raise ValidationError("pool.snapshot.delete", f"Invalid snapshot name: {id!r} ({error})")
        dataset, name = split_snapshot_name(id)
        zfs = Zfs(self.app.zfs_runner)
        missing = InstanceNotFound(f"PoolSnapshot {id} does not exist")
        try:
            listed = await zfs.list_snapshots(dataset, recursive=options["recursive"])
        except CallError as exc:
            if exc.errno == errno.ENOENT:
                raise missing from None
            raise
        doomed = [s for s in listed if s.name == name]
        if id not in {s.full_name for s in doomed}:
            raise missing
        held = [s for s in doomed if s.held]
        if held and not options["defer"]:
            raise CallError(
                f"Cannot delete {', '.join(s.full_name for s in held)}: it is held ({held[0].userrefs} hold(s)). "
                "Release its holds first, or delete it with `defer` to have ZFS destroy it once the last hold is "
                "released", errno.EBUSY)
        result = await zfs.destroy_snapshots([s.full_name for s in doomed], defer=options["defer"])
        gone = [*result.destroyed, *result.missing]
        if options["defer"]:  # held or cloned ones are only marked, and stay listed until ZFS destroys them
            left = {s.full_name for s in await zfs.list_snapshots(dataset, recursive=options["recursive"])}
            gone = [n for n in gone if n not in left]
        for full_name in gone:
            publish_snapshot_event(self.app, "REMOVED", full_name)
        if result.skipped:
            raise CallError("Cannot delete " + "; ".join(f"{n}: {why}" for n, why in result.skipped.items()),
                            errno.EBUSY)
        return True

    @api_method(QueryArgs, roles=("SNAPSHOT_READ",), filterable=True)
    async def query(self, ctx: CallContext, filters: list[Any], options: dict[str, Any]) -> Any:
        """Snapshots of every imported pool; `options.extra` takes TrueNAS's `properties`,
        `retrieve_properties`, `min_txg`, `max_txg` and `holds` (see `SnapshotQueryExtra`)."""
        try:
            extra = SnapshotQueryExtra.model_validate(options.get("extra") or {})
        except PydanticValidationError as exc:
            raise pydantic_to_validation_errors(exc, "options.extra") from None
        names = [] if not extra.retrieve_properties else (
            list(SNAPSHOT_PROPERTIES) if extra.properties is None else extra.properties)
        zfs = Zfs(self.app.zfs_runner)
        snapshots = []
        for pool in await zfs.pools():
            snapshots += await _of_pool(functools.partial(zfs.list_snapshots, properties=names), pool.name)
        snapshots = [s for s in snapshots if (not extra.min_txg or s.createtxg >= extra.min_txg)
                     and (not extra.max_txg or s.createtxg <= extra.max_txg)]
        held = await _truenas_held(zfs, snapshots) if extra.holds else None
        return filter_list([snapshot_entry(s, names, held) for s in snapshots], filters, options)


async def _truenas_held(zfs: Zfs, snapshots: Iterable[Snapshot]) -> set[str]:
    """Full names of the snapshots carrying the TrueNAS hold tag. Only held ones are asked about; a host
    that cannot list tags (zfs-fuse) counts any hold."""
    held = [s.full_name for s in snapshots if s.held]
    if not held or not (await zfs.features()).has(Feature.LIST_HOLDS):
        return set(held)
    tagged = set()
    for start in range(0, len(held), 100):  # bounded argv
        tags = await zfs.list_holds(held[start:start + 100])
        tagged |= {name for name, found in tags.items() if TRUENAS_HOLD_TAG in found}
    return tagged


async def _creation_parent(zfs: Zfs, verrors: ValidationErrors, name: str, create_ancestors: bool) -> str:
    """The existing dataset a new one goes under: its parent, or with `create_ancestors` its nearest existing
    ancestor (TrueNAS's messages when there is none)."""
    parent = name.rsplit("/", 1)[0]
    while create_ancestors and "/" in parent and not await zfs.exists(parent):
        parent = parent.rsplit("/", 1)[0]
    if not await zfs.exists(parent):
        verrors.add(f"{CREATE_SCHEMA}.name",
                    "Please specify a pool which exists for the dataset/volume to be created" if create_ancestors
                    else f"Parent dataset ({parent}) does not exist." if "/" in parent
                    else f"zpool ({parent}) does not exist.")
    return parent


async def _dataset_entry_of(zfs: Zfs, name: str) -> dict[str, Any]:
    """One dataset's `pool.dataset.query` entry."""
    (dataset,) = await zfs.list_datasets(name, recursive=False)
    return dataset_entry(dataset)


async def _of_pool(lister: Callable[[str], Awaitable[list[T]]], pool: str) -> list[T]:
    """What a pool holds; nothing when it went away between listing the pools and listing it."""
    try:
        return await lister(pool)
    except CallError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise


# Events -------------------------------------------------------------------------------------------------
#
# `pool.dataset.query` and `pool.snapshot.query` events for what this server itself creates, changes and
# destroys: ZFS offers no change feed that every implementation has, so what the `zfs` command changes
# behind our back shows at the next query only. Ids are dataset names and full snapshot names, as on
# TrueNAS; ADDED and CHANGED carry the entry as the query returns it, REMOVED carries none.

DATASET_EVENT = "pool.dataset.query"
SNAPSHOT_EVENT = "pool.snapshot.query"


def publish_dataset_event(app: App, kind: EventKind, name: str, fields: dict[str, Any] | None = None) -> None:
    """One `pool.dataset.query` event; `fields` is the dataset's query entry (`dataset_entry`) for ADDED and
    CHANGED. For a create that may make parents too (`zfs create -p`), `TreeWatch` finds them all."""
    app.bus.publish(Event(DATASET_EVENT, kind, name, fields))


def publish_snapshot_event(app: App, kind: EventKind, name: str, fields: dict[str, Any] | None = None) -> None:
    """One `pool.snapshot.query` event; `fields` is the snapshot's query entry (`snapshot_entry`)."""
    app.bus.publish(Event(SNAPSHOT_EVENT, kind, name, fields))


async def publish_snapshots_added(app: App, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """ADDED, with their entries, for snapshots this server just took (one listing per dataset); returns the
    entries by full name. A snapshot already gone again is left out."""
    wanted = list(dict.fromkeys(names))
    zfs = Zfs(app.zfs_runner)
    entries: dict[str, dict[str, Any]] = {}
    for dataset in dict.fromkeys(split_snapshot_name(name)[0] for name in wanted):
        snapshots = await _of_pool(lambda ds: _listed_snapshots(zfs, ds, recursive=False), dataset)
        entries.update((s.full_name, snapshot_entry(s)) for s in snapshots if s.full_name in wanted)
    for name in wanted:
        if name in entries:
            publish_snapshot_event(app, "ADDED", name, entries[name])
    return entries


async def _listed_snapshots(zfs: Zfs, root: str, *, recursive: bool) -> list[Snapshot]:
    """Snapshots read as `pool.snapshot.query` reads them by default, for `snapshot_entry`."""
    return await zfs.list_snapshots(root, recursive=recursive, properties=SNAPSHOT_PROPERTIES)


@dataclass(frozen=True)
class TreeListing:
    """A dataset tree as the queries show it: entries by dataset name and by full snapshot name."""

    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)


async def list_tree(zfs: Zfs, root: str) -> TreeListing:
    """`root` and everything below it; empty when `root` does not exist."""
    try:
        datasets = await zfs.list_datasets(root)
        snapshots = await _listed_snapshots(zfs, root, recursive=True)
    except CallError as exc:
        if exc.errno == errno.ENOENT:
            return TreeListing()
        raise
    return TreeListing({d.name: dataset_entry(d) for d in datasets},
                       {s.full_name: snapshot_entry(s) for s in snapshots})


def publish_tree_changes(app: App, before: TreeListing, after: TreeListing) -> None:
    """The events that turn `before` into `after`, in an order a client can apply: snapshots go before
    their datasets, datasets (parents first) arrive before their snapshots. Datasets whose entry differs are
    CHANGED; snapshots are not (their space accounting shifts with every later write)."""
    for name in before.snapshots.keys() - after.snapshots.keys():
        publish_snapshot_event(app, "REMOVED", name)
    for name in sorted(before.datasets.keys() - after.datasets.keys(), key=lambda n: -n.count("/")):
        publish_dataset_event(app, "REMOVED", name)
    for name, entry in sorted(after.datasets.items()):
        if name not in before.datasets:
            publish_dataset_event(app, "ADDED", name, entry)
        elif before.datasets[name] != entry:
            publish_dataset_event(app, "CHANGED", name, entry)
    for name, entry in after.snapshots.items():
        if name not in before.snapshots:
            publish_snapshot_event(app, "ADDED", name, entry)


class TreeWatch:
    """Publishes what changed at and below one local dataset between `start` and `finish`: for work whose
    results cannot be named beforehand (a replication run's receives, -R streams included; `zfs create -p`).

    Only the dataset's own tree is listed when it exists; otherwise the topmost of its missing ancestors'
    (everything that appears there is new), so a whole pool is never listed to see a few datasets arrive.
    Listing problems are logged, never raised: they must not change the outcome of the work watched. With no
    subscriber to either collection when the work starts, nothing is listed at all (runs pay no extra listing).
    """

    def __init__(self, app: App, dataset: str):
        self.app = app
        self.dataset = dataset
        self.zfs = Zfs(app.zfs_runner)
        self.root = dataset
        self.before = TreeListing()
        self.active = False

    async def start(self) -> None:
        self.active = self.app.bus.wanted(DATASET_EVENT, SNAPSHOT_EVENT)
        if not self.active:
            return
        try:
            self.root = await self._root()
            self.before = await list_tree(self.zfs, self.root)
        except CallError as exc:
            logger.warning("Cannot list %s: its pool.dataset/pool.snapshot events are not sent (%s)",
                           self.dataset, exc)

    async def finish(self) -> None:
        if not self.active:
            return
        try:
            after = await list_tree(self.zfs, self.root)
        except CallError as exc:
            logger.warning("Cannot list %s: its pool.dataset/pool.snapshot events are not sent (%s)",
                           self.dataset, exc)
            return
        publish_tree_changes(self.app, self.before, after)

    async def _root(self) -> str:
        """The dataset if it exists, else its topmost ancestor that does not (a missing pool's name included)."""
        if await self.zfs.exists(self.dataset):
            return self.dataset
        top, parent = self.dataset, self.dataset.rpartition("/")[0]
        while parent and not await self.zfs.exists(parent):
            top, parent = parent, parent.rpartition("/")[0]
        return top
