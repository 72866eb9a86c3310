"""Failed-login rate limit per source address: a sliding window of recent failures."""
from __future__ import annotations

import time
from collections import defaultdict, deque


class FailedLoginLimiter:
    def __init__(self, max_failures: int = 10, window_seconds: float = 60.0):
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures[address]
        cutoff = time.monotonic() - self.window
        while failures and failures[0] < cutoff:
            failures.popleft()
        return failures

    def blocked(self, address: str) -> bool:
        return len(self._recent(address)) >= self.max_failures

    def record_failure(self, address: str) -> None:
        self._recent(address).append(time.monotonic())
