"""`pool.snapshot.create` / `pool.snapshot.delete` (issue 13, item 7): TrueNAS's arguments, checks, messages
and roles, on real zfs-fuse pools over the real WebSocket."""
from __future__ import annotations

import errno
import re
from datetime import datetime

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import CallError, ValidationErrors
from middlewared_plugin.zfs import Zfs


async def names(zfs: Zfs, root: str) -> list[str]:
    return sorted(s.full_name for s in await zfs.list_snapshots(root))


def errors_of(raised: pytest.ExceptionInfo[ValidationErrors]) -> dict[str | None, tuple[str, int]]:
    return {e.attribute: (e.errmsg, e.errno) for e in raised.value.errors}


@pytest.fixture
async def tree(pool, local_zfs: Zfs) -> str:
    """`<pool>/data` with children `a` and `b`."""
    root = f"{pool.name}/data"
    for child in ("a", "b"):
        await local_zfs.create_dataset(f"{root}/{child}")
    return root


async def test_create_with_a_name_returns_the_query_entry(server, tree, local_zfs):
    client: Client = await server.client()
    entry = await client.call("pool.snapshot.create", {"dataset": tree, "name": "manual-1",
                                                       "properties": {"org.example:why": "before upgrade"}})
    assert await names(local_zfs, tree) == [f"{tree}@manual-1"]
    queried = await client.call("pool.snapshot.query", [["id", "=", f"{tree}@manual-1"]], {"get": True})
    assert entry == queried
    assert (entry["name"], entry["dataset"], entry["snapshot_name"]) == (f"{tree}@manual-1", tree, "manual-1")
    assert "holds" not in entry  # TrueNAS's create result has none
    props = await local_zfs.get_properties(f"{tree}@manual-1", ["org.example:why"])
    assert props == {"org.example:why": "before upgrade"}


async def test_create_from_a_naming_schema_uses_the_time_now(server, tree, local_zfs):
    client = await server.client()
    before = datetime.now().replace(second=0, microsecond=0)
    entry = await client.call("pool.snapshot.create", {"dataset": tree, "naming_schema": "manual-%Y%m%d-%H%M"})
    taken = datetime.strptime(entry["snapshot_name"], "manual-%Y%m%d-%H%M")
    assert before <= taken <= datetime.now()
    assert await names(local_zfs, tree) == [entry["name"]]


async def test_recursive_create_skips_excluded_subtrees_in_one_txg(server, tree, local_zfs):
    client = await server.client()
    await client.call("pool.snapshot.create", {"dataset": tree, "name": "r", "recursive": True,
                                               "exclude": [f"{tree}/b"], "vmware_sync": False})
    snaps = await local_zfs.list_snapshots(tree)
    assert sorted(s.full_name for s in snaps) == [f"{tree}/a@r", f"{tree}@r"]
    assert len({s.createtxg for s in snaps}) == 1


@pytest.mark.parametrize(("data", "expected"), [
    ({"name": "x", "naming_schema": "auto-%Y-%m-%d_%H-%M"},
     {"snapshot_create.naming_schema": "You can't specify name and naming schema at the same time"}),
    ({}, {"snapshot_create.naming_schema": "You must specify either name or naming schema"}),
    ({"name": "x", "exclude": ["P/data/b"]},
     {"snapshot_create.exclude": "This option has no sense for non-recursive snapshots"}),
    ({"name": "x", "recursive": True, "exclude": ["P/data/b"], "vmware_sync": True, "properties": {"a:b": "c"}},
     {"snapshot_create.vmware_sync": "This option is not supported when excluding datasets",
      "snapshot_create.properties": "This option is not supported when excluding datasets"}),
    ({"name": "bad$name"}, {"snapshot_create.name": 'Invalid snapshot name: Character "$" is not allowed in a '
                                                    "snapshot name"}),
    ({"name": "x", "properties": {"-o": "x"}}, {"snapshot_create.properties.-o": "'-o' is not a valid property name"}),
])
async def test_create_is_validated_as_on_truenas(server, tree, local_zfs, data, expected):
    client = await server.client()
    data = {k: [e.replace("P/data", tree) for e in v] if k == "exclude" else v for k, v in data.items()}
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.create", {"dataset": tree, **data})
    assert {a: m for a, (m, _) in errors_of(raised).items()} == expected
    assert await names(local_zfs, tree) == []


async def test_create_refuses_a_dataset_name_outside_the_grammar(server, tree):
    client = await server.client()
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.create", {"dataset": "-Rf", "name": "x"})
    assert list(errors_of(raised)) == ["data.dataset"]


