"""Numbered schema migrations, applied in order at start. Append new ones; never edit an applied one.

Configuration rows are JSON documents (`data`) keyed by an integer id: services own their shapes and
filters run after `extend` anyway (reference §1.11), so columns per field would buy nothing.
"""
from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

DOCUMENT_TABLES = (
    "users",
    "api_keys",
    "jobs",
    "keychaincredential",
    "pool_snapshottask",
    "replication",
    "replication_config",
    "task_state",
    "settings",
)


def _m001_document_tables(db: sqlite_utils.Database) -> None:
    for name in DOCUMENT_TABLES:
        db[name].create({"id": int, "data": str}, pk="id", if_not_exists=True)


def _m002_pool_table(db: sqlite_utils.Database) -> None:
    """Pools this server has seen imported, by guid: their ids are what `pool.export(id)` takes."""
    db["pool"].create({"id": int, "data": str}, pk="id", if_not_exists=True)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_document_tables,
    _m002_pool_table,
]


def apply(db: sqlite_utils.Database) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    db["schema_version"].create({"version": int}, pk="version", if_not_exists=True)
    current = max((row["version"] for row in db["schema_version"].rows), default=0)
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number <= current:
            continue
        # Explicit BEGIN: sqlite3 opens implicit transactions only before DML, and migrations are mostly DDL.
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            db["schema_version"].insert({"version": number})
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")
        current = number
    return current
