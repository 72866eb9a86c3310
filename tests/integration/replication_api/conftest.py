"""Fixtures of the replication API suite: a logged-in client, SSH credentials, and a task factory.

Tasks are described in a small language so the validation table stays readable: `"@src"` is a dataset
`<pool>/src` (created on first use when a real pool is involved), `"$ssh"` the id of an SSH_CREDENTIALS
entry, `"$keypair"` the id of its SSH_KEY_PAIR, `"$task0"`, `"$task1"`, ... the ids of periodic snapshot
tasks the case asks for.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer

SCHEMA = "snap-%Y-%m-%d-%H-%M"
#: A minimal valid task: local push of snapshots named by SCHEMA, run by hand, nothing retained.
BASE_TASK: dict[str, Any] = {
    "name": "task",
    "direction": "PUSH",
    "transport": "LOCAL",
    "source_datasets": ["@src"],
    "target_dataset": "@dst",
    "recursive": False,
    "also_include_naming_schema": [SCHEMA],
    "auto": False,
    "retention_policy": "NONE",
}
PLACEHOLDER = re.compile(r"\$(ssh|keypair|task[0-9]+)")
#: Any well-formed host key line: nothing connects to the hosts these credentials name.
SOME_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpTMxVPAYU0uGvT1W1gmNLuOjhyMvxs8kPyz3IjZ5lD"


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def create_ssh_credentials(
    client: Client, name: str = "conn", *, host: str = "127.0.0.1", port: int | None = None,
    private_key: str | None = None, remote_host_key: str = SOME_HOST_KEY,
) -> tuple[int, int]:
    """An SSH_KEY_PAIR (generated unless `private_key` is given) and SSH_CREDENTIALS using it: (key id, cred id)."""
    if private_key is None:
        attributes = await client.call("keychaincredential.generate_ssh_key_pair")
    else:
        attributes = {"private_key": private_key}
    key = await client.call("keychaincredential.create",
                            {"name": f"{name}-key", "type": "SSH_KEY_PAIR", "attributes": attributes})
    credentials = await client.call("keychaincredential.create", {
        "name": name,
        "type": "SSH_CREDENTIALS",
        "attributes": {"host": host, "port": port or closed_port(), "private_key": key["id"],
                       "remote_host_key": remote_host_key},
    })
    return key["id"], credentials["id"]


class Env:
    """Resolves the placeholders of a task description against real objects, creating them on demand."""

    def __init__(self, client: Client, pool_name: str = "tank", zfs: Zfs | None = None):
        self.client = client
        self.pool_name = pool_name
        self.zfs = zfs
        self.ids: dict[str, int] = {}

    def ds(self, relative: str) -> str:
        return f"{self.pool_name}/{relative}"

    async def dataset(self, relative: str) -> str:
        name = self.ds(relative)
        assert self.zfs is not None, "creating datasets needs a pool"
        if not await self.zfs.exists(name):
            await self.zfs.create_dataset(name)
        return name

    async def ssh(self) -> None:
        if "$ssh" not in self.ids:
            self.ids["$keypair"], self.ids["$ssh"] = await create_ssh_credentials(self.client)

    async def snapshot_task(self, dataset: str, **fields: Any) -> int:
        """A periodic snapshot task on `@dataset`; `exclude` items are `@` names too."""
        exclude = [await self.dataset(e[1:]) for e in fields.pop("exclude", [])]
        created = await self.client.call("pool.snapshottask.create", {
            "dataset": await self.dataset(dataset[1:]), "exclude": exclude, "naming_schema": SCHEMA, **fields,
        })
        self.ids[f"$task{len([k for k in self.ids if k.startswith('$task')])}"] = created["id"]
        return created["id"]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return self.ds(value[1:])
        if isinstance(value, str) and PLACEHOLDER.fullmatch(value):
            return self.ids[value]
        if isinstance(value, Mapping):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, Sequence) and not isinstance(value, str):
            return [self.resolve(v) for v in value]
        return value

    async def task(self, **fields: Any) -> dict[str, Any]:
        """BASE_TASK with `fields` applied, placeholders resolved."""
        return self.resolve({**BASE_TASK, **fields})


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


@pytest.fixture
def env(pool_env: Env) -> Env:
    """Placeholders resolved in a real pool, datasets created only on demand: a LOCAL destination must be on
    a pool that exists, even for rules that never look at ZFS."""
    return pool_env


@pytest.fixture
def pool_env(client: Client, pool: FilePool, local_zfs: Zfs) -> Env:
    """Placeholders resolved in a fresh zfs-fuse pool."""
    return Env(client, pool.name, local_zfs)
