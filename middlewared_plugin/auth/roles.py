"""TrueNAS roles relevant to this server and what each one includes (reference §1.4)."""
from __future__ import annotations

FULL_ADMIN = "FULL_ADMIN"
READONLY_ADMIN = "READONLY_ADMIN"

ROLE_PREFIXES = (
    "REPLICATION_TASK",
    "REPLICATION_TASK_CONFIG",
    "SNAPSHOT_TASK",
    "KEYCHAIN_CREDENTIAL",
    "POOL",
    "DATASET",
    "SNAPSHOT",
)

_INCLUDES: dict[str, set[str]] = {
    "REPLICATION_TASK_WRITE_PULL": {"REPLICATION_TASK_WRITE"},
    "REPLICATION_ADMIN": {
        "KEYCHAIN_CREDENTIAL_WRITE",
        "REPLICATION_TASK_CONFIG_WRITE",
        "REPLICATION_TASK_WRITE",
        "SNAPSHOT_TASK_WRITE",
    },
    READONLY_ADMIN: {f"{p}_READ" for p in ROLE_PREFIXES},
    # Destroying data is a role of its own: writing datasets (or snapshots) does not include it.
    "DATASET_DELETE": set(),
    "SNAPSHOT_DELETE": set(),
}
for _prefix in ROLE_PREFIXES:
    _INCLUDES.setdefault(f"{_prefix}_WRITE", set()).add(f"{_prefix}_READ")

ALL_ROLES = sorted({*_INCLUDES, *(r for rs in _INCLUDES.values() for r in rs), FULL_ADMIN})


def expand(roles: set[str] | list[str]) -> frozenset[str]:
    """Every role granted by `roles`, transitively."""
    result: set[str] = set()
    pending = list(roles)
    while pending:
        role = pending.pop()
        if role not in result:
            result.add(role)
            pending.extend(_INCLUDES.get(role, ()))
    return frozenset(result)
