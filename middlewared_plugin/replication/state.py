"""Replication task states (reference §3): what `replication.query` shows as `state`, kept across restarts.

Stored through the shared `snapshots.task_state.TaskStates` (the `task_state` table, one row per
`replication_task_<id>`, settled states written through, a run's start too, so a run the process died during
reads as an interrupted ERROR after the restart; progress updates in memory only). On top of it:
an unknown task is PENDING, and `last_snapshot` carries over from state to state, so the engine may
report it only when it changes. States outlive disabling a task; the service removes them on delete.
"""
from __future__ import annotations

from typing import Any

from middlewared_plugin.snapshots.task_state import TaskStates
from middlewared_plugin.store.db import Store

PENDING = "PENDING"


def replication_task_key(task_id: int) -> str:
    """The scheduler's name of a replication task (zettarepl's convention)."""
    return f"replication_task_{task_id}"


class ReplicationStates:
    def __init__(self, store: Store):
        self._states = TaskStates(store)

    async def load(self) -> None:
        """Read the persisted states (at start)."""
        await self._states.load()

    def get(self, task_id: int) -> dict[str, Any]:
        """The current state (a copy); `{"state": "PENDING"}` for a task that never ran."""
        return self._states.get(replication_task_key(task_id)) or {"state": PENDING}

    async def set(self, task_id: int, state: dict[str, Any]) -> dict[str, Any]:
        """Record a new state; a dict without `state` only updates `last_snapshot`. Returns the result."""
        previous = self._states.get(replication_task_key(task_id)) or {}
        new = dict(state) if "state" in state else {**previous, **state}
        if "last_snapshot" not in new and "last_snapshot" in previous:
            new["last_snapshot"] = previous["last_snapshot"]
        if "state" not in new:
            new["state"] = PENDING
        await self._states.set(replication_task_key(task_id), new)
        return self.get(task_id)

    async def remove(self, task_id: int) -> None:
        await self._states.remove(replication_task_key(task_id))
