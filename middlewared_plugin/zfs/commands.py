"""`zfs`/`zpool` command lines and the parsing of their output: the only module that knows either.

`Zfs(runner)` works the same on this host and on an SSH peer. Listing goes through
`zfs get -H -p -o name,property,value,source` because it is the one machine-readable form every
implementation has (zfs-fuse's `zfs list` has no `-p` and hides `guid`/`createtxg`); user properties
come back in the same call. Methods that can be done better where ZFS allows it (atomic multi-dataset
snapshots, comma-list destroys) detect the capability first and fall back to what works everywhere.

Every name that reaches an argv passes the grammar of `zfs/names.py` first (so none can be read as an
option), and positional arguments follow `--` wherever the command takes it (not `zfs set` nor `zpool get`,
whose zfs-fuse and older OpenZFS versions parse no options there).

Send/receive command lines are pure functions (`send_argv`, `recv_argv`, ...) so that the replication
executor can start them as a pipeline through `Runner.start`; the caller checks `Features.require` for
the flags it asks for.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import CommandFailed, Runner
from middlewared_plugin.zfs.features import Feature, Features, detect_features
from middlewared_plugin.zfs.names import (
    check_dataset,
    check_dataset_or_snapshot,
    check_guid,
    check_hold_tag,
    check_pool,
    check_property,
    check_snapshot,
    check_snapshot_or_bookmark,
    check_snapshot_part,
    dataset_name_error,
    snapshot_name_error,
)
from middlewared_plugin.zfs.types import (
    Dataset,
    DestroyResult,
    ImportablePool,
    Pool,
    PropertyValue,
    Snapshot,
    is_same_or_descendant,
    split_snapshot_name,
)

logger = logging.getLogger(__name__)

#: zettarepl's proven batch size for `zfs destroy ds@a,b,...`; the argv length bound keeps us far from ARG_MAX.
DESTROY_BATCH_NAMES = 100
DESTROY_BATCH_CHARS = 100_000
#: Pause between attempts to destroy a dataset ZFS reports busy.
BUSY_RETRY_INTERVAL = 0.25

_DATASET_PROPS = ("type", "guid", "createtxg", "creation", "used", "referenced", "readonly", "mountpoint")
_SNAPSHOT_PROPS = ("type", "guid", "createtxg", "creation", "used", "referenced", "userrefs")

_NOT_FOUND = re.compile(r"does not exist|no such pool|could not find any snapshots|no such dataset")


def _is_not_found(error: CommandFailed) -> bool:
    return _NOT_FOUND.search(error.stderr) is not None


class Zfs:
    """ZFS operations on the host a `Runner` reaches."""

    def __init__(self, runner: Runner, *, timeout: float = 600.0):
        self.runner = runner
        self.timeout = timeout

    async def features(self) -> Features:
        return await detect_features(self.runner)

    async def _run(self, argv: Sequence[str], *, timeout: float | None = None) -> str:
        result = await self.runner.run(list(argv), timeout=timeout or self.timeout)
        return result.text

    # ----------------------------------------------------------------------------------------- pools

    async def pools(self) -> list[Pool]:
        out = await self._run(["zpool", "list", "-H", "-o", "name,health,guid"])
        return [Pool(*line.split("\t")[:3]) for line in out.splitlines() if line]

    async def importable_pools(self, search_dirs: Sequence[str] = ()) -> list[ImportablePool]:
        """Exported pools on the devices (or, for file vdevs, in the directories) `zpool import` searches."""
        argv = ["zpool", "import", *_search_options(search_dirs)]
        result = await self.runner.run(argv, check=False, timeout=self.timeout)
        stderr = result.stderr.decode(errors="replace").strip()
        # Nothing to import exits 1, silently (zfs-fuse) or saying so (OpenZFS): an empty list, not an error.
        if result.returncode != 0 and not result.text.strip() and stderr and "no pools available" not in stderr:
            raise CommandFailed(self.runner.name, argv, result.returncode, stderr)
        return _importable(result.text)

    async def import_pool(self, guid: str, *, new_name: str | None = None, search_dirs: Sequence[str] = ()) -> None:
        """Import an exported pool by its guid (unambiguous where names repeat), optionally renaming it."""
        await self._run(import_pool_argv(guid, new_name=new_name, search_dirs=search_dirs))

    async def export_pool(self, name: str) -> None:
        await self._run(["zpool", "export", "--", check_pool(name)])

    async def destroy_pool(self, name: str) -> None:
        await self._run(["zpool", "destroy", "--", check_pool(name)])

    async def pool_status(self, pool: str) -> str:
        """`zpool status` text of one pool (for humans; not parsed)."""
        return await self._run(["zpool", "status", "--", check_pool(pool)])

    async def pool_features(self, pool: str) -> dict[str, str]:
        """`feature@name -> disabled|enabled|active` of one pool; empty for pre-feature-flag pools (zfs-fuse)."""
        # Plain `zpool get all`: zfs-fuse's `zpool get` knows neither -H nor -o.
        out = await self._run(["zpool", "get", "all", check_pool(pool)])
        features = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == pool and fields[1].startswith("feature@"):
                features[fields[1]] = fields[2]
        return features

    # -------------------------------------------------------------------------------------- listing

    async def _get(
        self, root: str, properties: Sequence[str], *, depth: int | None, type_: str | None,
    ) -> dict[str, dict[str, tuple[str, str]]]:
        """name -> property -> (value, source) for `root` and its descendants down to `depth` (None: all)."""
        argv = ["zfs", "get", "-H", "-p", "-o", "name,property,value,source"]
        argv += ["-r"] if depth is None else ["-d", str(depth)]
        if type_ and (await self.features()).has(Feature.GET_TYPE_FILTER):
            argv += ["-t", type_]
        argv += ["--", ",".join(check_property(p) for p in properties), check_dataset_or_snapshot(root)]
        try:
            out = await self._run(argv)
        except CommandFailed as e:
            if _is_not_found(e):
                raise CallError(f"[{self.runner.name}] dataset {root} does not exist", errno.ENOENT) from e
            raise
        rows: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
        for line in out.splitlines():
            name, prop, rest = line.split("\t", 2)
            value, source = rest.rsplit("\t", 1)
            rows[name][prop] = (value, source)
        return rows

    async def _props_for(self, base: Sequence[str], optional: Sequence[str], user: Iterable[str]) -> list[str]:
        known = (await self.features()).properties
        return [*base, *(p for p in optional if p in known), *user]

    async def list_datasets(
        self, root: str, *, recursive: bool = True, user_properties: Iterable[str] = (),
    ) -> list[Dataset]:
        """`root` (and its descendants if `recursive`), filesystems and volumes, sorted by name."""
        user = list(user_properties)
        props = await self._props_for(_DATASET_PROPS, ("receive_resume_token",), user)
        rows = await self._get(root, props, depth=None if recursive else 0, type_="filesystem,volume")
        datasets = [
            _dataset(name, values, user) for name, values in rows.items()
            if values["type"][0] in ("filesystem", "volume")
        ]
        return sorted(datasets, key=lambda d: d.name)

    async def list_snapshots(
        self, root: str, *, recursive: bool = True, user_properties: Iterable[str] = (),
        properties: Iterable[str] = (),
    ) -> list[Snapshot]:
        """Snapshots of `root` (and of its descendants if `recursive`), by dataset name then createtxg.

        `properties` are further native properties to read into `Snapshot.properties`, in the same call;
        names this host's zfs does not know are skipped (one unknown name would fail the whole `zfs get`).
        """
        user = list(user_properties)
        optional = dict.fromkeys(p for p in ("written", *properties) if p not in _SNAPSHOT_PROPS)
        props = await self._props_for(_SNAPSHOT_PROPS, list(optional), user)
        rows = await self._get(root, props, depth=None if recursive else 1, type_="snapshot")
        snapshots = [
            _snapshot(name, values, user) for name, values in rows.items() if values["type"][0] == "snapshot"
        ]
        return sorted(snapshots, key=lambda s: (s.dataset, s.createtxg))

    async def exists(self, name: str) -> bool:
        """Whether a dataset or snapshot of that name exists (a name ZFS would refuse exists nowhere)."""
        if (snapshot_name_error if "@" in name else dataset_name_error)(name) is not None:
            return False
        try:
            await self._run(["zfs", "get", "-H", "-o", "value", "type", "--", name])
        except CommandFailed as e:
            if _is_not_found(e) or "invalid dataset name" in e.stderr:
                return False
            raise
        return True

    # ------------------------------------------------------------------------------------- datasets

    async def create_dataset(
        self, name: str, *, parents: bool = True, properties: Mapping[str, str] | None = None,
        volume_size: int | None = None, sparse: bool = False, key: str | None = None,
    ) -> None:
        """`zfs create` (see `create_argv`); `key` is the encryption key or passphrase of a dataset created
        with `keylocation=prompt`, given on stdin so that it never shows in a process listing."""
        argv = create_argv(name, parents=parents, properties=properties, volume_size=volume_size, sparse=sparse)
        await self.runner.run(argv, input=None if key is None else key.encode(), timeout=self.timeout)

    async def destroy_dataset(
        self, name: str, *, recursive: bool = False, force: bool = False, busy_timeout: float = 0.0,
    ) -> None:
        """`force` unmounts a busy file system anyway (`-f`). A refused destroy leaves the mounts as they were.

        A dataset reported busy is unmounted by us and tried again until `busy_timeout` seconds have passed
        (at least once more): zfs-fuse cannot unmount within `zfs destroy`, and it answers "dataset is busy"
        for a moment after a receive or an unmount with nothing using the dataset. One that stays busy is a
        CallError EBUSY; one that is gone is ENOENT.
        """
        argv = ["zfs", "destroy"] + (["-r"] if recursive else []) + (["-f"] if force else [])
        argv += ["--", check_dataset(name)]
        mounted = await self._mounted(name, recursive=recursive)
        deadline = time.monotonic() + busy_timeout
        try:
            for attempt in itertools.count():
                try:
                    if attempt:
                        if attempt > 1:
                            await asyncio.sleep(BUSY_RETRY_INTERVAL)
                        for fs in await self._mounted(name, recursive=recursive):
                            await self._run(["zfs", "unmount"] + (["-f"] if force else []) + ["--", check_dataset(fs)])
                    await self._run(argv)
                    return
                except CommandFailed as e:
                    if _is_not_found(e):
                        raise CallError(f"[{self.runner.name}] dataset {name} does not exist", errno.ENOENT) from e
                    if "busy" not in e.stderr:
                        raise
                    if attempt and time.monotonic() >= deadline:
                        raise CallError(f"Failed to destroy {name!r}: dataset is busy ({e.stderr})",
                                        errno.EBUSY) from e
        except CallError as failed:
            if failed.errno == errno.ENOENT:
                raise
            # A failed destroy (zfs-fuse's own included) may have unmounted part of the tree: mount it back.
            now = set(await self._mounted(name, recursive=recursive))
            for fs in reversed(mounted):  # parents first
                if fs not in now:
                    try:
                        await self._run(["zfs", "mount", "--", check_dataset(fs)])
                    except CommandFailed as e:
                        logger.warning("Could not mount %s back: %s", fs, e.stderr)
            raise

    async def _mounted(self, name: str, *, recursive: bool) -> list[str]:
        """The mounted file systems of `name` (and below it if `recursive`), deepest first."""
        rows = await self._get(name, ["mounted"], depth=None if recursive else 0, type_="filesystem")
        return sorted((fs for fs, values in rows.items() if values.get("mounted", ("",))[0] == "yes"),
                      key=lambda fs: -fs.count("/"))

    async def user_properties(self, name: str) -> dict[str, str]:
        """Every user property (`module:name`) one dataset has, set there or inherited: `zfs get all`, the one
        form that lists the ones nobody named."""
        values = (await self._get(name, ["all"], depth=0, type_=None)).get(name, {})
        return _user(values, (p for p in values if ":" in p))

    async def get_properties(self, name: str, properties: Iterable[str]) -> dict[str, str | None]:
        """Values of the given properties of one dataset or snapshot; None where unset (`-`)."""
        props = list(properties)
        rows = await self._get(name, props, depth=0, type_=None)
        values = rows.get(name, {})
        return {p: _optional(*values[p]) if p in values else None for p in props}

    async def set_properties(self, name: str, properties: Mapping[str, str]) -> None:
        # One `zfs set` per property: zfs-fuse's `set` takes exactly one property=value.
        for key, value in properties.items():
            await self._run(["zfs", "set", f"{check_property(key)}={value}", check_dataset_or_snapshot(name)])

    async def mount(self, name: str, *, readonly: bool = False) -> bool:
        """Mount a filesystem (and nothing else), read-only for this mount only if asked (`-o ro`: the
        `readonly` property is untouched). True when it mounted it; one already mounted is left as it is."""
        argv = ["zfs", "mount"] + (["-o", "ro"] if readonly else []) + ["--", check_dataset(name)]
        result = await self.runner.run(argv, check=False)
        if result.returncode != 0 and "already mounted" not in result.stderr.decode(errors="replace"):
            raise CommandFailed(self.runner.name, argv, result.returncode, result.stderr.decode(errors="replace"))
        return result.returncode == 0

    async def inherit_property(self, name: str, prop: str, *, recursive: bool = False) -> None:
        await self._run(["zfs", "inherit"] + (["-r"] if recursive else [])
                        + ["--", check_property(prop), check_dataset_or_snapshot(name)])

    async def exclude_received_property(self, root: str, prop: str, *, recursive: bool = False) -> list[str]:
        """After a receive, what `zfs receive -x prop` does on a ZFS that has it: `root` (and its descendants
        if `recursive`) whose `prop` came from the stream (source `received`) inherit it; values set on this
        side are kept. Returns the datasets where the inherited value had to be set instead.

        zfs-fuse's `zfs inherit` cannot override a received value below another received dataset (it
        succeeds and the value stays `received`): there the value it would inherit is set (source `local`).

        Nothing is left mounted by this, so that the caller mounts the tree in order and read-only: ZFS
        mounts a filesystem whose mountpoint leaves `legacy` or `none` at once (read-write, before its parent
        is mounted, or failing under a read-only parent) unless `canmount` is `noauto`, which it is meanwhile;
        a mounted filesystem that moves is remounted by ZFS and is unmounted again."""
        depth = None if recursive else 0
        props = list(dict.fromkeys([check_property(prop), "mountpoint", "canmount", "mounted"]))
        before = await self._get(root, props, depth=depth, type_="filesystem,volume")
        received = sorted(n for n, v in before.items() if "@" not in n and v.get(prop, ("", ""))[1] == "received")
        if not received:
            return []
        quiet = [n for n in received if prop == "mountpoint" and before[n]["canmount"][0] == "on"
                 and before[n]["mountpoint"][0] in ("legacy", "none")]
        pinned: list[str] = []
        for name in quiet:
            await self.set_properties(name, {"canmount": "noauto"})
        try:
            await self._run(["zfs", "inherit", "--", prop, *(check_dataset(n) for n in received)])
            after = await self._get(root, [prop], depth=depth, type_="filesystem,volume")
            for name in received:  # parents first: a child's inherited value depends on its parent's
                if after[name][prop][1] != "received" or "/" not in name:
                    continue
                parent, leaf = name.rsplit("/", 1)
                value = inherited_value(prop, (await self.get_properties(parent, [prop]))[prop], leaf)
                if value is not None:
                    await self.set_properties(name, {prop: value})
                    pinned.append(name)
        finally:
            for name in quiet:
                await self.set_properties(name, {"canmount": "on"})
        now = await self._get(root, ["mountpoint", "mounted"], depth=depth, type_="filesystem")
        moved = [n for n, v in now.items() if "@" not in n and v["mounted"][0] == "yes" and (
            before[n]["mounted"][0] != "yes" or v["mountpoint"][0] != before[n]["mountpoint"][0])]
        for name in sorted(moved, key=lambda n: -n.count("/")):  # children before their parents
            await self._run(["zfs", "unmount", "--", check_dataset(name)])
        return pinned

    async def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None:
        """Roll a dataset back to `snapshot`; `destroy_newer` (-r) allows discarding later snapshots."""
        await self._run(["zfs", "rollback"] + (["-r"] if destroy_newer else []) + ["--", check_snapshot(snapshot)])

    # ------------------------------------------------------------------------------------ snapshots

    async def create_snapshots(
        self,
        dataset: str,
        name: str,
        *,
        recursive: bool = False,
        exclude: Iterable[str] = (),
        properties: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Snapshot `dataset` (and its tree minus `exclude` subtrees) in one transaction group.

        Returns the full names created. With excludes, hosts that take several snapshot names in one
        `zfs snapshot` get exactly the wanted set atomically; elsewhere (zfs-fuse) the whole tree is
        snapshotted with `-r` (still one txg) and the excluded subtrees' new snapshots are destroyed.
        """
        options = _property_options(properties) + ["--"]
        check_snapshot(f"{check_dataset(dataset)}@{check_snapshot_part(name)}")
        excluded = [e for e in exclude if is_same_or_descendant(e, dataset) and e != dataset]
        if not recursive or not excluded:
            await self._run(["zfs", "snapshot"] + (["-r"] if recursive else []) + options + [f"{dataset}@{name}"])
            if not recursive:
                return [f"{dataset}@{name}"]
            return [f"{d.name}@{name}" for d in await self.list_datasets(dataset)]

        tree = [d.name for d in await self.list_datasets(dataset)]
        wanted = [d for d in tree if not any(is_same_or_descendant(d, e) for e in excluded)]
        if (await self.features()).has(Feature.MULTI_SNAPSHOT):
            await self._run(["zfs", "snapshot"] + options + [f"{d}@{name}" for d in wanted])
            return [f"{d}@{name}" for d in wanted]

        await self._run(["zfs", "snapshot", "-r"] + options + [f"{dataset}@{name}"])
        tops = [e for e in excluded if e in tree and not any(e != o and is_same_or_descendant(e, o) for o in excluded)]
        for top in tops:
            await self._run(["zfs", "destroy", "-r", "--", f"{top}@{name}"])
        return [f"{d}@{name}" for d in wanted]

    async def destroy_snapshots(self, snapshots: Iterable[str], *, defer: bool = False) -> DestroyResult:
        """Destroy snapshots in batches; held, busy or cloned ones are reported as skipped, gone ones as missing.

        `defer` (-d): a held or cloned snapshot is marked instead, and ZFS destroys it when its last hold or
        clone goes (it counts as destroyed here, though it is still listed until then).
        """
        result = DestroyResult()
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for full in snapshots:
            ds, snap = split_snapshot_name(check_snapshot(full))
            by_dataset[ds].append(snap)
        batched = (await self.features()).has(Feature.DESTROY_SNAPSHOT_LIST)
        for ds, names in by_dataset.items():
            batches = _destroy_batches(ds, names) if batched else ([n] for n in names)
            for batch in batches:
                await self._destroy_batch(ds, batch, result, defer)
        return result

    async def _destroy_batch(self, dataset: str, names: list[str], result: DestroyResult, defer: bool) -> None:
        while names:
            try:
                await self._run(["zfs", "destroy"] + (["-d"] if defer else []) + ["--", f"{dataset}@{','.join(names)}"],
                                timeout=3600)
            except CommandFailed as e:
                refused = _refusals(e.stderr, dataset, names)
                if len(names) == 1 and not refused:
                    if not _is_not_found(e):
                        raise
                    result.missing.append(f"{dataset}@{names[0]}")
                    return
                if not refused:
                    # An all-or-nothing destroy failed for a reason naming no snapshot: find it one by one.
                    for n in names:
                        await self._destroy_batch(dataset, [n], result, defer)
                    return
                result.skipped.update(refused)
                # A refused batch destroys nothing on OpenZFS: retry without the refused ones.
                names = [n for n in names if f"{dataset}@{n}" not in refused]
                continue
            result.destroyed.extend(f"{dataset}@{n}" for n in names)
            return

    # ---------------------------------------------------------------------------------------- holds

    async def hold(self, tag: str, snapshots: Sequence[str], *, recursive: bool = False) -> None:
        await self._run(["zfs", "hold"] + (["-r"] if recursive else [])
                        + ["--", check_hold_tag(tag), *map(check_snapshot, snapshots)])

    async def release(self, tag: str, snapshots: Sequence[str], *, recursive: bool = False) -> None:
        await self._run(["zfs", "release"] + (["-r"] if recursive else [])
                        + ["--", check_hold_tag(tag), *map(check_snapshot, snapshots)])

    async def list_holds(self, snapshots: Sequence[str]) -> dict[str, frozenset[str]]:
        """Hold tags per snapshot. zfs-fuse cannot list tags (use `Snapshot.userrefs` for the count there)."""
        (await self.features()).require(Feature.LIST_HOLDS)
        out = await self._run(["zfs", "holds", "-H", "--", *map(check_snapshot, snapshots)])
        holds: dict[str, set[str]] = {s: set() for s in snapshots}
        for line in out.splitlines():
            name, tag, *_ = line.split("\t")
            holds.setdefault(name, set()).add(tag)
        return {k: frozenset(v) for k, v in holds.items()}


