"""SQLite store: migrations, transactions, secrets at rest, and job history across restarts."""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.jobs.manager import INTERRUPTED_ERROR
from middlewared_plugin.store import migrations
from middlewared_plugin.store.db import Store
from tests.integration.protocol.conftest import Sampled
from tests.integration.protocol.sample_services import SampleThingService, install

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def store_path() -> AsyncIterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mwp-store-"))
    yield directory / "test.sqlite"
    shutil.rmtree(directory, ignore_errors=True)


async def open_store(path: Path) -> Store:
    store = Store(path)
    await store.open()
    return store


def versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# Migrations ---------------------------------------------------------------------------------------------

async def test_migrations_are_numbered_and_applied_once(store_path: Path, monkeypatch) -> None:
    runs: list[int] = []

    def probe(db) -> None:
        runs.append(1)
        db["probe"].insert({"id": 1, "note": "added by migration"}, pk="id")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, probe])
    for _ in range(3):
        await (await open_store(store_path)).close()
    count = len(migrations.MIGRATIONS)
    assert versions(store_path) == list(range(1, count + 1))
    assert runs == [1]
    assert {"users", "api_keys", "jobs", "probe"} <= tables(store_path)


async def test_a_failing_migration_leaves_nothing_behind_and_runs_again(store_path: Path, monkeypatch) -> None:
    base = len(migrations.MIGRATIONS)
    await (await open_store(store_path)).close()

    def broken(db) -> None:
        db["half_done"].create({"id": int}, pk="id")
        db["half_done"].insert({"id": 1})
        raise RuntimeError("migration bug")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    store = Store(store_path)
    with pytest.raises(RuntimeError, match="migration bug"):
        await store.open()
    await store.close()
    assert versions(store_path) == list(range(1, base + 1))
    assert "half_done" not in tables(store_path)  # the migration's own transaction was rolled back

    def fixed(db) -> None:
        db["half_done"].create({"id": int}, pk="id")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS[:base], fixed])
    await (await open_store(store_path)).close()
    assert versions(store_path) == list(range(1, base + 2))


async def test_a_store_transaction_is_all_or_nothing(store_path: Path) -> None:
    store = await open_store(store_path)
    try:
        def two_writes_then_fail(db) -> None:
            db["settings"].insert({"id": 1, "data": "{}"})
            db["settings"].insert({"id": 2, "data": "{}"})
            raise RuntimeError("halfway")

        with pytest.raises(RuntimeError):
            await store.transaction(two_writes_then_fail)
        assert await store.all("settings") == []
    finally:
        await store.close()


# Secrets at rest ---------------------------------------------------------------------------------------

def data_files(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("middlewared.sqlite*")))


