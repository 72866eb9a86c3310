"""Helpers for the engine tests: task definitions, data and snapshots on real zfs-fuse pools, SSH runners."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.devtools.zfs_fuse import DEFAULT_PREFIX, FilePool, create_file_pool, new_pool_name
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshConnectionPool, SshRunner, runner_for_credentials
from middlewared_plugin.replication.executor import Progress
from middlewared_plugin.zfs import Zfs
from tests.fixtures.sshd import SshdServer
from tests.fixtures.zfs import release_pool

SCHEMA = "auto-%Y-%m-%d_%H-%M"
T0 = datetime(2024, 5, 1, 10, 0)


def snap_name(i: int) -> str:
    """The i-th snapshot name of SCHEMA, one hour apart from T0."""
    return (T0 + timedelta(hours=i)).strftime(SCHEMA)


def task(source: str | list[str], target: str, **fields: Any) -> dict[str, Any]:
    """A ReplicationEntry-shaped LOCAL push task selecting SCHEMA snapshots."""
    return {
        "name": "test", "direction": "PUSH", "transport": "LOCAL",
        "source_datasets": [source] if isinstance(source, str) else source, "target_dataset": target,
        "recursive": False, "exclude": [], "properties": True, "properties_exclude": [],
        "properties_override": {}, "replicate": False, "encryption": False, "periodic_snapshot_tasks": [],
        "naming_schema": [], "also_include_naming_schema": [SCHEMA], "name_regex": None, "auto": False,
        "schedule": None, "restrict_schedule": None, "only_matching_schedule": False,
        "allow_from_scratch": False, "readonly": "SET", "hold_pending_snapshots": False,
        "retention_policy": "NONE", "lifetime_value": None, "lifetime_unit": None, "lifetimes": [],
        "large_block": True, "embed": False, "compressed": True, "retries": 2, **fields,
    }


class Recorder:
    """Collects progress reports and log lines."""

    def __init__(self) -> None:
        self.progress: list[Progress] = []
        self.lines: list[str] = []

    def on_progress(self, p: Progress) -> None:
        self.progress.append(p)

    def log(self, line: str) -> None:
        self.lines.append(line)


async def mountpoint(zfs: Zfs, dataset: str) -> Path:
    (ds,) = await zfs.list_datasets(dataset, recursive=False)
    assert ds.mountpoint, dataset
    return Path(ds.mountpoint)


async def write(zfs: Zfs, dataset: str, name: str, data: bytes) -> None:
    path = await mountpoint(zfs, dataset) / name
    await asyncio.to_thread(path.write_bytes, data)


async def read(zfs: Zfs, dataset: str, name: str) -> bytes:
    return await asyncio.to_thread((await mountpoint(zfs, dataset) / name).read_bytes)


async def write_random(zfs: Zfs, dataset: str, name: str, size: int) -> None:
    path = await mountpoint(zfs, dataset) / name

    def fill() -> None:
        with path.open("wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))

    await asyncio.to_thread(fill)


async def make_writable(zfs: Zfs, dataset: str) -> None:
    """What a user does to write to a replicated target: readonly off, and mounted read-write again
    (replication mounts its targets read-only)."""
    await zfs.set_properties(dataset, {"readonly": "off"})
    await zfs.runner.run(["zfs", "unmount", dataset])
    assert await zfs.mount(dataset)


async def snapshots(zfs: Zfs, dataset: str) -> list[str]:
    return [s.name for s in await zfs.list_snapshots(dataset, recursive=False)]


@pytest.fixture
async def big_pool_pair(pool_directory: Path) -> AsyncIterator[tuple[FilePool, FilePool]]:
    """Two 512 MiB pools for transfers large enough to interrupt."""
    pools = []
    try:
        for _ in range(2):
            pools.append(await create_file_pool(new_pool_name(DEFAULT_PREFIX), pool_directory, size=512 << 20))
        yield pools[0], pools[1]
    finally:
        for p in pools:
            await release_pool(p)


@pytest.fixture
def runner() -> LocalRunner:
    return LocalRunner()


@pytest.fixture
def zfs(runner: LocalRunner) -> Zfs:
    return Zfs(runner)


@pytest.fixture
async def remote(sshd: SshdServer, ssh_client_key: dict[str, str]) -> AsyncIterator[SshRunner]:
    """A runner for the session sshd (127.0.0.1: the same zfs-fuse, reached over SSH)."""
    pool = SshConnectionPool()
    yield runner_for_credentials(sshd.credentials(ssh_client_key["private_key"]), pool=pool)
    await pool.close_all()
