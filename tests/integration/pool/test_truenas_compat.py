"""Issue 13, items 1-3: `pool.dataset.delete` and `pool.snapshot.query` answer as TrueNAS's do (docs/TRUENAS.md).

1. deleting a dataset that is not there is TrueNAS's InstanceNotFound, which cleanup code ignores;
2. a dataset zfs-fuse reports busy is tried again until it is free, and only one that stays busy is EBUSY;
3. snapshot entries carry `properties.createtxg` and the query takes TrueNAS's `extra` options.
Real server, real zfs-fuse pools.
"""
from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from middlewared_plugin.client import ClientException
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer

# --- 1. deleting a missing dataset ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["{pool}/missing", "{pool}/gone/too", "{pool}@snap"])
async def test_deleting_a_missing_dataset_is_truenas_instance_not_found(server: TestServer, pool: FilePool,
                                                                         name: str):
    dataset = name.format(pool=pool.name)
    client = await server.client()

    with pytest.raises(ValidationErrors) as refused:  # -32602 with one [attribute, message, errno] triple
        await client.call("pool.dataset.delete", dataset)

    assert [(e.attribute, e.errmsg, e.errno) for e in refused.value] == [
        (None, f"PoolDataset {dataset} does not exist", errno.ENOENT),
    ]


# --- 2. busy datasets -------------------------------------------------------------------------------------


async def test_a_dataset_busy_for_a_moment_is_deleted_once_it_is_free(server: TestServer, pool: FilePool,
                                                                     local_zfs: Zfs):
    server.app.settings.dataset_busy_timeout = 20.0  # far longer than the moment it is busy
    client = await server.client()
    await local_zfs.create_dataset(f"{pool.name}/data")
    opened = (pool.mountpoint / "data" / "open-file").open("w")  # `target is busy` while it is open

    async def close_soon() -> None:
        await asyncio.sleep(1.5)
        opened.close()

    closing = asyncio.create_task(close_soon())
    try:
        assert await client.call("pool.dataset.delete", f"{pool.name}/data") is True
    finally:
        await closing

    assert not await local_zfs.exists(f"{pool.name}/data")


async def test_a_dataset_that_stays_busy_is_ebusy_and_stays_mounted(server: TestServer, pool: FilePool,
                                                                    local_zfs: Zfs):
    server.app.settings.dataset_busy_timeout = 1.0
    client = await server.client()
    await local_zfs.create_dataset(f"{pool.name}/data")

    with (pool.mountpoint / "data" / "open-file").open("w"), pytest.raises(ClientException) as refused:
        await client.call("pool.dataset.delete", f"{pool.name}/data")

    assert refused.value.errno == errno.EBUSY
    assert refused.value.trace is not None and refused.value.trace["class"] == "CallError"
    assert "busy" in str(refused.value)
    assert (await local_zfs.get_properties(f"{pool.name}/data", ["mounted"]))["mounted"] == "yes"


# --- 3. pool.snapshot.query -------------------------------------------------------------------------------


@pytest.fixture
async def two_snapshots(pool: FilePool, local_zfs: Zfs) -> tuple[str, dict[str, int]]:
    """`POOL/data@one` then `@two` (separate transaction groups); returns the dataset and createtxg by name."""
    dataset = f"{pool.name}/data"
    await local_zfs.create_dataset(dataset)
    await local_zfs.create_snapshots(dataset, "one")
    (pool.mountpoint / "data" / "file").write_bytes(b"x" * 4096)
    await local_zfs.create_snapshots(dataset, "two")
    return dataset, {s.name: s.createtxg for s in await local_zfs.list_snapshots(dataset)}


async def snapshots(server: TestServer, dataset: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    client = await server.client()
    options = {} if extra is None else {"extra": extra}
    return {e["snapshot_name"]: e for e in await client.call("pool.snapshot.query", [["dataset", "=", dataset]],
                                                             options)}


async def test_snapshot_entries_carry_createtxg_among_their_properties(server: TestServer,
                                                                      two_snapshots: tuple[str, dict[str, int]]):
    dataset, txgs = two_snapshots

    entries = await snapshots(server, dataset)

    assert set(entries) == {"one", "two"}
    for name, entry in entries.items():
        assert entry["createtxg"] == str(txgs[name])
        assert entry["properties"]["createtxg"] == {
            "value": str(txgs[name]), "rawvalue": str(txgs[name]), "source": "NONE", "parsed": txgs[name],
        }
        assert set(entry["properties"]) >= {"createtxg", "creation", "used", "referenced", "guid", "userrefs"}
        assert "holds" not in entry  # only with extra.holds, as on TrueNAS


@pytest.mark.parametrize(("bounds", "expected"), [
    ({"min_txg": "two"}, {"two"}),
    ({"max_txg": "one"}, {"one"}),
    ({"min_txg": "one", "max_txg": "one"}, {"one"}),
    ({"min_txg": 999999999}, set()),
    ({"min_txg": 0, "max_txg": 0}, {"one", "two"}),  # 0 is "no bound"
])
async def test_min_and_max_txg_limit_the_snapshots(server: TestServer, two_snapshots: tuple[str, dict[str, int]],
                                                  bounds: dict[str, Any], expected: set[str]):
    dataset, txgs = two_snapshots
    extra = {k: txgs[v] if isinstance(v, str) else v for k, v in bounds.items()}

    assert set(await snapshots(server, dataset, extra)) == expected


@pytest.mark.parametrize(("extra", "expected"), [
    ({"properties": ["name", "createtxg", "no-such-property", "used"]}, {"name", "createtxg", "used"}),
    ({"properties": []}, set()),
    ({"retrieve_properties": False}, set()),
    ({"retrieve_properties": False, "properties": ["used"]}, set()),
])
async def test_properties_are_the_ones_asked_for(server: TestServer, two_snapshots: tuple[str, dict[str, int]],
                                                extra: dict[str, Any], expected: set[str]):
    dataset, _ = two_snapshots

    entry = (await snapshots(server, dataset, extra))["one"]

    assert set(entry["properties"]) == expected
    if "name" in expected:
        assert entry["properties"]["name"] == {"value": f"{dataset}@one", "rawvalue": f"{dataset}@one",
                                               "source": "NONE", "parsed": f"{dataset}@one"}
        assert entry["properties"]["used"]["parsed"] == int(entry["properties"]["used"]["rawvalue"])


async def test_holds_show_the_truenas_hold_when_asked_for(server: TestServer, local_zfs: Zfs,
                                                          two_snapshots: tuple[str, dict[str, int]]):
    dataset, _ = two_snapshots
    await local_zfs.hold("truenas", [f"{dataset}@one"])
    try:
        entries = await snapshots(server, dataset, {"holds": True})
    finally:
        await local_zfs.release("truenas", [f"{dataset}@one"])

    assert entries["one"]["holds"] == {"truenas": 1}
    assert entries["two"]["holds"] == {}


@pytest.mark.parametrize("extra", [{"min_txg": "5"}, {"max_txg": -1}, {"holds": "yes"}, {"properties": "used"}])
async def test_malformed_extra_options_are_refused(server: TestServer, pool: FilePool, extra: dict[str, Any]):
    client = await server.client()

    with pytest.raises(ValidationErrors) as refused:
        await client.call("pool.snapshot.query", [], {"extra": extra})

    assert [e.attribute for e in refused.value] == [f"options.extra.{next(iter(extra))}"]
