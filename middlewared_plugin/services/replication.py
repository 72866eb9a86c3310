"""`replication.*` and `replication.config.*` (reference §2.1-§2.2): task CRUD, state, and the helper
methods the task wizard uses (dataset and snapshot listings on either side, naming schemas, restore).

Stored documents are the create shape: `ssh_credentials` is a credential id, `periodic_snapshot_tasks` a
list of snapshot task ids (the binding lives here; `snapshot_task_deleted` drops a deleted task's id), and
`naming_schema` is TrueNAS's shared column: PUSH tasks keep `also_include_naming_schema` there. Each also
keeps `jobs_after` (JOBS_AFTER), which `extend` uses to find the task's own jobs and never shows. `extend`
turns ids into objects and adds `state`, `job`, `schedule_description` and `has_encrypted_dataset_keys`.

Other services ask this one: keychaincredential through `credential_users`, pool.snapshottask through
`snapshot_task_bindings` / `snapshot_task_deleted`, pool and pool.dataset through `dataset_attachments`, the
replication engine through `set_state`.
"""
from __future__ import annotations

import errno
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from middlewared_plugin.attachments import Attachment
from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.events import Event
from middlewared_plugin.jobs.job import JobState
from middlewared_plugin.protocol import ejson
from middlewared_plugin.remote.names import is_this_host
from middlewared_plugin.remote.runner import CommandFailed
from middlewared_plugin.replication.executor import TRUENAS_KEY_LOCATION
from middlewared_plugin.replication.state import ReplicationStates
from middlewared_plugin.scheduling.schedule import describe
from middlewared_plugin.services.base import (
    REDACTED,
    CallContext,
    ConfigService,
    CRUDService,
    api_method,
)
from middlewared_plugin.services.keychain import SSH_CREDENTIALS, CredentialUse
from middlewared_plugin.services.pool import TreeWatch
from middlewared_plugin.services.replication_models import (
    CountEligibleManualSnapshotsArgs,
    CreateDatasetArgs,
    ListDatasetsArgs,
    NewSnapshotNameArgs,
    PairArgs,
    PlanArgs,
    ReplicationConfig,
    ReplicationCreate,
    RestoreArgs,
    RunArgs,
    RunOnetimeArgs,
    TargetUnmatchedSnapshotsArgs,
)
from middlewared_plugin.services.replication_runs import ReplicationRuns
from middlewared_plugin.services.replication_validation import Facts, check_task
from middlewared_plugin.services.snapshottask import SnapshotTaskBinding
from middlewared_plugin.snapshots.naming import format_snapshot_name, name_regex_matches, parse_snapshot_name
from middlewared_plugin.zfs.commands import Zfs
from middlewared_plugin.zfs.features import Feature
from middlewared_plugin.zfs.types import is_same_or_descendant

if TYPE_CHECKING:
    from middlewared_plugin.app import App

WRITE = ("REPLICATION_TASK_WRITE",)
RUN_METHOD = "replication.run"
#: Kept in each stored task, never shown: the last job id handed out before the task was created. Older
#: `replication.run` jobs naming its id ran something else: a deleted task that had the same id (databases from
#: before ids stopped being reused) or an id that did not exist yet. Job ids only grow, so unlike clock times
#: this cannot go wrong.
JOBS_AFTER = "jobs_after"
SNAPSHOT_TASK_SERVICE = "pool.snapshottask"
#: Datasets `list_datasets` never offers: boot pools and the system dataset.
_HIDDEN_DATASET = re.compile(r"^(boot-pool|freenas-boot)(/|$)|^[^/]+/\.system(/|$)")
ZVOL_TARGET_MESSAGE = "Target dataset is a zvol: zvols can't be used as a remote replication destination"


def target_dataset_for(source_datasets: list[str], target_dataset: str, source: str) -> str:
    """Where `source` lands: the target itself for one source, else target/<path below the sources' common parent>."""
    roots = list(dict.fromkeys(source_datasets))
    base = roots[0] if len(roots) == 1 else _common_parent(roots)
    relative = source[len(base):].lstrip("/") if base else source
    return f"{target_dataset}/{relative}" if relative else target_dataset


