"""The one job manager: queueing with per-lock order, events, logs, abort, and history in SQLite.

Job history survives restarts: every state change is written to the `jobs` table, and at start jobs
that were WAITING or RUNNING when the process died are marked FAILED with an error that says so.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.errors import CallError
from middlewared_plugin.events import Event, EventBus
from middlewared_plugin.jobs.job import Job, JobState, logs_excerpt
from middlewared_plugin.protocol import ejson
from middlewared_plugin.store.datadir import open_private
from middlewared_plugin.store.db import Store

logger = logging.getLogger(__name__)

JobFunc = Callable[[Job], Awaitable[Any]]
#: (method, arguments) -> arguments as job records show them.
ArgumentsRedactor = Callable[[str, list[Any]], list[Any]]
#: (method, arguments, result) -> result as job records show them.
ResultRedactor = Callable[[str, list[Any], Any], Any]

#: How many finished jobs `core.get_jobs` keeps (in memory and in SQLite).
HISTORY_SIZE = 1000

INTERRUPTED_ERROR = "[EINTR] Job was interrupted: the middleware stopped while it was running"


class StoredJob:
    """A finished job from an earlier process, as `core.get_jobs` shows it."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.id: int = doc["id"]
        self.state = JobState(doc["state"])
        self.method: str = doc["method"]
        self.arguments: list[Any] = doc["arguments"]
        self.username: str | None = (doc.get("credentials") or {}).get("data", {}).get("username")
        self.read_roles: tuple[str, ...] = tuple(doc.get("read_roles", ()))

    def to_json(self, *, raw_result: bool = False) -> dict[str, Any]:
        """The stored record; it never held a raw result, so `raw_result` cannot bring one back."""
        doc = {k: v for k, v in self.doc.items() if k != "read_roles"}
        return ejson.loads(json.dumps(doc))

    def owned_by(self, credentials: Credentials | None) -> bool:
        return credentials is not None and (
            credentials.is_full_admin or (self.username is not None and self.username == credentials.username))

    def visible_to(self, credentials: Credentials | None) -> bool:
        if credentials is None:
            return False
        if credentials.is_full_admin or (self.username is not None and self.username == credentials.username):
            return True
        return bool(self.read_roles) and credentials.has_any_role(self.read_roles)


