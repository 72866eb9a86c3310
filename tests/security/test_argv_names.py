"""Issue 11 item 7: names from the API never become options of `zpool`/`zfs`.

`pool.import_pool {"guid": G, "name": "-FX"}` used to run `zpool import G -FX`: the "name" was read as the rewind
(-F) and extreme rewind (-X) options, and `-R/dir`, `-o prop=value`, `-f` friends likewise. Every such name now
passes ZFS's naming grammar (`zfs/names.py`) at the API, and names follow `--` on the command line.
"""
from __future__ import annotations

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import TestServer


@pytest.fixture
def server(importing_server: TestServer) -> TestServer:
    return importing_server


@pytest.fixture
async def client(server: TestServer) -> Client:
    return await server.client()


@pytest.mark.parametrize("name", ["-FX", "-f", "-R/tmp", "-o", "-d/tmp", "--", "mirror", "raidz2", "spare1", "log",
                                  "c0d0", "1pool", "new name;id", "a/b"])
async def test_import_pool_refuses_a_new_name_that_is_an_option_or_no_pool_name(
        client: Client, pool: FilePool, local_zfs: Zfs, name: str) -> None:
    guid = (await client.call("pool.query", [["name", "=", pool.name]], {"get": True}))["guid"]
    await local_zfs.export_pool(pool.name)
    try:
        with pytest.raises(ValidationErrors) as raised:
            await client.call("pool.import_pool", {"guid": guid, "name": name}, job=True)
        assert [e.attribute for e in raised.value.errors] == ["pool_import.name"]
        # Nothing ran: the pool is still exported, under its own name.
        assert pool.name not in {p.name for p in await local_zfs.pools()}
    finally:
        await client.call("pool.import_pool", {"guid": guid}, job=True)
    assert pool.name in {p.name for p in await local_zfs.pools()}


async def test_import_pool_under_a_valid_new_name_still_works(client: Client, pool: FilePool,
                                                              local_zfs: Zfs) -> None:
    guid = (await client.call("pool.query", [["name", "=", pool.name]], {"get": True}))["guid"]
    await local_zfs.export_pool(pool.name)
    renamed = f"{pool.name}r"
    assert await client.call("pool.import_pool", {"guid": guid, "name": renamed}, job=True) is True
    try:
        assert renamed in {p.name for p in await local_zfs.pools()}
    finally:
        # Back under the fixture's name, so that it cleans up after the test.
        await local_zfs.export_pool(renamed)
        await client.call("pool.import_pool", {"guid": guid, "name": pool.name}, job=True)


@pytest.mark.parametrize("dataset", ["-o", "-V1G", "-pV", "-o mountpoint=/etc"])
async def test_dataset_names_that_are_options_never_reach_zfs_create(client: Client, pool: FilePool,
                                                                      local_zfs: Zfs, dataset: str) -> None:
    before = {d.name for d in await local_zfs.list_datasets(pool.name)}
    with pytest.raises(ValidationErrors) as raised:
        await client.call("replication.create_dataset", dataset, "LOCAL", None)
    assert [e.attribute for e in raised.value.errors] == ["dataset"]
    assert {d.name for d in await local_zfs.list_datasets(pool.name)} == before
