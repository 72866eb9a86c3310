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


#: Tables whose ids are handed out by SQLite and kept by clients (task, credential, key, user, pool and job ids).
ID_TABLES = (*DOCUMENT_TABLES, "pool")


def _m003_ids_never_reused(db: sqlite_utils.Database) -> None:
    """Rebuild the id tables with `INTEGER PRIMARY KEY AUTOINCREMENT`, rows and ids kept.

    A plain INTEGER PRIMARY KEY hands out max(id) + 1, so deleting the newest row (a replication task, a
    credential, a pool record) gave its id to the next one, and whatever clients or other rows still knew by
    that id (a job, a run state, a saved link) pointed at the newcomer. AUTOINCREMENT keeps the highest id
    ever used in `sqlite_sequence`. SQLite cannot add it to an existing table, hence the copy (the documented
    create-copy-drop-rename procedure; renaming carries the `sqlite_sequence` row along). sqlite-utils cannot
    write it either: `Table.create` has no such option (only the private `create_table_sql(_autoincrement=)`)
    and `transform()` keeps an AUTOINCREMENT the table already has but never adds one; so plain SQL.
    """
    for name in ID_TABLES:
        new = f"{name}__autoincrement"
        db.execute(f"CREATE TABLE [{new}] ([id] INTEGER PRIMARY KEY AUTOINCREMENT, [data] TEXT)")
        db.execute(f"INSERT INTO [{new}] ([id], [data]) SELECT [id], [data] FROM [{name}] ORDER BY [id]")
        db.execute(f"DROP TABLE [{name}]")
        db.execute(f"ALTER TABLE [{new}] RENAME TO [{name}]")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_document_tables,
    _m002_pool_table,
    _m003_ids_never_reused,
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