class JobManager:
    def __init__(self, store: Store, bus: EventBus, logs_dir: Path):
        self.store = store
        self.bus = bus
        self.logs_dir = logs_dir
        self.jobs: dict[int, Job | StoredJob] = {}
        self._next_id = 1
        self._lock_queues: dict[str, list[Job]] = {}
        self._lock_mutexes: dict[str, asyncio.Lock] = {}
        self._log_writes: dict[int, asyncio.Task[None]] = {}
        #: Set by the app, which knows each method's secrets.
        self.redact_arguments: ArgumentsRedactor = lambda method, args: args
        self.redact_result: ResultRedactor = lambda method, args, result: result

    async def load_history(self) -> None:
        """Load stored jobs; fail those an earlier process left unfinished."""
        for _, doc in await self.store.all("jobs"):
            if not JobState(doc["state"]).finished:
                doc.update(
                    state=JobState.FAILED.value,
                    error=INTERRUPTED_ERROR,
                    exc_info={"repr": INTERRUPTED_ERROR, "type": "CallError", "errno": errno.EINTR, "extra": None},
                    time_finished=json.loads(ejson.dumps(datetime.now(UTC))),
                )
                await self.store.upsert("jobs", doc["id"], doc)
            self.jobs[doc["id"]] = StoredJob(doc)
            self._next_id = max(self._next_id, doc["id"] + 1)
        # Ids of history rows deleted since (trimmed, or the newest ones) stay used: clients may still hold them.
        self._next_id = max(self._next_id, await self.store.last_id("jobs") + 1)

    @property
    def last_id(self) -> int:
        """The highest job id handed out so far (0 before the first): job ids only grow, never reused."""
        return self._next_id - 1

    # Submission --------------------------------------------------------------------------------------

    def submit(
        self,
        method: str,
        arguments: list[Any],
        func: JobFunc,
        *,
        credentials: Credentials | None,
        message_id: Any = None,
        lock: str | None = None,
        lock_queue_size: int = 5,
        logs: bool = False,
        transient: bool = False,
        description: str | None = None,
        read_roles: tuple[str, ...] = (),
    ) -> Job:
        """Queue a job; with a lock whose queue is full, join the last queued job instead (TrueNAS rule)."""
        if lock is not None:
            queued = [j for j in self._lock_queues.get(lock, []) if j.state is JobState.WAITING]
            if lock_queue_size == 0 and self._lock_queues.get(lock):
                raise CallError("This job is already being performed", errno.EBUSY)
            if queued and len(queued) >= lock_queue_size:
                joined = queued[-1]
                if message_id is not None:
                    joined.message_ids.append(message_id)
                self.emit_changed(joined)
                return joined
        job_id = self._next_id
        self._next_id += 1
        job = Job(
            self, job_id, method, arguments, credentials=credentials, message_id=message_id,
            description=description, transient=transient,
            logs_path=(self.logs_dir / f"{job_id}.log") if logs else None, read_roles=read_roles, lock=lock,
        )
        self.jobs[job_id] = job
        if lock is not None:
            self._lock_queues.setdefault(lock, []).append(job)
        self._emit(job, "ADDED")
        self._persist(job)
        job.task = asyncio.get_running_loop().create_task(self._run(job, func), name=f"job-{job_id}-{method}")
        self._trim_history()
        return job

    async def _run(self, job: Job, func: JobFunc) -> None:
        try:
            if job.lock is not None:
                mutex = self._lock_mutexes.setdefault(job.lock, asyncio.Lock())
                async with mutex:
                    await self._execute(job, func)
            else:
                await self._execute(job, func)
        except asyncio.CancelledError:
            # Aborted while WAITING on its lock.
            await self._finish(job, JobState.ABORTED, exc=CallError("Job aborted", errno.ECANCELED))
        finally:
            if job.lock is not None:
                queue = self._lock_queues.get(job.lock, [])
                if job in queue:
                    queue.remove(job)
                if not queue:
                    self._lock_queues.pop(job.lock, None)

    async def _execute(self, job: Job, func: JobFunc) -> None:
        if job.abort_requested:
            raise asyncio.CancelledError
        job.set_running()
        self._persist(job)
        try:
            result = await func(job)
        except asyncio.CancelledError:
            job.log("Aborted")
            await self._finish(job, JobState.ABORTED, exc=CallError("Job aborted", errno.ECANCELED))
            return
        except Exception as exc:
            if not isinstance(exc, CallError):
                logger.exception("Job %s (%s) failed", job.id, job.method)
            job.log(f"Error: {exc}")
            await self._finish(job, JobState.FAILED, exc=exc, trace="".join(traceback.format_exception(exc)))
            return
        try:
            ejson.dumps(result)
        except (TypeError, ValueError) as exc:
            job.result_encoding_error = repr(exc)
            result = None
        await self._finish(job, JobState.SUCCESS, result=result)

    async def _finish(self, job: Job, state: JobState, *, result: Any = None, exc: BaseException | None = None,
                trace: str | None = None) -> None:
        if job.state.finished:
            return
        if job.logs_path is not None:
            job.logs_excerpt = logs_excerpt(await self.read_log(job) or "")
        job.finish(state, result=result, exc=exc, formatted_trace=trace)
        self.emit_changed(job)
        self._persist(job)
        if not job.done.done():
            job.done.set_result(None)
        if job.transient:
            self.jobs.pop(job.id, None)

    # Abort and wait -----------------------------------------------------------------------------------

    def abort(self, job_id: int) -> None:
        job = self.get(job_id)
        if not isinstance(job, Job) or job.state.finished:
            return
        job.abort_requested = True
        if job.task is not None:
            job.task.cancel()

    async def wait(self, job: Job) -> Any:
        """Wait for a job and return its result, raising what it raised (for held-back calls, job_wait)."""
        await asyncio.shield(job.done)
        return job

    def get(self, job_id: int) -> Job | StoredJob | None:
        return self.jobs.get(job_id)

    # Events, logs, persistence ------------------------------------------------------------------------

    def emit_changed(self, job: Job) -> None:
        self._emit(job, "CHANGED")

    def _emit(self, job: Job, kind: str) -> None:
        if job.transient:
            return
        raw = job.result
        self.bus.publish(Event(
            "core.get_jobs", kind, job.id, job.to_json(),  # type: ignore[arg-type]
            audience=job.visible_to,
            # Clients (ours, truenas_api_client) take a job's result from its final event: its owner gets it raw,
            # as in the call's own answer; everyone else (read roles) sees the record's redacted result.
            redact=lambda creds, fields: {**fields, "result": raw} if job.owned_by(creds) else fields,
        ))

    def append_log(self, job: Job, text: str) -> None:
        assert job.logs_path is not None
        path = job.logs_path
        previous = self._log_writes.get(job.id)

        async def _append() -> None:
            if previous is not None:
                await previous
            await asyncio.to_thread(_append_text, path, text)

        self._log_writes[job.id] = asyncio.get_running_loop().create_task(_append())

    async def flush_log(self, job: Job) -> None:
        pending = self._log_writes.pop(job.id, None)
        if pending is not None:
            await pending

    async def read_log(self, job: Job | StoredJob) -> str | None:
        path_text = job.logs_path if isinstance(job, Job) else job.doc.get("logs_path")
        if not path_text:
            return None
        if isinstance(job, Job):
            await self.flush_log(job)
        path = Path(path_text)
        return await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")

    def _persist(self, job: Job) -> None:
        if job.transient:
            return
        # Stored as sent on the wire (datetimes as {"$date": ms}), so StoredJob reads back what was sent; never
        # with a raw result: secrets stay out of the database.
        doc = json.loads(ejson.dumps({**job.to_json(), "read_roles": list(job.read_roles)}))

        async def _write() -> None:
            await self.store.upsert("jobs", job.id, doc)

        task = asyncio.get_running_loop().create_task(_write())
        task.add_done_callback(_log_task_error)

    def _trim_history(self) -> None:
        finished = [j for j in self.jobs.values() if j.state.finished]
        excess = len(finished) - HISTORY_SIZE
        for job in sorted(finished, key=lambda j: j.id)[:max(excess, 0)]:
            self.jobs.pop(job.id, None)
            task = asyncio.get_running_loop().create_task(self.store.delete("jobs", job.id))
            task.add_done_callback(_log_task_error)

    async def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            if isinstance(job, Job) and job.task is not None and not job.task.done():
                job.task.cancel()
        tasks = [j.task for j in self.jobs.values() if isinstance(j, Job) and j.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._log_writes.values(), return_exceptions=True)


def _append_text(path: Path, text: str) -> None:
    with open(open_private(path, os.O_WRONLY | os.O_APPEND), "a") as f:
        f.write(text)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Background job write failed: %s", task.exception())
