"""Task states across a process that died mid-run (issue 12 §4): what the next start reads from the store."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from middlewared_plugin.snapshots.task_state import TABLE, TaskStates
from middlewared_plugin.store.db import Store

STARTED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    yield store
    await store.close()


async def test_a_run_left_waiting_reads_as_interrupted_before_it_started(store: Store) -> None:
    states = TaskStates(store)
    await states.set("k", {"state": "FINISHED", "datetime": STARTED, "last_snapshot": "p/d@a"})
    await states.set("k", {"state": "WAITING", "datetime": STARTED, "reason": "slot", "last_snapshot": "p/d@a"})

    after = TaskStates(store)  # the next process: no clean stop in between
    await after.load()

    state = after.get("k")
    assert state is not None and state["state"] == "ERROR"
    assert state["error"].startswith("Interrupted: the server stopped while this run was waiting to start")
    assert state["last_snapshot"] == "p/d@a"
    # The conversion is stored: a third start reads the same ERROR, not a fresh "restarted at".
    third = TaskStates(store)
    await third.load()
    assert third.get("k") == state


async def test_running_after_waiting_is_stored_but_its_progress_updates_are_not(store: Store) -> None:
    states = TaskStates(store)
    await states.set("k", {"state": "WAITING", "datetime": STARTED})
    await states.set("k", {"state": "RUNNING", "datetime": STARTED})
    for sent in range(1, 20):
        await states.set("k", {"state": "RUNNING", "datetime": datetime.now(UTC), "progress": {"current": sent}})

    [(_, doc)] = await store.all(TABLE)
    assert doc["state"]["state"] == "RUNNING" and "progress" not in doc["state"]
    after = TaskStates(store)
    await after.load()
    state = after.get("k")
    assert state is not None and state["state"] == "ERROR"
    assert state["error"].startswith("Interrupted: the server stopped during this run (started at 2030-01-02 ")
    assert "last_snapshot" not in state


async def test_settled_states_load_unchanged(store: Store) -> None:
    states = TaskStates(store)
    await states.set("k", {"state": "RUNNING", "datetime": STARTED})
    await states.set("k", {"state": "FINISHED", "datetime": STARTED, "last_snapshot": "p/d@b"})
    after = TaskStates(store)
    await after.load()
    assert after.get("k") == {"state": "FINISHED", "datetime": STARTED, "last_snapshot": "p/d@b"}
