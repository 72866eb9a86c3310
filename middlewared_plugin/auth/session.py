"""A client session: who is logged in and the per-connection options. Knows nothing of WebSockets."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from middlewared_plugin.auth.credentials import Credentials
from middlewared_plugin.auth.scram import ScramExchange


@dataclass
class Session:
    #: Source address for rate limiting ("unix" for the local socket).
    address: str
    credentials: Credentials | None = None
    options: dict[str, bool] = field(
        default_factory=lambda: {"legacy_jobs": True, "private_methods": False, "py_exceptions": False}
    )

    #: Subscription id -> event name; the protocol layer delivers matching events.
    subscriptions: dict[str, str] = field(default_factory=dict)
    #: A SCRAM login between its two `auth.login_ex` calls.
    scram: ScramExchange | None = None
    #: Names the session for what outlives its calls (the tokens it made).
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def authenticated(self) -> bool:
        return self.credentials is not None
