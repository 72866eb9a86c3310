"""The minute scheduler: wakes at each minute boundary and fires the jobs due in that minute.

The clock is an input, so tests step through a day by calling `tick` with chosen times. Missed minutes
(the process was down or busy) are not back-filled; a wall-clock minute that repeats when DST ends fires
once. A task whose previous run is still going is not started again: the callback decides that (it
knows its own job), the scheduler only asks who is due.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
TickHandler = Callable[[datetime], Awaitable[None]]


def local_now() -> datetime:
    """The server's wall-clock time, timezone-aware (the system timezone)."""
    return datetime.now().astimezone()


class Scheduler:
    def __init__(self, clock: Clock = local_now):
        self.clock = clock
        self._handlers: list[tuple[str, TickHandler]] = []
        self._last_minute: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, handler: TickHandler) -> None:
        """Call `handler(minute)` once per minute; it starts whatever is due in that minute."""
        self._handlers.append((name, handler))

    async def tick(self, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        wall = minute.replace(tzinfo=None)
        if self._last_minute is not None and wall <= self._last_minute:
            return
        self._last_minute = wall
        for name, handler in self._handlers:
            try:
                await handler(minute)
            except Exception:
                logger.exception("Scheduled handler %s failed at %s", name, minute)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            now = self.clock()
            await self.tick(now)
            following = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            await asyncio.sleep(max((following - self.clock()).total_seconds(), 0.05) + 0.01)