async def test_encrypted_fields_are_not_stored_in_plain_text(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    created = await peer.result("sample.thing.create", {"name": "visible-name-1234", "secret": "plain-secret-9876"})
    await peer.result("sample.thing.update", created["id"], {"secret": "second-secret-5432"})
    on_disk = await asyncio.to_thread(data_files, sampled.server.data_dir)
    assert b"visible-name-1234" in on_disk  # the search itself works
    assert b"plain-secret-9876" not in on_disk
    assert b"second-secret-5432" not in on_disk
    [(_, raw_doc)] = await sampled.server.app.store.all(sampled.things.table)
    assert raw_doc["secret"].startswith("fernet:")
    assert (await peer.result("sample.thing.get_instance", created["id"]))["secret"] == "second-secret-5432"


async def test_the_secret_key_file_is_private_and_survives_restarts(raw, sampled: Sampled) -> None:
    server = sampled.server
    key_file = server.data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    peer = await (await raw()).setup(subscribe=False)
    created = await peer.result("sample.thing.create", {"name": "kept", "secret": "kept-secret"})

    await server.restart()
    await install(server.app, SampleThingService)
    assert key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = await (await raw()).setup(subscribe=False)
    assert (await again.result("sample.thing.get_instance", created["id"]))["secret"] == "kept-secret"


# Job history -------------------------------------------------------------------------------------------

async def test_finished_jobs_survive_a_restart(raw, sampled: Sampled) -> None:
    server = sampled.server
    peer = await (await raw()).setup(legacy_jobs=True)
    ok = await peer.result("core.bulk", "core.ping", [[]])
    failed = await peer.result("sample.fail", 13)
    logged = await peer.result("sample.write_logs", 3)
    secret = await peer.result("sample.with_secret", "alice", "hunter2")
    for job_id, state in ((ok, "SUCCESS"), (failed, "FAILED"), (logged, "SUCCESS"), (secret, "SUCCESS")):
        await peer.job_event(job_id, state)
    before = await peer.result("core.get_jobs")
    await asyncio.sleep(0.2)  # history is written in the background

    await server.restart()
    peer = await (await raw()).setup(legacy_jobs=True)
    after = await peer.result("core.get_jobs")
    assert after == before
    by_id = {j["id"]: j for j in after}
    assert by_id[ok]["result"] == [{"job_id": None, "error": None, "result": "pong"}]
    assert by_id[failed]["exc_info"]["errno"] == 13
    assert by_id[secret]["arguments"] == ["alice", "********"]
    assert set(by_id[ok]["time_started"]) == {"$date"}
    assert await peer.result("core.get_jobs", [["state", "=", "FAILED"]], {"count": True}) == 1
    # A finished job of the earlier process can still be waited for, and its log downloaded.
    waited = await (await (await raw()).setup(legacy_jobs=False)).call("core.job_wait", ok)
    assert waited["result"] == by_id[ok]["result"]
    assert (await peer.result("core.job_download_logs", logged, "logs.txt")).startswith(f"/_download/{logged}?")
    # New jobs continue the numbering.
    new = await peer.result("core.bulk", "core.ping", [])
    assert new > max(by_id)


async def read_until(stream: asyncio.StreamReader, marker: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    while marker not in seen:
        line = await asyncio.wait_for(stream.readline(), timeout)
        if not line:
            raise AssertionError(f"server exited before {marker!r}: {seen.decode(errors='replace')}")
        seen += line
    return seen


async def test_a_job_running_when_the_process_died_is_failed_at_next_start(raw, sampled: Sampled) -> None:
    """The data dir a dying process leaves behind is a consistent copy of the database taken while a job runs
    (what is on disk at that instant); the real server started on it must report that job as FAILED."""
    server = sampled.server
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("sample.gated", "never-finishes")
    await peer.job_event(job_id, "RUNNING")
    for _ in range(100):
        stored = await server.app.store.get("jobs", job_id)
        if stored is not None and stored["state"] == "RUNNING":
            break
        await asyncio.sleep(0.02)
    assert stored is not None and stored["state"] == "RUNNING"

    crashed = Path(tempfile.mkdtemp(prefix="mwp-crash-"))
    try:
        def snapshot() -> None:
            with sqlite3.connect(server.data_dir / "middlewared.sqlite") as src, \
                    sqlite3.connect(crashed / "middlewared.sqlite") as dst:
                src.backup(dst)
            shutil.copy2(server.data_dir / "secret.key", crashed / "secret.key")
        await asyncio.to_thread(snapshot)

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "middlewared_plugin", "serve", "--data-dir", str(crashed),
            "--listen", "127.0.0.1:0", cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert process.stdout is not None
            await read_until(process.stdout, b"middlewared-plugin listening on")  # the CLI's own line
            async with Client(f"ws+unix://{crashed}/middlewared.sock") as root:
                job = await root.call("core.get_jobs", [["id", "=", job_id]], {"get": True})
                assert job["state"] == "FAILED"
                assert job["error"] == INTERRUPTED_ERROR
                assert "stopped while it was running" in job["error"]
                assert job["exc_info"]["errno"] == 4
                assert job["time_finished"] is not None
                assert job["method"] == "sample.gated" and job["message_ids"] == stored["message_ids"]
                # The next job gets a fresh id.
                assert (await root.call("core.bulk", "core.ping", [], job=True)) == []
                ids = [j["id"] for j in await root.call("core.get_jobs")]
                assert ids[-1] > job_id
        finally:
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        shutil.rmtree(crashed, ignore_errors=True)
    # The original job is untouched by all this.
    assert (await server.app.store.get("jobs", job_id))["state"] == "RUNNING"
