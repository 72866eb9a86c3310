"""Issue 12 §4, crashes and lost connections: a server killed mid-run says so after its restart, and a killed
transport process is a lost connection that the run retries.

Real parts throughout: the server as its own process (`python -m middlewared_plugin serve`) SIGKILLed while a
replication streams to the test sshd; the in-process server's own `ssh` child SIGKILLed mid-stream.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.jobs.manager import INTERRUPTED_ERROR
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_api.conftest import create_ssh_credentials

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "auto-%Y-%m-%d_%H-%M"
MIB = 1 << 20


def _write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))


async def snapshot_with_data(zfs: Zfs, dataset: str, name: str, size: int) -> None:
    mountpoint = (await zfs.get_properties(dataset, ["mountpoint"]))["mountpoint"]
    await asyncio.to_thread(_write_random, f"{mountpoint}/{name}", size)
    await zfs.create_snapshots(dataset, name)


def ssh_push(source: str, target: str, credentials: int, **fields: Any) -> dict[str, Any]:
    return {
        "name": "ssh push", "direction": "PUSH", "transport": "SSH", "ssh_credentials": credentials,
        "source_datasets": [source], "target_dataset": target, "recursive": False,
        "also_include_naming_schema": [SCHEMA], "auto": False, "retention_policy": "NONE", **fields,
    }


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return value


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (from /proc), so what a killed server started can be ended by id."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += children
        pending += children
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError):
        return []


class ServerProcess:
    """`middlewared-plugin serve` as a process of its own on a data dir; root on its unix socket is admin."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "middlewared_plugin", "serve", "--data-dir", str(self.data_dir),
            "--listen", "127.0.0.1:0", cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        seen = b""
        while b"middlewared-plugin listening on" not in seen:
            line = await asyncio.wait_for(self.process.stdout.readline(), 30)
            if not line:
                raise AssertionError(f"server exited before listening: {seen.decode(errors='replace')}")
            seen += line
        # Nobody reads its log from here on: let it go to a pipe that never fills.
        self._drain = asyncio.ensure_future(self.process.stdout.read())

    def client(self) -> Client:
        return Client(f"ws+unix://{self.data_dir}/middlewared.sock")

    async def kill(self) -> None:
        """SIGKILL, as a crash would; then end (by pid) whatever it had started and left behind."""
        assert self.process is not None
        orphans = descendants(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._drain.cancel()
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 30)
            self._drain.cancel()


