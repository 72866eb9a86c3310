"""SQLite through sqlite-utils, on one dedicated thread so the event loop never blocks on disk.

Each public write runs in one transaction. Rows are JSON documents; `Store` knows nothing of services.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from middlewared_plugin.store import migrations
from middlewared_plugin.store.datadir import open_private

T = TypeVar("T")


class _HeldCommitConnection:
    """The connection as sqlite-utils sees it inside `Store.transaction`.

    sqlite-utils wraps each write in `with conn:`, which commits at once; that would end our transaction
    halfway. Here entering/leaving the connection and `commit()` do nothing, so the transaction's own
    BEGIN ... COMMIT/ROLLBACK decides.
    """

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> _HeldCommitConnection:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def commit(self) -> None:
        pass


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite_utils.Database | None = None
        self._tx_db: sqlite_utils.Database | None = None

    def _open(self) -> None:
        # Created private before SQLite sees it: SQLite gives its -wal and -shm files the database's mode.
        os.close(open_private(self.path, os.O_RDWR))
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        # isolation_level=None is autocommit; `with conn:` alone would not open a transaction.
        conn.isolation_level = "DEFERRED"
        migrations.apply(db)
        self._db = db
        self._tx_db = sqlite_utils.Database(_HeldCommitConnection(conn))  # type: ignore[arg-type]

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.conn.close()
        await self._run(_close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def transaction(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in one transaction on the database thread."""
        def _tx() -> T:
            assert self._db is not None and self._tx_db is not None
            conn = self._db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._tx_db)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        return await self._run(_tx)

    # Document helpers ---------------------------------------------------------------------------------

    async def insert(self, table: str, doc: dict[str, Any], id: int | None = None) -> int:
        def _insert(db: sqlite_utils.Database) -> int:
            row: dict[str, Any] = {"data": json.dumps(doc)}
            if id is not None:
                row["id"] = id
            return db[table].insert(row).last_pk
        return await self.transaction(_insert)

    async def upsert(self, table: str, id: int, doc: dict[str, Any]) -> None:
        await self.transaction(lambda db: db[table].upsert({"id": id, "data": json.dumps(doc)}, pk="id"))

    async def update(self, table: str, id: int, doc: dict[str, Any]) -> None:
        await self.transaction(lambda db: db[table].update(id, {"data": json.dumps(doc)}))

    async def delete(self, table: str, id: int) -> None:
        await self.transaction(lambda db: db.execute(f"DELETE FROM [{table}] WHERE id = ?", [id]))

    async def get(self, table: str, id: int) -> dict[str, Any] | None:
        def _get(db: sqlite_utils.Database) -> dict[str, Any] | None:
            row = db.execute(f"SELECT data FROM [{table}] WHERE id = ?", [id]).fetchone()
            return json.loads(row[0]) if row else None
        return await self._run(lambda: _get(self._db))  # type: ignore[arg-type]

    async def last_id(self, table: str) -> int:
        """The highest id `table` ever held, deleted rows included (AUTOINCREMENT's high-water mark); 0 if none."""
        def _last_id(db: sqlite_utils.Database) -> int:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [table]).fetchone()
            return int(row[0]) if row else 0
        return await self._run(lambda: _last_id(self._db))  # type: ignore[arg-type]

    async def all(self, table: str) -> list[tuple[int, dict[str, Any]]]:
        def _all(db: sqlite_utils.Database) -> list[tuple[int, dict[str, Any]]]:
            return [(r[0], json.loads(r[1])) for r in db.execute(f"SELECT id, data FROM [{table}] ORDER BY id")]
        return await self._run(lambda: _all(self._db))  # type: ignore[arg-type]
