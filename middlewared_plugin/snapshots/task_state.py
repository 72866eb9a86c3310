"""Scheduler state of tasks (reference §3): what `state` shows in `*.query` and survives restarts.

Keys follow zettarepl's naming (`periodic_snapshot_task_<id>`, `replication_task_<id>`) so that every kind
of task can share the `task_state` table without id clashes: each row is `{"key", "state"}` under an id
of its own. Only settled states (FINISHED, ERROR, HOLD) and `last_snapshot` are written; RUNNING and
WAITING live in memory, so a restart shows the last settled state, as TrueNAS does.
"""
from __future__ import annotations

import asyncio
import copy
from datetime import datetime
from typing import Any

from middlewared_plugin.store.db import Store

TABLE = "task_state"
PERSISTED_STATES = frozenset({"FINISHED", "ERROR", "HOLD"})


def periodic_snapshot_task_key(task_id: int) -> str:
    return f"periodic_snapshot_task_{task_id}"


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"$datetime": v.isoformat()} if isinstance(v, datetime) else v) for k, v in state.items()}


def _decode(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (datetime.fromisoformat(v["$datetime"]) if isinstance(v, dict) and "$datetime" in v else v)
        for k, v in state.items()
    }


class TaskStates:
    """State per task key: read from memory, settled states written through to the store."""

    def __init__(self, store: Store):
        self.store = store
        self._states: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        for row_id, doc in await self.store.all(TABLE):
            key = doc.get("key")
            if isinstance(key, str) and isinstance(doc.get("state"), dict):
                self._rows[key] = row_id
                self._states[key] = _decode(doc["state"])

    def get(self, key: str) -> dict[str, Any] | None:
        state = self._states.get(key)
        return copy.deepcopy(state) if state is not None else None

    async def set(self, key: str, state: dict[str, Any]) -> None:
        """Replace a task's state; persisted when settled (a RUNNING state keeps the stored one)."""
        self._states[key] = copy.deepcopy(state)
        if state.get("state") not in PERSISTED_STATES:
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
        async with self._lock:
            row = self._rows.pop(key, None)
            if row is not None:
                await self.store.delete(TABLE, row)