async def test_create_of_an_existing_snapshot_or_a_missing_dataset(server, tree, local_zfs):
    client = await server.client()
    await local_zfs.create_snapshots(f"{tree}/a", "same")
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.create", {"dataset": f"{tree}/a", "name": "same"})
    assert errors_of(raised) == {"pool.snapshot.create": ("same already exists.", errno.EEXIST)}
    # A child that already has it refuses the whole recursive snapshot: nothing is taken.
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.create", {"dataset": tree, "name": "same", "recursive": True})
    assert errors_of(raised) == {"pool.snapshot.create": ("same already exists.", errno.EEXIST)}
    assert await names(local_zfs, tree) == [f"{tree}/a@same"]
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.create", {"dataset": f"{tree}/nope", "name": "x"})
    assert errors_of(raised) == {"snapshot_create.dataset": (f"Dataset {tree}/nope does not exist", errno.ENOENT)}


async def test_delete_one_and_recursive(server, tree, local_zfs):
    client = await server.client()
    await local_zfs.create_snapshots(tree, "one", recursive=True)
    await local_zfs.create_snapshots(tree, "two", recursive=True)
    assert await client.call("pool.snapshot.delete", f"{tree}@one") is True
    assert await names(local_zfs, tree) == sorted([f"{tree}@two", f"{tree}/a@one", f"{tree}/a@two",
                                                   f"{tree}/b@one", f"{tree}/b@two"])
    assert await client.call("pool.snapshot.delete", f"{tree}@two", {"recursive": True}) is True
    assert await names(local_zfs, tree) == [f"{tree}/a@one", f"{tree}/b@one"]


async def test_delete_of_a_missing_snapshot_is_instance_not_found(server, tree):
    client = await server.client()
    for missing in (f"{tree}@never", f"{tree}/gone@never"):
        with pytest.raises(ValidationErrors) as raised:
            await client.call("pool.snapshot.delete", missing)
        assert errors_of(raised) == {None: (f"PoolSnapshot {missing} does not exist", errno.ENOENT)}
    with pytest.raises(ValidationErrors) as raised:
        await client.call("pool.snapshot.delete", tree)
    [(attribute, (message, _))] = errors_of(raised).items()
    assert attribute == "pool.snapshot.delete" and message.startswith(f"Invalid snapshot name: {tree!r}")


async def test_a_held_snapshot_is_refused_unless_deferred(server, tree, local_zfs):
    client = await server.client()
    await local_zfs.create_snapshots(tree, "kept", recursive=True)
    await local_zfs.hold("keep", [f"{tree}/a@kept"])
    for snapshot, options in ((f"{tree}/a@kept", {}), (f"{tree}@kept", {"recursive": True})):
        with pytest.raises(CallError) as raised:
            await client.call("pool.snapshot.delete", snapshot, options)
        assert raised.value.errno == errno.EBUSY
        assert re.search(rf"Cannot delete {re.escape(tree)}/a@kept: it is held .*`defer`", raised.value.errmsg)
    assert len(await names(local_zfs, tree)) == 3  # a refused recursive delete destroys none
    # Deferred: ZFS marks it and destroys it when the hold is released.
    assert await client.call("pool.snapshot.delete", f"{tree}/a@kept", {"defer": True}) is True
    assert f"{tree}/a@kept" in await names(local_zfs, tree)
    await local_zfs.release("keep", [f"{tree}/a@kept"])
    assert f"{tree}/a@kept" not in await names(local_zfs, tree)


async def test_snapshot_roles(server, tree, local_zfs):
    await server.add_user("reader", "pw-reader", ["SNAPSHOT_READ"])
    await server.add_user("writer", "pw-writer", ["SNAPSHOT_WRITE"])
    reader = await server.client("reader", "pw-reader")
    writer = await server.client("writer", "pw-writer")
    with pytest.raises(CallError) as raised:
        await reader.call("pool.snapshot.create", {"dataset": tree, "name": "x"})
    assert raised.value.errno == errno.EACCES
    await writer.call("pool.snapshot.create", {"dataset": tree, "name": "x"})
    # Deleting is a role of its own (SNAPSHOT_DELETE), as on TrueNAS.
    with pytest.raises(CallError) as raised:
        await writer.call("pool.snapshot.delete", f"{tree}@x")
    assert raised.value.errno == errno.EACCES
    assert await names(local_zfs, tree) == [f"{tree}@x"]