# ------------------------------------------------------------------------------------ send / receive

def create_argv(
    name: str, *, parents: bool = False, properties: Mapping[str, str] | None = None,
    volume_size: int | None = None, sparse: bool = False,
) -> list[str]:
    """`zfs create` of a filesystem, or of a volume of `volume_size` bytes (thin with `sparse`); `parents`
    (-p) creates missing ancestors, `properties` apply to the new dataset only."""
    if sparse and volume_size is None:
        raise ValueError("sparse (-s) applies to volumes only")
    argv = ["zfs", "create"] + (["-p"] if parents else []) + (["-s"] if sparse else [])
    argv += (["-V", str(volume_size)] if volume_size is not None else []) + _property_options(properties)
    return argv + ["--", check_dataset(name)]


def _search_options(search_dirs: Sequence[str]) -> list[str]:
    return [arg for directory in search_dirs for arg in ("-d", directory)]


def import_pool_argv(guid: str, *, new_name: str | None = None, search_dirs: Sequence[str] = ()) -> list[str]:
    """`zpool import` of one exported pool by guid, optionally under a new name (refused if reserved)."""
    names = [check_guid(guid), *([check_pool(new_name, new=True)] if new_name is not None else [])]
    return ["zpool", "import", *_search_options(search_dirs), "--", *names]


