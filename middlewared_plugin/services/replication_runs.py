"""Running replication tasks: the body of `replication.run` / `run_onetime`, scheduled and snapshot-triggered
runs, the parallel limit with its WAITING reason, one queued rerun at most, and plan previews.

The engine (`replication/engine.py`) plans and executes; this module only decides *when* a task runs and
turns the engine's progress into the job's progress, the task's `state` and the task log.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.jobs.job import Job
from middlewared_plugin.remote.ssh import SshUnreachable
from middlewared_plugin.replication.admission import Footprint, overlaps
from middlewared_plugin.replication.engine import make_transport, pending_snapshots_owner, plan_task, run_task
from middlewared_plugin.replication.executor import Progress
from middlewared_plugin.replication.slots import RunSlots
from middlewared_plugin.replication.transports.base import Transport
from middlewared_plugin.scheduling.schedule import Schedule
from middlewared_plugin.services.base import CallContext
from middlewared_plugin.services.pool import TreeWatch
from middlewared_plugin.units import format_bytes

if TYPE_CHECKING:
    from middlewared_plugin.services.replication import ReplicationService

logger = logging.getLogger(__name__)

RUN_METHOD = "replication.run"
#: The partial `replication.query` RUNNING events carry progress at most this often (job events: 10/s).
STATE_PROGRESS_INTERVAL = 0.5
#: Properties a one-time run never sends unless overridden (as TrueNAS's run_onetime).
ONETIME_EXCLUDED_PROPERTIES = ("mountpoint", "sharenfs", "sharesmb")


def as_sentence(error: BaseException) -> str:
    """The state's error text: the message without the errname prefix, capitalised, with a full stop."""
    text = error.errmsg if isinstance(error, CallError) else str(error)
    text = text.strip() or type(error).__name__
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def run_errno(error: BaseException) -> int:
    """The errno a failed run reports: an SSH host that cannot be used at all is EACCES, as `list_datasets`
    reports the same host (TrueNAS's errno for SSH problems), whatever the connection error was."""
    if isinstance(error, SshUnreachable):
        return errno.EACCES
    return error.errno if isinstance(error, CallError) else errno.EFAULT


def progress_description(p: Progress) -> str:
    text = f"Sending {min(p.snapshots_sent + 1, max(p.snapshots_total, 1))} of {p.snapshots_total}"
    if p.dataset and p.snapshot:
        text += f": {p.dataset}@{p.snapshot}"
    if p.bytes_total:
        text += f" ({format_bytes(p.bytes_sent)} / {format_bytes(p.bytes_total)})"
    elif p.bytes_sent:
        text += f" ({format_bytes(p.bytes_sent)})"
    return text


def progress_extra(p: Progress) -> dict[str, Any]:
    return {
        "dataset": p.dataset,
        "snapshot": p.snapshot,
        "snapshots_sent": p.snapshots_sent,
        "snapshots_total": p.snapshots_total,
        "bytes_sent": p.bytes_sent,
        "bytes_total": p.bytes_total,
        "bytes_total_exact": p.bytes_total_exact,
        "rate": p.rate,
        "eta": p.eta,
    }


def target_is_local(task: dict[str, Any]) -> bool:
    """Whether the task's target dataset is in this server's own pools."""
    return task["transport"] == "LOCAL" or task["direction"] == "PULL"


def footprint(task_key: int | str, task: dict[str, Any]) -> Footprint:
    credentials = task.get("ssh_credentials") or {}
    host = "" if task["transport"] == "LOCAL" else str((credentials.get("attributes") or {}).get("host", ""))
    return Footprint(task_key, task["name"], task["direction"], host,
                     tuple(task["source_datasets"]), task["target_dataset"])


