"""Fixtures of the snapshot-task suite: the real server with its scheduler stepped by hand.

`stepped` is the server with the real-time scheduler loop off: a test drives `app.scheduler.tick(t)`
with chosen times, and the snapshot names come from those times. `tree` is a pool with a small dataset
tree and helpers to write files and read snapshots through the real zfs-fuse.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Snapshot, Zfs
from tests.fixtures.server import TestServer, running_server


@pytest.fixture
async def stepped() -> AsyncIterator[TestServer]:
    async with running_server(scheduler_enabled=False) as running:
        yield running


@dataclass
class Tree:
    """`<pool>/data` with children `a`, `b` and `b/deep`."""

    pool: FilePool
    zfs: Zfs

    @property
    def root(self) -> str:
        return f"{self.pool.name}/data"

    def path(self, dataset: str) -> Path:
        return self.pool.mountpoint / dataset.removeprefix(self.pool.name + "/")

    def write(self, dataset: str, name: str, data: bytes) -> None:
        (self.path(dataset) / name).write_bytes(data)

    async def snapshots(self, dataset: str | None = None, *, recursive: bool = True) -> list[Snapshot]:
        return await self.zfs.list_snapshots(dataset or self.root, recursive=recursive)

    async def names(self, dataset: str | None = None, *, recursive: bool = True) -> list[str]:
        return [s.full_name for s in await self.snapshots(dataset, recursive=recursive)]


@pytest.fixture
async def tree(pool: FilePool, local_zfs: Zfs) -> Tree:
    t = Tree(pool, local_zfs)
    for child in ("data", "data/a", "data/b", "data/b/deep"):
        await local_zfs.create_dataset(f"{pool.name}/{child}")
    return t


async def create_task(client: Client, **fields: Any) -> dict[str, Any]:
    return await client.call("pool.snapshottask.create", fields)