@pytest.fixture
async def server_process() -> AsyncIterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="mwp-crash-"))
    server = ServerProcess(data_dir)
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_run_the_server_was_killed_during_is_an_interrupted_error_after_restart(
    server_process: ServerProcess, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs, sshd: SshdServer,
    ssh_client_key: dict[str, str],
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot_with_data(local_zfs, source, "auto-2030-01-01_00-00", MIB)
    await server_process.start()
    async with server_process.client() as client:
        _, credentials = await create_ssh_credentials(client, port=sshd.port, private_key=ssh_client_key["private_key"],
                                                      remote_host_key=sshd.remote_host_key)
        # 1 MiB/s: the second run's 24 MiB take long enough to be killed in the middle of.
        task = await client.call("replication.create", ssh_push(source, target, credentials, speed_limit=MIB))
        await client.call("replication.run", task["id"], job=True)
        finished = (await client.call("replication.get_instance", task["id"]))["state"]
        assert finished["state"] == "FINISHED"
        assert finished["last_snapshot"] == f"{source}@auto-2030-01-01_00-00"

        await snapshot_with_data(local_zfs, source, "auto-2030-01-02_00-00", 24 * MIB)
        run = asyncio.ensure_future(client.call("replication.run", task["id"], job=True))

        async def streaming() -> dict[str, Any] | None:
            entry = await client.call("replication.get_instance", task["id"])
            progress = entry["state"].get("progress") or {}
            return entry if entry["state"]["state"] == "RUNNING" and progress.get("bytes_sent", 0) > 2 * MIB else None

        running = await eventually(streaming, "the second run to stream")
        job_id = running["job"]["id"]
        assert running["job"]["state"] == "RUNNING"
        await server_process.kill()
        await asyncio.gather(run, return_exceptions=True)  # its connection is gone with the server

    await server_process.start()
    async with server_process.client() as client:
        entry = await client.call("replication.get_instance", task["id"])
        job = await client.call("core.get_jobs", [["id", "=", job_id]], {"get": True})
    state = entry["state"]
    assert state["state"] == "ERROR", state
    assert state["error"].startswith("Interrupted: the server stopped during this run (started at "), state
    assert "restarted at " in state["error"]
    assert state["datetime"] is not None
    # What the interrupted run had not yet delivered is not claimed; the earlier run's snapshot still is.
    assert state["last_snapshot"] == f"{source}@auto-2030-01-01_00-00"
    # The task's job says the same, in `replication.query` and in the job history.
    assert entry["job"]["id"] == job_id
    for shown in (entry["job"], job):
        assert shown["state"] == "FAILED"
        assert shown["error"] == INTERRUPTED_ERROR
        assert shown["time_finished"] is not None


async def test_a_snapshot_task_running_when_the_server_died_is_an_interrupted_error_after_restart(
    server: TestServer, pool: FilePool, local_zfs: Zfs,
) -> None:
    """The on-disk image of a server that died while a periodic snapshot task was RUNNING (a consistent copy of
    its database at that instant): the server started on it shows that run as interrupted, not as RUNNING or as
    the state from before it."""
    client = await server.client()
    await local_zfs.create_dataset(f"{pool.name}/data")
    task = await client.call("pool.snapshottask.create", {
        "dataset": f"{pool.name}/data", "recursive": False, "lifetime_value": 1, "lifetime_unit": "WEEK",
        "naming_schema": SCHEMA, "schedule": {"minute": "0", "hour": "*", "dom": "*", "month": "*", "dow": "*"},
    })
    await client.call("pool.snapshottask.run", task["id"], job=True)
    before = (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]
    assert before["state"] == "FINISHED"
    # What the snapshot taker records as a run starts (`PeriodicSnapshotTaskService._take`).
    service = server.app.service("pool.snapshottask")
    await service._set_state(task["id"], {"state": "RUNNING", "datetime": before["datetime"],
                                          "last_snapshot": before["last_snapshot"]})
    assert (await client.call("pool.snapshottask.get_instance", task["id"]))["state"]["state"] == "RUNNING"

    crashed = Path(tempfile.mkdtemp(prefix="mwp-crash-"))
    try:
        def image() -> None:
            with sqlite3.connect(server.data_dir / "middlewared.sqlite") as src, \
                    sqlite3.connect(crashed / "middlewared.sqlite") as dst:
                src.backup(dst)
            shutil.copy2(server.data_dir / "secret.key", crashed / "secret.key")
        await asyncio.to_thread(image)
        restarted = await TestServer(crashed, scheduler_enabled=False).start()
        try:
            after = (await (await restarted.client()).call("pool.snapshottask.get_instance", task["id"]))["state"]
        finally:
            await restarted.stop()
    finally:
        shutil.rmtree(crashed, ignore_errors=True)
    assert after["state"] == "ERROR", after
    assert after["error"].startswith("Interrupted: the server stopped during this run"), after
    assert after["last_snapshot"] == before["last_snapshot"]


async def test_a_killed_ssh_client_is_a_lost_connection_that_the_run_retries(
    server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs, sshd: SshdServer,
    ssh_client_key: dict[str, str],
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    await snapshot_with_data(local_zfs, source, "auto-2030-01-01_00-00", 16 * MIB)
    client = await server.client()
    _, credentials = await create_ssh_credentials(client, port=sshd.port, private_key=ssh_client_key["private_key"],
                                                  remote_host_key=sshd.remote_host_key)
    task = await client.call("replication.create", ssh_push(source, target, credentials, speed_limit=4 * MIB,
                                                            retries=3))
    run = asyncio.ensure_future(client.call("replication.run", task["id"], job=True))

    def data_ssh() -> list[int]:
        """Our own `ssh` clients carrying a stream (the replication transport's, not the control connection)."""
        return [pid for pid in descendants(os.getpid())
                if (argv := cmdline(pid))[:1] == ["ssh"] and "HostKeyAlias=replication-peer" in argv
                and str(sshd.port) in argv]

    async def streaming() -> list[int] | None:
        state = (await client.call("replication.get_instance", task["id"]))["state"]
        progress = state.get("progress") or {}
        return data_ssh() if progress.get("bytes_sent", 0) > 2 * MIB else None

    (ssh_pid,) = await eventually(streaming, "the stream to start")
    os.kill(ssh_pid, signal.SIGKILL)
    await asyncio.wait_for(run, 120)

    entry = await client.call("replication.get_instance", task["id"])
    assert entry["state"]["state"] == "FINISHED", entry["state"]
    assert entry["job"]["state"] == "SUCCESS"
    log = await server.app.jobs.read_log(server.app.jobs.get(entry["job"]["id"])) or ""
    retry = [line for line in log.splitlines() if "Transient error, retry 1 of 3" in line]
    assert retry, log
    assert "the SSH connection was lost: the ssh client was killed by signal 9 (SIGKILL)" in retry[0]
    assert [s.name for s in await local_zfs.list_snapshots(target)] == ["auto-2030-01-01_00-00"]
