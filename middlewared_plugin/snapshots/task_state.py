"""Scheduler state of tasks (reference §3): what `state` shows in `*.query` and survives restarts.

Keys follow zettarepl's naming (`periodic_snapshot_task_<id>`, `replication_task_<id>`) so that every kind
of task can share the `task_state` table without id clashes: each row is `{"key", "state"}` under an id
of its own. Settled states (FINISHED, ERROR, HOLD) are written through, and so is a run's WAITING and its
RUNNING (once each: RUNNING progress updates stay in memory). The process may die during a run (kill -9, a
crash, power loss) and never write how it ended: `load` then finds that in-flight row and records the run as
interrupted (ERROR) rather than show the state from before it or a RUNNING that nothing runs.
"""
from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from middlewared_plugin.store.db import Store

TABLE = "task_state"
PERSISTED_STATES = frozenset({"FINISHED", "ERROR", "HOLD"})
#: A run in progress; stored when it begins, so that a process dying during it can be told at the next start.
IN_FLIGHT_STATES = frozenset({"RUNNING", "WAITING"})


def periodic_snapshot_task_key(task_id: int) -> str:
    return f"periodic_snapshot_task_{task_id}"


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"$datetime": v.isoformat()} if isinstance(v, datetime) else v) for k, v in state.items()}


def _decode(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (datetime.fromisoformat(v["$datetime"]) if isinstance(v, dict) and "$datetime" in v else v)
        for k, v in state.items()
    }


def interrupted(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The ERROR that replaces an in-flight state an earlier process left: the run never ended, it was cut
    short. `last_snapshot` (what did arrive before) is kept; `now` is when the server started again."""
    when = now.astimezone().isoformat(sep=" ", timespec="seconds")
    during = "while this run was waiting to start" if state.get("state") == "WAITING" else "during this run"
    started = state.get("datetime")
    since = f"started at {started.astimezone().isoformat(sep=' ', timespec='seconds')}; " \
        if isinstance(started, datetime) else ""
    new: dict[str, Any] = {"state": "ERROR", "datetime": now,
                           "error": f"Interrupted: the server stopped {during} ({since}restarted at {when})."}
    if "last_snapshot" in state:
        new["last_snapshot"] = state["last_snapshot"]
    return new


class TaskStates:
    """State per task key: read from memory, settled and in-flight states written through to the store."""

    def __init__(self, store: Store):
        self.store = store
        self._states: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, int] = {}
        #: Key -> the in-flight state its stored row has (so RUNNING progress updates are not written again).
        self._stored_in_flight: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the stored states; a run an earlier process left in flight becomes an interrupted ERROR."""
        now = datetime.now(UTC)
        for row_id, doc in await self.store.all(TABLE):
            key = doc.get("key")
            if isinstance(key, str) and isinstance(doc.get("state"), dict):
                self._rows[key] = row_id
                state = _decode(doc["state"])
                if state.get("state") in IN_FLIGHT_STATES:
                    state = interrupted(state, now)
                    await self.store.update(TABLE, row_id, {"key": key, "state": _encode(state)})
                self._states[key] = state

    def get(self, key: str) -> dict[str, Any] | None:
        state = self._states.get(key)
        return copy.deepcopy(state) if state is not None else None

    async def set(self, key: str, state: dict[str, Any]) -> None:
        """Replace a task's state; persisted when settled, and when a run begins (not its progress updates)."""
        self._states[key] = copy.deepcopy(state)
        name = state.get("state")
        if name in IN_FLIGHT_STATES:
            if self._stored_in_flight.get(key) == name:
                return
            self._stored_in_flight[key] = name
        elif name in PERSISTED_STATES:
            self._stored_in_flight.pop(key, None)
        else:
            return
        async with self._lock:
            doc = {"key": key, "state": _encode(state)}
            row = self._rows.get(key)
            if row is None:
                self._rows[key] = await self.store.insert(TABLE, doc)
            else:
                await self.store.update(TABLE, row, doc)

    async def remove(self, key: str) -> None:
        self._states.pop(key, None)
        self._stored_in_flight.pop(key, None)
        async with self._lock:
            row = self._rows.pop(key, None)
            if row is not None:
                await self.store.delete(TABLE, row)
