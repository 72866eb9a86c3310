"""Migration 3 (issue 13 item 5): a database made before ids stopped being reused is rebuilt with
AUTOINCREMENT, keeping every row and its id, and from then on never gives a deleted row's id to a new one."""
from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlite_utils

from middlewared_plugin.store import migrations
from middlewared_plugin.store.db import Store

#: Every table of the schema before migration 3, each created as the old code did.
OLD_TABLES = (*migrations.DOCUMENT_TABLES, "pool")
OLD_IDS = (1, 2, 7)


@pytest.fixture
async def old_database() -> AsyncIterator[Path]:
    """A database at schema version 2 with rows 1, 2 and 7 (a gap: 3-6 were deleted) in every table."""
    directory = Path(tempfile.mkdtemp(prefix="mwp-ids-"))
    path = directory / "middlewared.sqlite"
    db = sqlite_utils.Database(path)
    db["schema_version"].create({"version": int}, pk="version")
    db["schema_version"].insert_all([{"version": 1}, {"version": 2}])
    for name in OLD_TABLES:
        db[name].create({"id": int, "data": str}, pk="id")
        db[name].insert_all({"id": i, "data": json.dumps({"row": i, "table": name})} for i in OLD_IDS)
    db.conn.close()
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def schema(path: Path, table: str) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]


async def test_old_tables_keep_their_rows_and_ids_and_never_reuse_one_after_migration(old_database: Path) -> None:
    assert "AUTOINCREMENT" not in schema(old_database, "replication")
    store = Store(old_database)
    await store.open()
    try:
        for name in OLD_TABLES:
            assert await store.all(name) == [(i, {"row": i, "table": name}) for i in OLD_IDS], name
            await store.delete(name, 7)
    finally:
        await store.close()

    # Reopened: the high-water mark lives in the database, not in the process.
    store = Store(old_database)
    await store.open()
    try:
        for name in OLD_TABLES:
            assert "AUTOINCREMENT" in schema(old_database, name)
            assert await store.last_id(name) == 7
            assert await store.insert(name, {"new": True}) == 8, name
            assert [i for i, _ in await store.all(name)] == [1, 2, 8]
    finally:
        await store.close()
    with sqlite3.connect(old_database) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")] == \
            list(range(1, len(migrations.MIGRATIONS) + 1))
        # Nothing of the copy is left behind.
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {n for n in names if n.endswith("__autoincrement")}


async def test_a_new_database_never_reuses_the_id_of_its_newest_deleted_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "middlewared.sqlite")
    await store.open()
    try:
        for name in ("replication", "jobs", "api_keys", "users"):
            first = await store.insert(name, {"n": 1})
            newest = await store.insert(name, {"n": 2})
            await store.delete(name, newest)
            assert await store.insert(name, {"n": 3}) == newest + 1 > first, name
    finally:
        await store.close()
