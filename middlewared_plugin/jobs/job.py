"""A job: one long operation with state, progress, a log and a result (reference §1.6)."""
from __future__ import annotations

import asyncio
import enum
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.errors import CallError, ValidationError, ValidationErrors

if TYPE_CHECKING:
    from middlewared_plugin.jobs.manager import JobManager

#: At most this many progress events per second per job reach subscribers.
PROGRESS_EVENTS_PER_SECOND = 10


class JobState(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCESS, JobState.FAILED, JobState.ABORTED)


def logs_excerpt(text: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= 20:
        return text
    return "".join(lines[:10]) + f"... {len(lines) - 20} more lines ...\n" + "".join(lines[-10:])


class Job:
    def __init__(
        self,
        manager: JobManager,
        id: int,
        method: str,
        arguments: list[Any],
        *,
        credentials: Credentials | None,
        message_id: Any = None,
        description: str | None = None,
        transient: bool = False,
        abortable: bool = False,
        logs_path: Path | None = None,
        read_roles: tuple[str, ...] = (),
        lock: str | None = None,
    ):
        self.manager = manager
        self.id = id
        self.method = method
        self.arguments = arguments
        self.credentials = credentials
        self.message_ids: list[Any] = [] if message_id is None else [message_id]
        self.description = description
        self.transient = transient
        self.abortable = abortable
        self.logs_path = logs_path
        self.logs_excerpt: str | None = None
        self.read_roles = read_roles
        self.lock = lock
        self.progress: dict[str, Any] = {"percent": 0, "description": "", "extra": None}
        self.result: Any = None
        #: The result as job records show it (stored rows, events, core.get_jobs): secrets as "********".
        self.redacted_result: Any = None
        self.result_encoding_error: Any = None
        self.error: str | None = None
        self.exception: str | None = None
        self.exc_info: dict[str, Any] | None = None
        #: The exception a failed or aborted job ended with, re-raised to held-back callers.
        self.raised: BaseException | None = None
        self.state = JobState.WAITING
        self.time_started = datetime.now(UTC)
        self.time_finished: datetime | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[Any] | None = None
        self.abort_requested = False
        self._last_progress_event = 0.0
        self._progress_flush: asyncio.TimerHandle | None = None

    # Progress and logs ---------------------------------------------------------------------------------

    def set_progress(self, percent: float | None = None, description: str | None = None, extra: Any = None) -> None:
        """Update progress; empty values leave the old ones, as TrueNAS does. Events are throttled."""
        new = dict(self.progress)
        if percent is not None:
            new["percent"] = int(percent)
        if description:
            new["description"] = description
        if extra:
            new["extra"] = extra
        if new == self.progress:
            return
        self.progress = new
        self._schedule_progress_event()

    def _schedule_progress_event(self) -> None:
        if self._progress_flush is not None:
            return
        interval = 1 / PROGRESS_EVENTS_PER_SECOND
        wait = self._last_progress_event + interval - time.monotonic()
        if wait <= 0:
            self._emit_progress()
        else:
            self._progress_flush = asyncio.get_running_loop().call_later(wait, self._emit_progress)

    def _emit_progress(self) -> None:
        self._progress_flush = None
        if self.state.finished:
            return
        self._last_progress_event = time.monotonic()
        self.manager.emit_changed(self)

    def log(self, line: str) -> None:
        """Append a line to the job's log (the task log administrators read). Never pass secrets here."""
        if self.logs_path is None:
            return
        self.manager.append_log(self, line if line.endswith("\n") else line + "\n")

    # Lifecycle -------------------------------------------------------------------------------------------

    def set_running(self) -> None:
        self.state = JobState.RUNNING
        self.manager.emit_changed(self)

    def finish(self, state: JobState, *, result: Any = None, exc: BaseException | None = None,
               formatted_trace: str | None = None) -> None:
        if self._progress_flush is not None:
            self._progress_flush.cancel()
            self._progress_flush = None
        self.state = state
        self.time_finished = datetime.now(UTC)
        if state is JobState.SUCCESS:
            self.result = result
            self.redacted_result = self.manager.redact_result(self.method, self.arguments, result)
            self.progress = {**self.progress, "percent": 100}
        elif exc is not None:
            self.raised = exc
            self.error = str(exc)
            self.exception = formatted_trace
            self.exc_info = exc_info(exc)

    def to_json(self, *, raw_result: bool = False) -> dict[str, Any]:
        """The job record; secrets redacted unless `raw_result` (only for `owned_by` credentials)."""
        return {
            "id": self.id,
            "message_ids": list(self.message_ids),
            "method": self.method,
            "arguments": self.manager.redact_arguments(self.method, self.arguments),
            "transient": self.transient,
            "description": self.description,
            "abortable": self.abortable,
            "logs_path": str(self.logs_path) if self.logs_path else None,
            "logs_excerpt": self.logs_excerpt,
            "progress": dict(self.progress),
            "result": self.result if raw_result else self.redacted_result,
            "result_encoding_error": self.result_encoding_error,
            "error": self.error,
            "exception": self.exception,
            "exc_info": self.exc_info,
            "state": self.state.value,
            "time_started": self.time_started,
            "time_finished": self.time_finished,
            "credentials": self.credentials.to_json() if self.credentials else None,
        }

    @property
    def username(self) -> str | None:
        """Who started the job (None: the server itself)."""
        return self.credentials.username if self.credentials is not None else None

    def owned_by(self, credentials: Credentials | None) -> bool:
        """The job's own user or a full admin: who may see its raw result (TrueNAS's `raw_result` rule)."""
        return credentials is not None and (
            credentials.is_full_admin or (self.username is not None and self.username == credentials.username))

    def visible_to(self, credentials: Credentials | None) -> bool:
        if credentials is None:
            return False
        if credentials.is_full_admin:
            return True
        if self.username is not None and self.username == credentials.username:
            return True
        return bool(self.read_roles) and credentials.has_any_role(self.read_roles)


def exc_info(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ValidationErrors):
        return {"repr": repr(exc), "type": "VALIDATION", "errno": None, "extra": exc.triples()}
    if isinstance(exc, ValidationError):
        return {"repr": repr(exc), "type": "VALIDATION", "errno": exc.errno, "extra": exc.triples()}
    if isinstance(exc, CallError):
        return {"repr": repr(exc), "type": type(exc).__name__, "errno": exc.errno, "extra": exc.extra}
    return {"repr": repr(exc), "type": type(exc).__name__, "errno": None, "extra": None}