_IMPORT_FIELD = re.compile(r"^\s*(pool|id|state):\s*(\S+)\s*$")


def _importable(text: str) -> list[ImportablePool]:
    """The pools of `zpool import`'s listing: one block per pool, each starting with "pool: NAME"."""
    pools = []
    for block in re.split(r"^(?=\s*pool:)", text, flags=re.MULTILINE):
        fields = dict(m.groups() for line in block.splitlines() if (m := _IMPORT_FIELD.match(line)))
        if "pool" in fields and "id" in fields:
            pools.append(ImportablePool(fields["pool"], fields["id"], fields.get("state", "UNKNOWN")))
    return pools


def _snapshot_ref(ref: str, snapshot: str) -> str:
    """A base given as "name", "@name", "#bookmark" or full name -> full name on the snapshot's dataset."""
    dataset, _ = split_snapshot_name(snapshot)
    if ref.startswith(("@", "#")):
        full = dataset + ref
    else:
        full = ref if ("@" in ref or "#" in ref) else f"{dataset}@{ref}"
    return check_snapshot_or_bookmark(full)


def send_argv(
    snapshot: str,
    *,
    base: str | None = None,
    intermediates: bool = False,
    replicate: bool = False,
    properties: bool = False,
    raw: bool = False,
    large_block: bool = False,
    compressed: bool = False,
    embedded: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """`zfs send` of `snapshot`, incremental from `base` (-i; -I with `intermediates`).

    Flag order follows zettarepl: [-e] [-R|-p] [-w] [-i|-I base] [-L] [-c]. `dry_run` adds -n -v -P
    (parsable size estimate on stderr/stdout, no stream).
    """
    if intermediates and base is None:
        raise ValueError("intermediates (-I) needs a base snapshot")
    argv = ["zfs", "send"]
    if dry_run:
        argv += ["-n", "-v", "-P"]
    if embedded:
        argv.append("-e")
    if replicate:
        argv.append("-R")
    elif properties:
        argv.append("-p")
    if raw:
        argv.append("-w")
    if base is not None:
        argv += ["-I" if intermediates else "-i", _snapshot_ref(base, snapshot)]
    if large_block:
        argv.append("-L")
    if compressed:
        argv.append("-c")
    argv += ["--", check_snapshot(snapshot)]
    return argv


def resume_send_argv(token: str, *, dry_run: bool = False) -> list[str]:
    """Continue an interrupted stream; the token carries the original flags."""
    return ["zfs", "send"] + (["-n", "-v", "-P"] if dry_run else []) + ["-t", token]


def recv_argv(
    target: str,
    *,
    resumable: bool = False,
    force: bool = False,
    no_mount: bool = False,
    exclude_properties: Iterable[str] = (),
    override_properties: Mapping[str, str] | None = None,
) -> list[str]:
    """`zfs receive` into `target`. `force` (-F) may roll back or destroy target data: callers decide it."""
    argv = ["zfs", "receive"]
    if resumable:
        argv.append("-s")
    if force:
        argv.append("-F")
    if no_mount:
        argv.append("-u")
    for prop in exclude_properties:
        argv += ["-x", check_property(prop)]
    argv += _property_options(override_properties)
    argv += ["--", check_dataset(target)]
    return argv


_MODIFIED_SINCE_SNAPSHOT = re.compile(r"has been modified\s+since most recent snapshot")


def is_modified_refusal(stderr: str) -> bool:
    """Whether `zfs receive` refused an incremental stream because the target changed after its newest
    snapshot (OpenZFS and zfs-fuse word it the same, zfs-fuse across two lines)."""
    return _MODIFIED_SINCE_SNAPSHOT.search(stderr) is not None


def recv_abort_argv(target: str) -> list[str]:
    """Discard the partial state of an interrupted resumable receive."""
    return ["zfs", "receive", "-A", "--", check_dataset(target)]


# --------------------------------------------------------------------------------------- parsing

def _property_options(properties: Mapping[str, str] | None) -> list[str]:
    return [arg for k, v in (properties or {}).items() for arg in ("-o", f"{check_property(k)}={v}")]


def _destroy_batches(dataset: str, names: list[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    length = len(dataset)
    for name in names:
        if batch and (len(batch) >= DESTROY_BATCH_NAMES or length + len(name) + 1 > DESTROY_BATCH_CHARS):
            yield batch
            batch, length = [], len(dataset)
        batch.append(name)
        length += len(name) + 1
    if batch:
        yield batch


def _refusals(stderr: str, dataset: str, names: list[str]) -> dict[str, str]:
    """Which of `names` ZFS refused to destroy, and why.

    OpenZFS: "cannot destroy snapshot pool/ds@a: dataset is busy"; zfs-fuse: "cannot destroy 'pool/ds@a':
    dataset is busy". Matching the names we asked for copes with spaces and colons inside snapshot names.
    """
    refused = {}
    for line in stderr.splitlines():
        if not line.startswith("cannot destroy"):
            continue
        for name in names:
            full = f"{dataset}@{name}"
            for form in (f"snapshot {full}: ", f"'{full}': "):
                if form in line:
                    refused[full] = line.split(form, 1)[1].strip()
    return refused


def inherited_value(prop: str, parent_value: str | None, name: str) -> str | None:
    """The value a dataset named `name` (the last component) inherits from a parent whose `prop` is
    `parent_value`: the same, except that a mountpoint path gets the name appended (`legacy`/`none` do not)."""
    if prop == "mountpoint" and parent_value and parent_value.startswith("/"):
        return f"{parent_value.rstrip('/')}/{name}"
    return parent_value


def _optional(value: str, source: str) -> str | None:
    # `-` with source `-` is how zfs prints "not set / not applicable".
    return None if value == "-" and source == "-" else value


def _int(value: str) -> int:
    return 0 if value == "-" else int(value)


def _user(values: Mapping[str, tuple[str, str]], user: Iterable[str]) -> dict[str, str]:
    found = {p: _optional(*values[p]) for p in user if p in values}
    return {k: v for k, v in found.items() if v is not None}


def _dataset(name: str, values: Mapping[str, tuple[str, str]], user: Iterable[str]) -> Dataset:
    mountpoint = values["mountpoint"][0]
    token = _optional(*values["receive_resume_token"]) if "receive_resume_token" in values else None
    return Dataset(
        name=name,
        type=values["type"][0],
        guid=int(values["guid"][0]),
        createtxg=int(values["createtxg"][0]),
        creation=datetime.fromtimestamp(int(values["creation"][0]), UTC),
        used=_int(values["used"][0]),
        referenced=_int(values["referenced"][0]),
        readonly=values["readonly"][0] == "on",
        mountpoint=None if mountpoint in ("-", "none", "legacy") else mountpoint,
        receive_resume_token=token,
        user_properties=_user(values, user),
    )


def _snapshot(full_name: str, values: Mapping[str, tuple[str, str]], user: Iterable[str]) -> Snapshot:
    dataset, name = split_snapshot_name(full_name)
    written = values.get("written")
    return Snapshot(
        dataset=dataset,
        name=name,
        guid=int(values["guid"][0]),
        createtxg=int(values["createtxg"][0]),
        creation=datetime.fromtimestamp(int(values["creation"][0]), UTC),
        used=_int(values["used"][0]),
        referenced=_int(values["referenced"][0]),
        userrefs=_int(values["userrefs"][0]),
        written=_int(written[0]) if written else None,
        user_properties=_user(values, user),
        properties={p: _property(p, *values[p]) for p in values if ":" not in p},
    )


_SOURCES = {"-": "NONE", "default": "DEFAULT", "local": "LOCAL", "temporary": "TEMPORARY", "received": "RECEIVED"}


def _property(prop: str, value: str, source: str) -> PropertyValue:
    """One `zfs get -p` row; the source as TrueNAS names it ("inherited from pool/ds" is INHERITED)."""
    named = "INHERITED" if source.startswith("inherited") else _SOURCES.get(source, "NONE")
    if _optional(value, source) is None:
        parsed = None
    elif prop == "creation":
        parsed = datetime.fromtimestamp(int(value), UTC)
    else:
        parsed = int(value) if value.isdigit() else value
    return PropertyValue(value, named, parsed)