class ReplicationRuns:
    def __init__(self, service: ReplicationService):
        self.service = service
        self.app = service.app
        self.slots = RunSlots()
        #: Task id -> the job running (or waiting to run) it.
        self._active: dict[int, Job] = {}
        #: Tasks with one rerun queued behind their active job.
        self._rerun: set[int] = set()

    async def setup(self) -> None:
        config = await self.app.service("replication.config").config()
        self.slots.max_parallel = config["max_parallel_replication_tasks"]
        self.app.scheduler.add("replication", self.on_tick)
        snapshot_tasks = self.app.services.get("pool.snapshottask")
        if snapshot_tasks is not None:
            snapshot_tasks.on_snapshots_taken.append(self.on_snapshots_taken)

    # Triggers -----------------------------------------------------------------------------------------

    async def on_tick(self, minute: datetime) -> None:
        """Start enabled `auto` tasks whose own schedule fires in this minute."""
        for task in await self.service.stored():
            if task["enabled"] and task["auto"] and task.get("schedule"):
                if Schedule.from_api(task["schedule"]).matches(minute):
                    self.trigger(task["id"], "schedule")

    async def on_snapshots_taken(self, snapshot_task: dict[str, Any], snapshots: list[str]) -> None:
        """Start enabled `auto` tasks bound to a periodic snapshot task (its stored entry) that just took
        its snapshots."""
        now = self.app.scheduler.clock()
        for task in await self.service.stored():
            if not (task["enabled"] and task["auto"] and not task.get("schedule")):
                continue
            if snapshot_task["id"] not in task.get("periodic_snapshot_tasks", []):
                continue
            restrict = task.get("restrict_schedule")
            if restrict and not Schedule.from_api(restrict).matches(now):
                continue
            self.trigger(task["id"], f"periodic snapshot task {snapshot_task['id']}")

    def trigger(self, task_id: int, reason: str) -> None:
        """Run a task automatically: now, or once after its current run (further triggers are dropped)."""
        active = self._active.get(task_id)
        if active is not None and not active.state.finished:
            if task_id in self._rerun:
                logger.info("Replication task %s already has a run queued; %s trigger dropped", task_id, reason)
            else:
                self._rerun.add(task_id)
            return
        spec = self.app.spec(RUN_METHOD)
        job = self.app.submit_job(spec, CallContext(self.app, None), [task_id, {}])
        self._active[task_id] = job

    # replication.run ------------------------------------------------------------------------------------

    async def run(self, ctx: CallContext, task_id: int) -> None:
        """Body of the `replication.run` job."""
        assert ctx.job is not None
        task = await self.service.get_instance(CallContext(self.app, None), task_id)
        active = self._active.get(task_id)
        if active is not None and active is not ctx.job and not active.state.finished:
            raise CallError("Task is already running", errno.EFAULT)
        if task["state"].get("state") == "HOLD":
            raise CallError("Task is on hold", errno.EFAULT)
        self._active[task_id] = ctx.job
        try:
            await self._execute(task_id, task, ctx.job, state=self._state_writer(task_id))
        finally:
            if self._active.get(task_id) is ctx.job:
                del self._active[task_id]
            if task_id in self._rerun:
                self._rerun.discard(task_id)
                asyncio.get_running_loop().call_soon(self.trigger, task_id, "queued rerun")

    def _state_writer(self, task_id: int) -> StateWriter:
        return StateWriter(lambda state: self.service.set_state(task_id, state))

    async def transport_for(self, task: dict[str, Any]) -> Transport:
        remote = None
        if task["transport"] != "LOCAL":
            credentials = task.get("ssh_credentials")
            if not credentials:
                raise CallError("SSH Credentials are required for non-local replication", errno.EINVAL)
            remote = await self.app.service("keychaincredential").runner(credentials["id"], sudo=task["sudo"])
        return make_transport(task, local=self.app.zfs_runner, remote=remote)

    async def _execute(self, task_key: int | str, task: dict[str, Any], job: Job, *, state: StateWriter,
                       mount: bool = True, only_from_scratch: bool = False) -> None:
        job.log(f"Replication task {task['name']!r}: {task['direction']} over {task['transport']}, "
                f"{', '.join(task['source_datasets'])} -> {task['target_dataset']}")

        def waiting(reason: str) -> None:
            job.log(reason)
            job.set_progress(description=reason)
            state.send({"state": "WAITING", "reason": reason})

        def progress(p: Progress) -> None:
            job.set_progress(p.percent, progress_description(p), progress_extra(p))
            state.send_progress({
                "state": "RUNNING",
                "progress": {
                    **progress_extra(p),
                    "current": p.bytes_sent,
                    "total": p.bytes_total,
                },
            })

        settled = False

        async def settle(new_state: dict[str, Any]) -> None:
            nonlocal settled
            settled = True
            state.send(new_state)
            await state.flush()

        async def fail(exc: BaseException) -> None:
            if settled:
                return
            if isinstance(exc, asyncio.CancelledError):
                job.log("Aborted: the target keeps what arrived so far; the next run continues from there")
                await settle({"state": "ERROR", "error": "Replication was aborted."})
            else:
                await settle({"state": "ERROR", "error": as_sentence(exc)})

        # The final state is written while the slot is still held, so a task taking the slot next never shows
        # RUNNING next to one that still does. Whatever ends a run early (an abort while WAITING too, or
        # credentials that cannot connect) leaves ERROR, never a stale WAITING/RUNNING.
        try:
            async with self.slots.slot(footprint(task_key, task), waiting):
                state.send({"state": "RUNNING"})
                job.set_progress(0, "Listing snapshots")
                try:
                    transport = await self.transport_for(task)
                    # pool.dataset/pool.snapshot events for what the run did to a target in this server's pools:
                    # whatever happened, aborted runs included.
                    watch = TreeWatch(self.app, task["target_dataset"]) if target_is_local(task) else None
                    if watch is not None:
                        await watch.start()
                    try:
                        result = await run_task(task, transport, progress=progress, log=job.log,
                                                now=_wall_clock_now(), mount=mount,
                                                only_from_scratch=only_from_scratch)
                    finally:
                        await transport.close()
                        if watch is not None:
                            await watch.finish()
                except (Exception, asyncio.CancelledError) as exc:
                    await fail(exc)
                    raise
                warnings = list(result.warnings)
                for line in warnings:
                    job.log(f"Warning: {line}")
                job.log(f"Finished: {len(result.snapshots_sent)} snapshot(s) sent, "
                        f"{format_bytes(result.bytes_sent)}, {len(result.destroyed)} destroyed, "
                        f"{len(result.rolled_back)} rolled back")
                finished: dict[str, Any] = {"state": "FINISHED", "warnings": warnings}
                if result.snapshots_sent:
                    finished["last_snapshot"] = result.source_snapshots_sent[-1]
                await settle(finished)
        except asyncio.CancelledError as exc:
            await fail(exc)
            raise
        except Exception as exc:
            await fail(exc)
            raise CallError(as_sentence(exc), run_errno(exc)) from exc

    # Source retention -------------------------------------------------------------------------------------

    async def retention_owners(self, datasets: list[str]) -> list[Any]:
        """Owners that keep, on the source, what enabled PUSH tasks with `hold_pending_snapshots` still need:
        unsent snapshots and the last common one (the next run's incremental base)."""
        owners = []
        for task in await self.service.entries(CallContext(self.app, None)):
            if not (task["enabled"] and task["direction"] == "PUSH" and task["hold_pending_snapshots"]):
                continue
            if not any(overlaps(source, root) for source in task["source_datasets"] for root in datasets):
                continue
            try:
                transport = await self.transport_for(task)
            except CallError:
                logger.warning("Replication task %r cannot be reached: its pending snapshots are not known",
                               task["name"])
                continue
            try:
                owners.append(await pending_snapshots_owner(task, transport, now=_wall_clock_now()))
            finally:
                await transport.close()
        return owners

    # replication.run_onetime -----------------------------------------------------------------------------

    async def run_onetime(self, ctx: CallContext, data: dict[str, Any]) -> None:
        assert ctx.job is not None
        job = ctx.job
        definition = {
            **data,
            "name": f"Temporary replication task for job {job.id}",
            "auto": False,
            "schedule": None,
            "only_matching_schedule": False,
            "enabled": True,
        }
        options = {k: definition.pop(k) for k in ("exclude_mountpoint_property", "only_from_scratch", "mount")}
        verrors = ValidationErrors()
        await self.service.validate(ctx, verrors, "replication_run_onetime", definition, None)
        verrors.check()
        excluded = [p for p in ONETIME_EXCLUDED_PROPERTIES
                    if p not in definition["properties_override"]
                    and not (p == "mountpoint" and not options["exclude_mountpoint_property"])]
        definition["properties_exclude"] = list(dict.fromkeys([*definition["properties_exclude"], *excluded]))
        task = await self.service.resolve(definition)
        await self._execute(f"job_{job.id}", task, job, state=StateWriter(None), mount=options["mount"],
                            only_from_scratch=options["only_from_scratch"])

    # replication.plan ------------------------------------------------------------------------------------

    async def plan(self, task: dict[str, Any]) -> dict[str, Any]:
        transport = await self.transport_for(task)
        try:
            plan = await plan_task(task, transport, now=_wall_clock_now())
        finally:
            await transport.close()
        return plan.to_dict()


def _wall_clock_now() -> datetime:
    """Naive local wall-clock time: what snapshot names carry."""
    return datetime.now()


class StateWriter:
    """Sends a task's states, stamping `datetime`; RUNNING progress updates are rate-limited."""

    def __init__(self, sink: Any):
        self._sink = sink
        self._last_progress = 0.0
        self._pending: list[asyncio.Task[None]] = []

    def send(self, state: dict[str, Any]) -> None:
        if self._sink is None:
            return
        task = asyncio.get_running_loop().create_task(self._sink({**state, "datetime": datetime.now(UTC)}))
        self._pending.append(task)
        self._pending = [t for t in self._pending if not t.done()]

    def send_progress(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last_progress >= STATE_PROGRESS_INTERVAL:
            self._last_progress = now
            self.send(state)

    async def flush(self) -> None:
        await asyncio.gather(*self._pending)
