"""Fixtures of the replication scheduling suite: real pools with data, real SSH credentials (and a way to hold
a run where it is), a server whose scheduler the test steps, and a recorder of the `replication.query`
CHANGED events tasks go through."""
from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer, running_server
from tests.fixtures.sshd import SshdServer, _children, _freeze_tree
from tests.fixtures.zfs import FilePool
from tests.integration.replication_api.conftest import create_ssh_credentials

SCHEMA = "auto-%Y-%m-%d_%H-%M"
MIB = 1024 * 1024


def _write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))


async def write_file(zfs: Zfs, dataset: str, name: str, size: int) -> None:
    """Incompressible data in the dataset's mountpoint, so every snapshot's stream has bytes to count."""
    mountpoint = (await zfs.get_properties(dataset, ["mountpoint"]))["mountpoint"]
    await asyncio.to_thread(_write_random, f"{mountpoint}/{name}", size)


async def snapshot(zfs: Zfs, dataset: str, name: str, *, size: int = 0, recursive: bool = True) -> None:
    """Write `size` bytes into `dataset` (a new file named after the snapshot), then snapshot it."""
    if size:
        await write_file(zfs, dataset, name, size)
    await zfs.create_snapshots(dataset, name, recursive=recursive)


async def snapshot_names(zfs: Zfs, dataset: str) -> set[str]:
    """`dataset@name` (relative to nothing: full names) of every snapshot in the tree."""
    return {s.full_name for s in await zfs.list_snapshots(dataset, recursive=True)}


def push_task(source: str, target: str, **fields: Any) -> dict[str, Any]:
    """A manual LOCAL push of SCHEMA snapshots; `fields` override."""
    return {
        "name": "push",
        "direction": "PUSH",
        "transport": "LOCAL",
        "source_datasets": [source],
        "target_dataset": target,
        "recursive": False,
        "also_include_naming_schema": [SCHEMA],
        "auto": False,
        "retention_policy": "NONE",
        **fields,
    }


async def ssh_credentials(client: Client, sshd: SshdServer, key: dict[str, str]) -> int:
    """SSH_CREDENTIALS (made through the API) for logging into the session sshd, i.e. this machine."""
    _, credentials = await create_ssh_credentials(client, port=sshd.port, private_key=key["private_key"],
                                                  remote_host_key=sshd.remote_host_key)
    return credentials


async def eventually(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class StateEvents:
    """Every partial `replication.query` CHANGED event carrying a `state`, in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any]) -> None:
        state = (params.get("fields") or {}).get("state")
        if params.get("msg") == "changed" and isinstance(state, dict) and "state" in state:
            self.events.append((params["id"], state))

    def of(self, task_id: int) -> list[dict[str, Any]]:
        return [s for i, s in self.events if i == task_id]

    def names(self, task_id: int) -> list[str]:
        """The task's state names with repeats collapsed (RUNNING progress updates count once)."""
        names: list[str] = []
        for state in self.of(task_id):
            if not names or names[-1] != state["state"]:
                names.append(state["state"])
        return names

    def timeline(self) -> list[tuple[int, str]]:
        """(task id, state name) across all tasks, repeats of a task's state collapsed."""
        out: list[tuple[int, str]] = []
        last: dict[int, str] = {}
        for task_id, state in self.events:
            if last.get(task_id) != state["state"]:
                out.append((task_id, state["state"]))
                last[task_id] = state["state"]
        return out

    async def wait_for(self, task_id: int, name: str, timeout: float = 30.0) -> dict[str, Any]:
        return await eventually(
            lambda: next((s for s in self.of(task_id) if s["state"] == name), None), timeout,
            f"task {task_id} to reach {name} (saw {self.names(task_id)})")


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


@pytest.fixture
async def states(client: Client) -> StateEvents:
    recorder = StateEvents()
    await client.subscribe("replication.query", recorder)
    return recorder


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """The real server, but its scheduler only moves when a test calls `server.app.scheduler.tick(minute)`:
    runs start when the test says, never because the wall clock crossed a minute."""
    async with running_server(scheduler_enabled=False) as running:
        yield running


def run_jobs(server: TestServer, task_id: int) -> list[Any]:
    """Every `replication.run` job of a task, oldest first."""
    return sorted((j for j in server.app.jobs.jobs.values()
                   if j.method == "replication.run" and j.arguments and j.arguments[0] == task_id),
                  key=lambda j: j.id)


async def job_log(server: TestServer, job_id: int) -> str:
    job = server.app.jobs.get(job_id)
    assert job is not None
    return await server.app.jobs.read_log(job) or ""


class SshHold:
    """Stops (SIGSTOP) every process serving the established connections of a private sshd, so whatever a
    replication run does over SSH waits right where it is until `release`. The listener keeps running."""

    def __init__(self, sshd: SshdServer):
        self.sshd = sshd
        self.frozen: list[int] = []

    def freeze(self) -> None:
        assert self.sshd.pid is not None
        for child in _children(self.sshd.pid):
            self.frozen += _freeze_tree(child)
        assert self.frozen, "no established SSH connection to hold"

    def release(self) -> None:
        for pid in self.frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = []


@pytest.fixture(scope="package")
def private_sshd(ssh_client_key: dict[str, str]) -> Iterator[SshdServer]:
    """An sshd only this folder's tests use (they freeze its sessions), started once: host keys take seconds."""
    with tempfile.TemporaryDirectory(prefix="sshd-") as tmp:
        server = SshdServer(Path(tmp))
        server.add_authorized_key(ssh_client_key["public_key"])
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
async def held_ssh(
    client: Client, private_sshd: SshdServer, ssh_client_key: dict[str, str],
    pool_pair: tuple[FilePool, FilePool],
) -> AsyncIterator[tuple[int, SshHold]]:
    """SSH_CREDENTIALS for the private sshd with the server's pooled connection to it already open (runs reuse
    it), and the hold that freezes that connection. Requests the test's pools first, so the listing that opens the
    connection has something to show on a machine with no other pool."""
    credentials = await ssh_credentials(client, private_sshd, ssh_client_key)
    listed = await client.call("replication.list_datasets", "SSH", credentials)
    assert {pool.name for pool in pool_pair} <= set(listed)
    hold = SshHold(private_sshd)
    try:
        yield credentials, hold
    finally:
        hold.release()
