"""Issue 13 item 6: `replication.run_onetime` with `exclude_mountpoint_property` leaves no dataset of the received
tree with the source's mountpoint (legacy, or a path of the source host): each one's mountpoint follows the
target's, and the tree is mounted there, read-only, for a full-filesystem (-R), a recursive and a single
dataset replication, LOCAL and over SSH, on a first run and on the next one.

zfs-fuse has no `zfs receive -x`: the mountpoint arrives and is taken away after the receive, before the plan
mounts anything. Its `zfs inherit` cannot override a received value below another received dataset, so there
the ZFS layer sets the value the dataset would inherit (source `local`, value the inherited path).
"""
from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_api.conftest import create_ssh_credentials

SCHEMA = "auto-%Y-%m-%d_%H-%M"
FIRST, SECOND = "auto-2026-11-01_00-00", "auto-2026-11-02_00-00"


async def make_tree(zfs: Zfs, pool: FilePool) -> str:
    """src (inherits its mountpoint), src/legacy (mountpoint=legacy), src/elsewhere (a path outside the pool,
    as on another host) with src/elsewhere/deep inheriting it; a file in each, written while it was mounted."""
    root = f"{pool.name}/src"
    for child in ("", "/legacy", "/elsewhere", "/elsewhere/deep"):
        await zfs.create_dataset(root + child)
    await zfs.set_properties(f"{root}/elsewhere", {"mountpoint": str(elsewhere(pool))})
    for child in ("", "/legacy", "/elsewhere", "/elsewhere/deep"):
        await write(zfs, root + child, FIRST)
    await zfs.set_properties(f"{root}/legacy", {"mountpoint": "legacy"})
    # A child mounts under a read-only parent only where its directory is in the parent's data (it cannot be
    # made there): in src, as a child mounted in place would have it.
    src = (await zfs.get_properties(root, ["mountpoint"]))["mountpoint"]
    for child in ("legacy", "elsewhere"):
        await asyncio.to_thread(Path(src, child).mkdir, exist_ok=True)
    await zfs.create_snapshots(root, FIRST, recursive=True)
    return root


def elsewhere(pool: FilePool) -> Path:
    """The source's own path for src/elsewhere: beside the pool, in the session's pool directory."""
    return pool.mountpoint.parent / f"{pool.name}-elsewhere"


async def write(zfs: Zfs, dataset: str, name: str) -> None:
    path = (await zfs.get_properties(dataset, ["mountpoint"]))["mountpoint"]
    assert path and path.startswith("/"), dataset
    await asyncio.to_thread(Path(path, name).write_bytes, dataset.encode())


async def mountpoints(zfs: Zfs, root: str) -> dict[str, tuple[str, str, str]]:
    """Filesystem -> (mountpoint, its source, mounted) for `root` and its descendants."""
    out = (await zfs.runner.run(["zfs", "get", "-H", "-r", "-o", "name,property,value,source",
                                 "mountpoint,mounted", root])).text
    rows: dict[str, dict[str, tuple[str, str]]] = {}
    for line in out.splitlines():
        name, prop, value, source = line.split("\t")
        if "@" not in name:
            rows.setdefault(name, {})[prop] = (value, source)
    return {name: (*props["mountpoint"], props["mounted"][0]) for name, props in rows.items()}


async def onetime(client: Any, source: str, target: str, shape: str, transport: dict[str, Any]) -> None:
    await client.call("replication.run_onetime", {
        "direction": "PUSH", "source_datasets": [source], "target_dataset": target,
        "recursive": shape != "plain", "replicate": shape == "replicate",
        "also_include_naming_schema": [SCHEMA], "retention_policy": "SOURCE",
        "exclude_mountpoint_property": True, **transport,
    }, job=True)


@pytest.mark.parametrize("transport", ["LOCAL", "SSH"])
@pytest.mark.parametrize("shape", ["replicate", "recursive", "plain"])
async def test_received_tree_mounts_under_the_target_on_first_and_next_run(
    server, pool_pair, local_zfs: Zfs, sshd: SshdServer, ssh_client_key: dict[str, str], shape: str,
    transport: str,
):
    src_pool, dst_pool = pool_pair
    root = await make_tree(local_zfs, src_pool)
    client = await server.client()
    how: dict[str, Any] = {"transport": transport}
    if transport == "SSH":
        _, how["ssh_credentials"] = await create_ssh_credentials(
            client, port=sshd.port, private_key=ssh_client_key["private_key"], remote_host_key=sshd.remote_host_key)
    # The plain case replicates the legacy dataset alone: the received root's own mountpoint.
    source = f"{root}/legacy" if shape == "plain" else root
    target = f"{dst_pool.name}/copy"
    relatives = [""] if shape == "plain" else ["", "/legacy", "/elsewhere", "/elsewhere/deep"]

    for run, snapshot in enumerate((FIRST, SECOND)):
        if run:  # the next run: new data and a new snapshot on every dataset, sent incrementally
            for rel in relatives:
                if source + rel != f"{root}/legacy":
                    await write(local_zfs, source + rel, snapshot)
            await local_zfs.create_snapshots(source, snapshot, recursive=shape != "plain")
        await onetime(client, source, target, shape, how)

        found = await mountpoints(local_zfs, target)
        assert sorted(found) == sorted(target + rel for rel in relatives)
        for rel in relatives:
            value, origin, mounted = found[target + rel]
            # Where the target's mountpoint puts it, not the source's (legacy, or its path elsewhere).
            assert value == f"{dst_pool.mountpoint}/copy{rel}", (run, rel, found)
            assert origin != "received", (run, rel, found)
            assert mounted == "yes", (run, rel, found)
            # The data is there, mounted read-only.
            data = await asyncio.to_thread(Path(value, FIRST).read_bytes)
            assert data == (source + rel).encode()
            with pytest.raises(OSError) as refused:
                await asyncio.to_thread(Path(value, "mine").write_bytes, b"x")
            assert refused.value.errno == errno.EROFS
        assert found[target][1].startswith("inherited")
        if run and shape != "plain":
            assert await asyncio.to_thread(Path(f"{dst_pool.mountpoint}/copy/elsewhere/deep", SECOND).read_bytes) \
                == f"{root}/elsewhere/deep".encode()
