"""Run slots: a replication run waits here until `admission.blocking_reason` lets it start.

The waiting reason is reported through a callback (the task's WAITING state) each time it changes.
`max_parallel` can change while tasks wait (`replication.config.update`); waiters re-check then.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from middlewared_plugin.replication.admission import Footprint, blocking_reason


class RunSlots:
    def __init__(self, max_parallel: int | None = 5):
        self.max_parallel = max_parallel
        self.running: dict[int | str, Footprint] = {}
        self._changed = asyncio.Condition()

    async def set_max_parallel(self, value: int | None) -> None:
        self.max_parallel = value
        async with self._changed:
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self, footprint: Footprint, on_wait: Callable[[str], None]) -> AsyncIterator[None]:
        """Hold a slot for the duration of the block; `on_wait(reason)` is called while waiting."""
        async with self._changed:
            last_reason = None
            while (reason := blocking_reason(footprint, self.running.values(), self.max_parallel)) is not None:
                if reason != last_reason:
                    on_wait(reason)
                    last_reason = reason
                await self._changed.wait()
            self.running[footprint.task_id] = footprint
        try:
            yield
        finally:
            async with self._changed:
                self.running.pop(footprint.task_id, None)
                self._changed.notify_all()
