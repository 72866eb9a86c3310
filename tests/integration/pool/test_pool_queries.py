"""`pool.dataset.query` / `pool.snapshot.query`: what clients browse, read from real zfs-fuse pools."""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.errors import CallError


async def test_datasets_of_a_real_pool_are_listed_and_filterable(server, pool, local_zfs):
    await local_zfs.create_dataset(f"{pool.name}/data/child", parents=True)
    client = await server.client()
    names = await client.call("pool.dataset.query", [["pool", "=", pool.name]], {"select": ["name", "type"]})
    assert {"name": f"{pool.name}/data/child", "type": "FILESYSTEM"} in names
    assert {"name": pool.name, "type": "FILESYSTEM"} in names
    one = await client.call("pool.dataset.query", [["id", "=", f"{pool.name}/data"]], {"get": True})
    assert one["readonly"]["rawvalue"] in ("on", "off")


async def test_snapshots_are_listed_with_dataset_and_name(server, pool, local_zfs):
    await local_zfs.create_dataset(f"{pool.name}/data", parents=True)
    await local_zfs.create_snapshots(f"{pool.name}/data", "manual-1")
    client = await server.client()
    snaps = await client.call("pool.snapshot.query", [["dataset", "=", f"{pool.name}/data"]])
    assert [(s["snapshot_name"], s["name"]) for s in snaps] == [("manual-1", f"{pool.name}/data@manual-1")]


async def test_reading_datasets_needs_a_role(server, pool):
    await server.add_user("nobody", "pw-nobody", ["KEYCHAIN_CREDENTIAL_READ"])
    client = await server.client("nobody", "pw-nobody")
    with pytest.raises(CallError) as raised:
        await client.call("pool.dataset.query")
    assert raised.value.errno == errno.EACCES