def _common_parent(names: list[str]) -> str:
    common: list[str] = []
    for parts in zip(*(n.split("/") for n in names), strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/".join(common)


class EncryptionKeys:
    """TrueNAS's `has_encrypted_dataset_keys` rule, on what this server keeps.

    TrueNAS reports, for PUSH tasks only, whether `pool.dataset.export_keys_for_replication` would export any
    key: the keys it stores of the encryption roots a task sends. Per source: the source's own encryption root
    when the source inherits its key, nothing when it is not encrypted, else the source itself and, for a
    recursive task, the encryption roots below it. TrueNAS stores a dataset's hex key when it creates the
    dataset, and when a replication creates one with `encryption_key_location: "$TrueNAS"` on this machine
    (zettarepl records it after the run; passphrases are never stored). This server creates no encrypted
    datasets of its own, so the keys it holds are those of the second kind: the HEX "$TrueNAS" keys of tasks
    whose target is here (LOCAL, or PULL), for each source's target while it exists as its own encryption root
    (that is, once a run has made it one).
    """

    def __init__(self, zfs: Zfs, stored_tasks: list[dict[str, Any]]):
        self.zfs = zfs
        self._candidates = {
            target_dataset_for(task["source_datasets"], task["target_dataset"], source)
            for task in stored_tasks
            if task.get("encryption") and not task.get("encryption_inherit") and task.get("encryption_key")
            and task.get("encryption_key_format") == "HEX"
            and task.get("encryption_key_location") == TRUENAS_KEY_LOCATION
            and (task["transport"] == "LOCAL" or task["direction"] == "PULL")
            for source in task["source_datasets"]
        }
        self._roots: dict[str, str | None] = {}
        self._keyed: set[str] | None = None

    async def exportable_for(self, task: dict[str, Any]) -> bool:
        if task["direction"] != "PUSH":
            return False
        keyed = await self._keyed_roots()
        if not keyed:
            return False
        for source in task["source_datasets"]:
            root = await self._encryption_root(source)
            if root is None:
                continue
            if root != source:
                if root in keyed:
                    return True
            elif any(is_same_or_descendant(k, source) if task["recursive"] else k == source for k in keyed):
                return True
        return False

    async def _keyed_roots(self) -> set[str]:
        """The candidates that are their own encryption root now."""
        if self._keyed is None:
            self._keyed = set()
            try:
                if self._candidates and (await self.zfs.features()).has(Feature.ENCRYPTION):
                    self._keyed = {c for c in self._candidates if await self._encryption_root(c) == c}
            except CallError:
                # This server's ZFS does not answer: no key can be shown to be exportable.
                pass
        return self._keyed

    async def _encryption_root(self, dataset: str) -> str | None:
        """The dataset's encryption root; None when it is not encrypted or does not exist (on TrueNAS a
        missing source finds only its own stored key, and a key is only known here for a dataset that exists)."""
        if dataset not in self._roots:
            try:
                root = (await self.zfs.get_properties(dataset, ["encryptionroot"]))["encryptionroot"]
            except CallError:
                root = None
            self._roots[dataset] = root or None
        return self._roots[dataset]


class ReplicationService(CRUDService):
    namespace = "replication"
    role_prefix = "REPLICATION_TASK"
    #: TrueNAS's attachment delegate name for these tasks (`attachments.py`).
    attachment_delegate = "replication"
    table = "replication"
    entry_name = "Replication"
    entry_model = ReplicationCreate
    create_arg = "replication_create"
    update_arg = "replication_update"
    encrypted_fields = ("encryption_key",)
    secret_fields = ("encryption_key",)

    def __init__(self, app: App):
        super().__init__(app)
        self.states = ReplicationStates(app.store)
        self.runs = ReplicationRuns(self)

    async def setup(self) -> None:
        await self.states.load()
        await self.runs.setup()

    async def resolve(self, definition: dict[str, Any]) -> dict[str, Any]:
        """A validated create-shaped definition as the entry the engine runs (credentials and snapshot tasks
        as objects, secrets in clear)."""
        ctx = CallContext(self.app, None)
        doc = await self.before_save(ctx, definition, None)
        return (await self.extend(ctx, [{"id": 0, **doc}]))[0]

    # Runs -----------------------------------------------------------------------------------------------

    @api_method(RunArgs, roles=WRITE, job=True, logs=True, read_roles=("REPLICATION_TASK_READ",))
    async def run(self, ctx: CallContext, id: int, options: dict[str, Any]) -> None:
        """Run a replication task now (also when it is disabled); progress and log live in the job."""
        await self.runs.run(ctx, id)

    @api_method(RunOnetimeArgs, roles=WRITE, job=True, logs=True)
    async def run_onetime(self, ctx: CallContext, data: dict[str, Any]) -> None:
        """Replicate once with an unsaved task definition."""
        await self.runs.run_onetime(ctx, data)

    @api_method(PlanArgs, roles=("REPLICATION_TASK_READ",))
    async def plan(self, ctx: CallContext, task: int | dict[str, Any]) -> dict[str, Any]:
        """What the next run would do, changing nothing: per dataset the base, the snapshots to send with
        estimated bytes, what it would destroy (target retention, rollback, from scratch), and conflicts."""
        internal = CallContext(self.app, None)
        if isinstance(task, int):
            entry = await self.get_instance(internal, task)
        else:
            task = self._validate_model("replication_plan", task)
            verrors = ValidationErrors()
            await self.validate(ctx, verrors, "replication_plan", task, None)
            verrors.check()
            entry = await self.resolve(task)
        return await self.runs.plan(entry)

    # Entries -------------------------------------------------------------------------------------------

    async def extend(self, ctx: CallContext, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        credentials = {c["id"]: c for c in await self.app.service("keychaincredential").stored()}
        snapshot_tasks = await self._snapshot_task_objects()
        jobs = self._run_jobs({doc["id"]: doc.get(JOBS_AFTER, 0) for doc in entries})
        extended = []
        for doc in entries:
            entry = dict(doc)
            entry.pop(JOBS_AFTER, None)
            shared = entry.pop("naming_schema", [])
            entry["naming_schema"] = [] if entry["direction"] == "PUSH" else shared
            entry["also_include_naming_schema"] = shared if entry["direction"] == "PUSH" else []
            entry["ssh_credentials"] = credentials.get(doc.get("ssh_credentials"))
            entry["periodic_snapshot_tasks"] = [
                snapshot_tasks[i] for i in doc.get("periodic_snapshot_tasks", []) if i in snapshot_tasks
            ]
            entry["schedule_description"] = describe(entry.get("schedule"))
            state = self.states.get(entry["id"])
            # The scheduler's `job` key lives at the top level of query results.
            state.pop("job", None)
            entry["state"] = state
            job = jobs.get(entry["id"])
            entry["job"] = job.to_json(raw_result=False) if job is not None else None
            # Computed only when a query asks for it (`entries`), as on TrueNAS.
            entry["has_encrypted_dataset_keys"] = False
            extended.append(entry)
        return extended

    async def entries(self, ctx: CallContext, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        entries = await super().entries(ctx, extra)
        if (extra or {}).get("check_dataset_encryption_keys") and any(e["direction"] == "PUSH" for e in entries):
            keys = EncryptionKeys(Zfs(self.app.zfs_runner), await self.stored())
            for entry in entries:
                entry["has_encrypted_dataset_keys"] = await keys.exportable_for(entry)
        return entries

    async def _snapshot_task_objects(self) -> dict[int, dict[str, Any]]:
        """Snapshot task entries as a replication entry nests them: no `vmware_sync`, `state` as JSON text."""
        service = self.app.services.get(SNAPSHOT_TASK_SERVICE)
        if service is None:
            return {}
        tasks = await service.extend(CallContext(self.app, None), await service.stored())
        objects = {}
        for task in tasks:
            obj = {k: v for k, v in task.items() if k != "vmware_sync"}
            obj["state"] = ejson.dumps(obj.get("state", {}))
            objects[obj["id"]] = obj
        return objects

    async def _stored_snapshot_tasks(self) -> dict[int, dict[str, Any]]:
        service = self.app.services.get(SNAPSHOT_TASK_SERVICE)
        return {} if service is None else {t["id"]: t for t in await service.stored()}

    def _run_jobs(self, jobs_after: dict[int, int]) -> dict[Any, Any]:
        """Task id (of `jobs_after`: task id -> its JOBS_AFTER) -> its latest `replication.run` job since it was
        created; a running one wins over newer queued ones."""
        chosen: dict[Any, Any] = {}
        for job in sorted(self.app.jobs.jobs.values(), key=lambda j: j.id):
            if job.method != RUN_METHOD or not job.arguments:
                continue
            task_id = job.arguments[0]
            if task_id not in jobs_after or job.id <= jobs_after[task_id]:
                continue
            current = chosen.get(task_id)
            if current is None or current.state is not JobState.RUNNING or job.state is JobState.RUNNING:
                chosen[task_id] = job
        return chosen

    def compress(self, entry: dict[str, Any]) -> dict[str, Any]:
        data = super().compress(entry)
        data["ssh_credentials"] = entry["ssh_credentials"]["id"] if entry["ssh_credentials"] else None
        data["periodic_snapshot_tasks"] = [t["id"] for t in entry["periodic_snapshot_tasks"]]
        return data

    def redact(self, credentials: Credentials | None, entry: dict[str, Any]) -> dict[str, Any]:
        entry = super().redact(credentials, entry)
        if credentials is None or credentials.has_role(self.write_role) or not entry.get("ssh_credentials"):
            return entry
        return {**entry, "ssh_credentials": {**entry["ssh_credentials"], "attributes": REDACTED}}

    # Validation and storage ----------------------------------------------------------------------------

    async def validate(
        self, ctx: CallContext, verrors: ValidationErrors, schema: str, data: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> None:
        own_id = old["id"] if old else None
        name_taken = any(t["name"] == data["name"] and t["id"] != own_id for t in await self.stored())
        snapshot_tasks: list[dict[str, Any] | None] = []
        if data["direction"] == "PUSH":
            known = await self._stored_snapshot_tasks()
            snapshot_tasks = [known.get(i) for i in data["periodic_snapshot_tasks"]]
        credential_error = None
        credential: dict[str, Any] | None = None
        if data["transport"] != "LOCAL" and data["ssh_credentials"] is not None:
            try:
                credential = await self.app.service("keychaincredential").get_of_type(
                    CallContext(self.app, None), data["ssh_credentials"], SSH_CREDENTIALS)
            except CallError as exc:
                credential_error = str(exc)
        may_pull = not (ctx.has_role("REPLICATION_TASK_WRITE") and not ctx.has_role("REPLICATION_TASK_WRITE_PULL"))
        destination = await self._destination_facts(data, credential)
        check_task(verrors, schema, data, Facts(name_taken, snapshot_tasks, credential_error, may_pull,
                                                **destination))
        if (data["direction"] == "PUSH" and data["transport"] != "LOCAL" and data["ssh_credentials"] is not None
                and credential_error is None):
            await self._check_remote_target(verrors, schema, data)

    async def _destination_facts(self, data: dict[str, Any], credential: dict[str, Any] | None) -> dict[str, Any]:
        """What is known before a run about where the data lands: whether it is the sources' own host, and,
        when it is this server (LOCAL and PULL tasks), its pools and whether its ZFS has native encryption.
        A remote destination is checked when it answers: `replication.plan` reports what is wrong there."""
        local_zfs = self.app.settings.local_zfs_ssh
        if data["transport"] == "LOCAL":
            same_host = True
        else:
            host = str(((credential or {}).get("attributes") or {}).get("host", ""))
            # This server's ZFS may itself live on another host (`local_zfs_ssh`): then that host is "here".
            same_host = host == local_zfs["host"] if local_zfs else is_this_host(host)
        if data["transport"] != "LOCAL" and data["direction"] == "PUSH":
            return {"same_host": same_host}
        zfs = Zfs(self.app.zfs_runner)
        try:
            pools = frozenset(pool.name for pool in await zfs.pools())
            encryption = (await zfs.features()).has(Feature.ENCRYPTION)
        except CallError:
            # This server's ZFS does not answer: nothing is known to refuse, the run reports it.
            return {"same_host": same_host}
        return {"same_host": same_host, "target_pools": pools, "target_encryption": encryption}

    async def _check_remote_target(self, verrors: ValidationErrors, schema: str, data: dict[str, Any]) -> None:
        """Refuse an existing zvol as the remote target (a stream of filesystems cannot be received into one)."""
        try:
            runner = await self.app.service("keychaincredential").runner(data["ssh_credentials"], sudo=data["sudo"])
            found = await Zfs(runner).get_properties(data["target_dataset"], ["type"])
        except CallError:
            # Unreachable remote or no such target yet: nothing is known to refuse.
            return
        if found.get("type") == "volume":
            verrors.add(f"{schema}.target_dataset", ZVOL_TARGET_MESSAGE)

    async def before_save(self, ctx: CallContext, data: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        doc = dict(data)
        also_include = doc.pop("also_include_naming_schema")
        if doc["direction"] == "PUSH":
            doc["naming_schema"] = also_include
        if old is None:
            doc[JOBS_AFTER] = self.app.jobs.last_id
        else:
            # Entries never show it: carried over from the stored task (0 for tasks from before it existed).
            doc[JOBS_AFTER] = ((await self.stored_one(old["id"])) or {}).get(JOBS_AFTER, 0)
        return doc

    async def after_delete(self, ctx: CallContext, entry: dict[str, Any]) -> None:
        await self.states.remove(entry["id"])

    # State -----------------------------------------------------------------------------------------------

    async def set_state(self, task_id: int, state: dict[str, Any]) -> None:
        """Record a task's new state (from the engine) and send the partial `replication.query` CHANGED event."""
        current = await self.states.set(task_id, state)
        stored = await self.stored_one(task_id)
        job = self._run_jobs({task_id: stored.get(JOBS_AFTER, 0)} if stored else {}).get(task_id)
        fields = {"state": {
            **current,
            "job": job.to_json(raw_result=False) if job is not None else None,
            "last_snapshot": current.get("last_snapshot"),
        }}
        self.app.bus.publish(Event(self.event_name, "CHANGED", task_id, fields))

    # What other services ask -----------------------------------------------------------------------------

    async def credential_users(self, credential: dict[str, Any]) -> list[CredentialUse]:
        """Tasks using an SSH_CREDENTIALS entry; unbinding disables the task and clears its credentials."""
        if credential["type"] != SSH_CREDENTIALS:
            return []
        return [
            CredentialUse(f"Replication task {task['name']}", "disable",
                          lambda task_id=task["id"]: self._unbind_credentials(task_id))
            for task in await self.stored() if task.get("ssh_credentials") == credential["id"]
        ]

    async def _unbind_credentials(self, task_id: int) -> None:
        await self.save_fields(task_id, enabled=False, ssh_credentials=None)

    async def snapshot_task_bindings(self, task_id: int) -> list[SnapshotTaskBinding]:
        """Replication tasks bound to a periodic snapshot task (pool.snapshottask refuses to disable or
        delete a task an enabled replication needs)."""
        return [
            SnapshotTaskBinding(
                id=task["id"],
                name=task["name"],
                enabled=task["enabled"],
                direction=task["direction"],
                periodic_snapshot_tasks=tuple(task["periodic_snapshot_tasks"]),
                also_include_naming_schema=tuple(task["naming_schema"]) if task["direction"] == "PUSH" else (),
            )
            for task in await self.stored() if task_id in task["periodic_snapshot_tasks"]
        ]

    async def retention_owners(self, datasets: list[str]) -> list[Any]:
        """Periodic snapshot retention asks: keep what PUSH tasks holding pending snapshots still need."""
        return await self.runs.retention_owners(datasets)

    async def snapshot_task_deleted(self, task_id: int) -> None:
        """Unbind a deleted periodic snapshot task from every replication task."""
        for task in await self.stored():
            if task_id in task["periodic_snapshot_tasks"]:
                kept = [i for i in task["periodic_snapshot_tasks"] if i != task_id]
                await self.save_fields(task["id"], periodic_snapshot_tasks=kept)

    async def dataset_attachments(self) -> list[Attachment]:
        """Every task with its local datasets: the sources of PUSH tasks, the target of PULL tasks, both for
        LOCAL ones. After its periodic snapshot tasks in `order`: it depends on them."""
        found = []
        for task in await self.stored():
            local = [*(task["source_datasets"] if task["direction"] == "PUSH" or task["transport"] == "LOCAL"
                       else []),
                     *([task["target_dataset"]] if task["direction"] == "PULL" or task["transport"] == "LOCAL"
                       else [])]
            found.append(Attachment(
                "Replication", task["name"], task["enabled"], order=1,
                delete=lambda id=task["id"]: self.delete(CallContext(self.app, None), id),
                toggle=lambda enabled, id=task["id"]: self.save_fields(id, enabled=enabled),
                delegate=self.attachment_delegate, datasets=tuple(local),
                entry=lambda id=task["id"]: self.get_instance(CallContext(self.app, None), id)))
        return found

    # Helper methods -------------------------------------------------------------------------------------

    async def _zfs(self, transport: str, ssh_credentials: int | None) -> Zfs:
        """ZFS of the far side: this server's own for LOCAL, else the SSH credential's host."""
        if transport == "LOCAL":
            return Zfs(self.app.zfs_runner)
        if ssh_credentials is None:
            raise CallError("SSH Credentials are required for non-local replication", errno.EINVAL)
        return Zfs(await self.app.service("keychaincredential").runner(ssh_credentials))

    @staticmethod
    def _remote_error(transport: str, exc: CallError) -> CallError:
        """SSH problems (not a failing zfs command) are reported with EACCES, as TrueNAS does."""
        if transport == "LOCAL" or isinstance(exc, CommandFailed):
            return exc
        return CallError(exc.errmsg, errno.EACCES)

    @api_method(ListDatasetsArgs, roles=WRITE)
    async def list_datasets(self, ctx: CallContext, transport: str, ssh_credentials: int | None) -> list[str]:
        """Every dataset on the chosen side except boot pools and system datasets."""
        try:
            zfs = await self._zfs(transport, ssh_credentials)
            names: list[str] = []
            for pool in await zfs.pools():
                try:
                    names.extend(d.name for d in await zfs.list_datasets(pool.name))
                except CallError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    # The pool went away between `zpool list` and `zfs get`.
        except CallError as exc:
            raise self._remote_error(transport, exc) from None
        return [n for n in names if not _HIDDEN_DATASET.search(n)]

    @api_method(CreateDatasetArgs, roles=WRITE)
    async def create_dataset(
        self, ctx: CallContext, dataset: str, transport: str, ssh_credentials: int | None,
    ) -> None:
        # A local one (with the parents `zfs create -p` made) is announced as pool.dataset.create's would be.
        watch = TreeWatch(self.app, dataset) if transport == "LOCAL" else None
        if watch is not None:
            await watch.start()
        try:
            zfs = await self._zfs(transport, ssh_credentials)
            await zfs.create_dataset(dataset)
        except CallError as exc:
            raise self._remote_error(transport, exc) from None
        finally:
            if watch is not None:
                await watch.finish()

    @api_method(roles=WRITE)
    async def list_naming_schemas(self, ctx: CallContext) -> list[str]:
        """Every naming schema in use by a snapshot task or a replication task, sorted."""
        schemas = {t["naming_schema"] for t in (await self._stored_snapshot_tasks()).values()}
        for task in await self.stored():
            schemas.update(task["naming_schema"])
        return sorted(schemas)

    @api_method(CountEligibleManualSnapshotsArgs, roles=WRITE)
    async def count_eligible_manual_snapshots(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, int]:
        """How many snapshots the datasets have, and how many of those a naming schema or `name_regex` selects."""
        schemas, regex = data["naming_schema"], data["name_regex"]
        if schemas and regex:
            raise CallError("`naming_schema` and `name_regex` cannot be used simultaneously", errno.EINVAL)
        if not schemas and not regex:
            raise CallError("Either `naming_schema` or `name_regex` must be specified", errno.EINVAL)
        if regex:
            try:
                re.compile(f"({regex})$")
            except re.error as exc:
                raise CallError(f"Invalid `name_regex`: {exc}", errno.EINVAL) from None
        zfs = await self._zfs(data["transport"], data["ssh_credentials"])
        names = [s.name for ds in data["datasets"] for s in await zfs.list_snapshots(ds, recursive=False)]
        if regex:
            eligible = [n for n in names if name_regex_matches(n, regex)]
        else:
            eligible = [n for n in names if any(parse_snapshot_name(n, s) is not None for s in schemas)]
        return {"total": len(names), "eligible": len(eligible)}

    @api_method(TargetUnmatchedSnapshotsArgs, roles=WRITE)
    async def target_unmatched_snapshots(
        self, ctx: CallContext, direction: str, source_datasets: list[str], target_dataset: str, transport: str,
        ssh_credentials: int | None,
    ) -> dict[str, list[str]]:
        """Snapshots on existing targets that their source lacks (what a run would have to destroy or keep)."""
        try:
            local, far = Zfs(self.app.zfs_runner), await self._zfs(transport, ssh_credentials)
            source_zfs, target_zfs = (local, far) if direction == "PUSH" else (far, local)
            unmatched: dict[str, list[str]] = {}
            for source in source_datasets:
                target = target_dataset_for(source_datasets, target_dataset, source)
                if not await target_zfs.exists(target):
                    continue
                try:
                    on_source = {s.name for s in await source_zfs.list_snapshots(source, recursive=False)}
                except CallError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    on_source = set()
                extra = [s.name for s in await target_zfs.list_snapshots(target, recursive=False)
                         if s.name not in on_source]
                if extra:
                    unmatched[target] = extra
            return unmatched
        except CallError:
            raise
        except Exception as exc:
            raise CallError(repr(exc)) from exc

    @api_method(RestoreArgs, roles=WRITE)
    async def restore(self, ctx: CallContext, id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Create the task that brings a task's replicated data back: opposite direction, disabled, manual."""
        task = await self.get_instance(CallContext(self.app, None), id)
        new: dict[str, Any] = {
            "name": data["name"],
            "target_dataset": data["target_dataset"],
            "direction": "PULL" if task["direction"] == "PUSH" else "PUSH",
            "source_datasets": [target_dataset_for(task["source_datasets"], task["target_dataset"], s)
                                for s in task["source_datasets"]],
            "ssh_credentials": task["ssh_credentials"]["id"] if task["ssh_credentials"] else None,
            "retention_policy": "NONE",
            "auto": False,
            "enabled": False,
        }
        for key in ("transport", "netcat_active_side", "netcat_active_side_listen_address",
                    "netcat_active_side_port_min", "netcat_active_side_port_max",
                    "netcat_passive_side_connect_address", "recursive", "properties", "replicate",
                    "compression", "large_block", "embed", "compressed", "retries"):
            new[key] = task[key]
        if task["name_regex"]:
            new["name_regex"] = task["name_regex"]
        elif new["direction"] == "PUSH":
            new["also_include_naming_schema"] = task["naming_schema"]
        else:
            new["naming_schema"] = sorted(
                {t["naming_schema"] for t in task["periodic_snapshot_tasks"]} | set(task["also_include_naming_schema"])
            )
        return await self.create(ctx, self._validate_model(self.create_arg, new))

    @api_method(NewSnapshotNameArgs, private=True)
    async def new_snapshot_name(self, ctx: CallContext, naming_schema: str) -> str:
        return format_snapshot_name(naming_schema, datetime.now().astimezone())

    @api_method(PairArgs, private=True)
    async def pair(self, ctx: CallContext, data: dict[str, Any]) -> dict[str, Any]:
        """Legacy pairing: authorize a remote's public key here (as keychaincredential.ssh_pair), old result names.

        Full admins only (private). Unlike the semi-automatic setup, TrueNAS's legacy pairing never changes
        the account's shell.
        """
        paired = await self.app.service("keychaincredential").pair_here(
            ctx, data["user"] or "root", data["public-key"], unlock_login=False)
        return {"ssh_port": paired["port"], "ssh_hostkey": paired["host_key"]}


class ReplicationConfigService(ConfigService):
    namespace = "replication.config"
    role_prefix = "REPLICATION_TASK_CONFIG"
    table = "replication_config"
    entry_model = ReplicationConfig
    update_arg = "replication_config_update"

    async def after_update(self, ctx: CallContext, config: dict[str, Any]) -> None:
        # Waiting runs re-check the new limit at once.
        await self.app.service("replication").runs.slots.set_max_parallel(config["max_parallel_replication_tasks"])


__all__ = ["ReplicationConfigService", "ReplicationService", "target_dataset_for"]
