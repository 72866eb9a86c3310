"""Failed-login rate limits: per source address first, then per user with a growing delay.

Every login attempt takes a slot *before* its credential is checked, and the check-and-take has no await
in it: password hashing runs in a thread, so many checks of one client can be in flight at once, and each
holds its slot from the start. While the slots are all held, further attempts wait for checks to finish:
those that fail use up the allowance (the waiting attempts are then refused), those that succeed give their
slot back (a waiting one gets it). However many sockets and pipelined calls a client uses, no more guesses
are checked than the limits allow, and many good logins at once are merely queued.

- Per address (an IPv6 client by its /64, which one attacker usually holds whole): at most `max_failures`
  failures in `window` seconds. A single attacker meets this limit well before the per-user one.
- Per user, from any address: past `user_free` failures in `user_window` seconds, each further attempt
  waits `user_delay` times 1, 2, 4, ... seconds after the last failure, never more than `user_max_delay`,
  and runs alone. Guessing from many addresses slows to about one guess a minute, while the real user waits
  at most `user_max_delay` once it stops, and not at all at an address where they logged in before (since
  the server started).

Refused attempts are not counted: they check nothing, and counting them would let a client that keeps
knocking stay locked out for ever.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import time
from collections import deque
from dataclasses import dataclass, field

from middlewared_plugin.errors import CallError

#: How many addresses a user is remembered to have logged in from (for the per-user limit's exemption).
TRUSTED_ADDRESSES_PER_USER = 16


class RateLimited(CallError):
    """A login refused before its credential was looked at; TrueNAS's wording, plus when to try again."""

    def __init__(self, retry_after: float):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"Rate Limit Exceeded: too many failed login attempts; retry in {seconds} seconds", errno.EBUSY)


@dataclass
class _Tally:
    #: When the counted failures happened, oldest first.
    failures: deque[float] = field(default_factory=deque)
    #: Attempts whose check is in flight.
    pending: int = 0


class LoginAttempt:
    """The slot one login attempt holds, until it is settled by `failed` or `succeeded`."""

    def __init__(self, limiter: FailedLoginLimiter, address: str, user: str | None):
        self._limiter = limiter
        self.address = address
        self.user = user
        self.pending = True
        #: When it failed (the time its failure is counted under), None unless it did.
        self.failed_at: float | None = None

    def failed(self) -> None:
        """Count it as a failure. A SCRAM attempt is one from its first message until its proof."""
        if self.pending:
            self._limiter.settle(self, failed=True)

    def succeeded(self, username: str) -> None:
        """Give the slot back (and the failure it counted as, if any); `username` may skip the per-user limit
        from this address from now on."""
        if self.pending or self.failed_at is not None:
            self._limiter.settle(self, failed=False, username=username)


class FailedLoginLimiter:
    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        user_free: int = 30,
        user_window: float = 900.0,
        user_delay: float = 1.0,
        user_max_delay: float = 60.0,
    ):
        self.max_failures = max_failures
        self.window = window
        self.user_free = user_free
        self.user_window = user_window
        self.user_delay = user_delay
        self.user_max_delay = user_max_delay
        self._by_address: dict[str, _Tally] = {}
        self._by_user: dict[str, _Tally] = {}
        #: Username -> the addresses it logged in from, most recent last.
        self._trusted: dict[str, deque[str]] = {}
        #: Set (and replaced) whenever an attempt settles: what waiting attempts wait for.
        self._settled = asyncio.Event()
        self._swept = time.monotonic()

    async def attempt(self, address: str, username: str | None) -> LoginAttempt:
        """A slot for one login attempt from `address` as `username` (None: the user is not known before the
        check, or does not exist), once one is free; raises RateLimited, saying when to retry, over a limit.
        """
        key = address_key(address)
        user = username if username is not None and key not in self._trusted.get(username, ()) else None
        while True:
            now = time.monotonic()
            self._sweep(now)
            by_address = self._tally(self._by_address, key, now - self.window)
            by_user = None if user is None else self._tally(self._by_user, user, now - self.user_window)
            waits = []
            if len(by_address.failures) >= self.max_failures:
                waits.append(by_address.failures[0] + self.window - now)
            over = -1 if by_user is None else len(by_user.failures) - self.user_free
            if by_user is not None and over >= 0:
                # Capped exponent: the delay is capped anyway, and 2.0 ** 1024 would overflow.
                delay = min(self.user_max_delay, self.user_delay * 2.0 ** min(over, 16))
                waits.append(by_user.failures[-1] + delay - now)
            if any(wait > 0 for wait in waits):
                raise RateLimited(max(waits))
            room = len(by_address.failures) + by_address.pending < self.max_failures and (
                by_user is None or by_user.pending == 0
                or (over < 0 and len(by_user.failures) + by_user.pending < self.user_free))
            if room:
                by_address.pending += 1
                if by_user is not None:
                    by_user.pending += 1
                return LoginAttempt(self, key, user)
            await self._settled.wait()

    def settle(self, attempt: LoginAttempt, *, failed: bool, username: str = "") -> None:
        """Count the end of `attempt` (its `failed` and `succeeded` call this) and wake the waiting attempts."""
        now = time.monotonic()
        tallies = [self._by_address.setdefault(attempt.address, _Tally())]
        if attempt.user is not None:
            tallies.append(self._by_user.setdefault(attempt.user, _Tally()))
        for tally in tallies:
            if attempt.pending:
                tally.pending -= 1
            if failed:
                tally.failures.append(now)
            elif attempt.failed_at is not None and attempt.failed_at in tally.failures:
                tally.failures.remove(attempt.failed_at)
        attempt.pending = False
        attempt.failed_at = now if failed else None
        if not failed:
            trusted = self._trusted.setdefault(username, deque(maxlen=TRUSTED_ADDRESSES_PER_USER))
            if attempt.address in trusted:
                trusted.remove(attempt.address)
            trusted.append(attempt.address)
        self._settled.set()
        self._settled = asyncio.Event()

    @staticmethod
    def _tally(table: dict[str, _Tally], key: str, cutoff: float) -> _Tally:
        """The tally under `key` with failures from `cutoff` on (older ones are dropped)."""
        tally = table.setdefault(key, _Tally())
        while tally.failures and tally.failures[0] < cutoff:
            tally.failures.popleft()
        return tally

    def _sweep(self, now: float) -> None:
        """Forget the addresses and users with nothing recent, once a window, so the tables stay small."""
        if now - self._swept < self.window:
            return
        self._swept = now
        for table, window in ((self._by_address, self.window), (self._by_user, self.user_window)):
            for key in [k for k, t in table.items()
                        if not t.pending and (not t.failures or t.failures[-1] < now - window)]:
                del table[key]


def address_key(address: str) -> str:
    """What the per-address limit counts by: the address itself, the /64 of an IPv6 address (one
    attacker's usual share), the IPv4 address of an IPv4-mapped one; other names ("unix") as they are."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
