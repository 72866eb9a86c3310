"""Who a session (or a job) acts as."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from middlewared_plugin.auth import roles as _roles


@dataclass(frozen=True)
class Credentials:
    #: TrueNAS credential type names: LOGIN_PASSWORD, API_KEY, TOKEN, UNIX_SOCKET.
    type: str
    username: str
    roles: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_user(cls, type_: str, username: str, roles: list[str]) -> Credentials:
        return cls(type_, username, _roles.expand(roles))

    @property
    def is_full_admin(self) -> bool:
        return _roles.FULL_ADMIN in self.roles

    def has_role(self, role: str) -> bool:
        return self.is_full_admin or role in self.roles

    def has_any_role(self, roles: list[str] | tuple[str, ...]) -> bool:
        return self.is_full_admin or any(r in self.roles for r in roles)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "data": {"username": self.username}}


ROOT = Credentials("UNIX_SOCKET", "root", frozenset({_roles.FULL_ADMIN}))
