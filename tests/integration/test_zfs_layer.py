"""The ZFS layer against real zfs-fuse pools: what `Zfs` lists, creates and destroys is what ZFS did."""
from __future__ import annotations

import asyncio
import errno
from datetime import UTC, datetime, timedelta

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.zfs import Feature, Zfs, detect_features, recv_argv, send_argv


async def test_list_datasets_reads_identity_state_and_user_properties(local_zfs: Zfs, pool: FilePool):
    await local_zfs.create_dataset(f"{pool.name}/a/b", properties={"org.example:tag": "blue"})

    datasets = await local_zfs.list_datasets(pool.name, user_properties=["org.example:tag"])

    assert [d.name for d in datasets] == [pool.name, f"{pool.name}/a", f"{pool.name}/a/b"]
    root, a, b = datasets
    assert {d.type for d in datasets} == {"filesystem"}
    assert len({d.guid for d in datasets}) == 3 and all(d.guid > 0 for d in datasets)
    assert root.createtxg < a.createtxg <= b.createtxg
    assert b.mountpoint == str(pool.mountpoint / "a" / "b")
    assert not b.readonly
    assert b.user_properties == {"org.example:tag": "blue"}
    assert a.user_properties == {}  # set on the child only
    assert b.receive_resume_token is None
    assert abs(b.creation - datetime.now(UTC)) < timedelta(minutes=5)

    only_a = await local_zfs.list_datasets(f"{pool.name}/a", recursive=False)
    assert [d.name for d in only_a] == [f"{pool.name}/a"]


async def test_list_of_a_missing_dataset_is_enoent(local_zfs: Zfs, pool: FilePool):
    with pytest.raises(CallError) as e:
        await local_zfs.list_snapshots(f"{pool.name}/nope")
    assert e.value.errno == errno.ENOENT
    assert not await local_zfs.exists(f"{pool.name}/nope")
    assert await local_zfs.exists(pool.name)


async def test_list_snapshots_orders_by_createtxg_and_reads_properties(local_zfs: Zfs, pool: FilePool):
    ds = f"{pool.name}/data"
    await local_zfs.create_dataset(ds)
    for name in ("zz-first", "aa-second"):
        await local_zfs.create_snapshots(ds, name)
    await local_zfs.set_properties(f"{ds}@aa-second", {"org.truenas:destroy_at_12345678": "2030-01-01T00:00:00"})

    snaps = await local_zfs.list_snapshots(ds, user_properties=["org.truenas:destroy_at_12345678"])

    assert [s.name for s in snaps] == ["zz-first", "aa-second"]  # creation order, not name order
    assert snaps[0].createtxg < snaps[1].createtxg
    assert snaps[1].full_name == f"{ds}@aa-second"
    assert snaps[1].user_properties == {"org.truenas:destroy_at_12345678": "2030-01-01T00:00:00"}
    assert snaps[0].user_properties == {}
    assert snaps[0].userrefs == 0 and not snaps[0].held
    assert snaps[0].written is None  # zfs-fuse has no `written` property
    assert (await local_zfs.list_snapshots(pool.name, recursive=False)) == []


async def test_recursive_snapshot_with_excludes_is_one_transaction(local_zfs: Zfs, pool: FilePool):
    root = f"{pool.name}/tree"
    for child in ("b", "c/d", "e"):
        await local_zfs.create_dataset(f"{root}/{child}")

    created = await local_zfs.create_snapshots(
        root, "auto-1", recursive=True, exclude=[f"{root}/c"], properties={"org.example:by": "task-1"},
    )

    expected = [f"{root}@auto-1", f"{root}/b@auto-1", f"{root}/e@auto-1"]
    assert created == expected
    snaps = await local_zfs.list_snapshots(root, user_properties=["org.example:by"])
    assert [s.full_name for s in snaps] == expected  # nothing under the excluded c, nor c/d
    assert len({s.createtxg for s in snaps}) == 1
    assert {s.user_properties["org.example:by"] for s in snaps} == {"task-1"}


async def test_destroy_snapshots_in_batches_reports_missing(local_zfs: Zfs, pool: FilePool):
    ds = f"{pool.name}/many"
    await local_zfs.create_dataset(ds)
    for i in range(6):
        await local_zfs.create_snapshots(ds, f"s{i}")

    result = await local_zfs.destroy_snapshots([f"{ds}@s1", f"{ds}@s2", f"{ds}@s4", f"{ds}@never"])

    assert sorted(result.destroyed) == [f"{ds}@s1", f"{ds}@s2", f"{ds}@s4"]
    assert result.missing == [f"{ds}@never"]
    assert result.skipped == {}
    assert [s.name for s in await local_zfs.list_snapshots(ds)] == ["s0", "s3", "s5"]


async def test_a_held_snapshot_survives_destroy_until_released(local_zfs: Zfs, pool: FilePool):
    ds = f"{pool.name}/held"
    await local_zfs.create_dataset(ds)
    await local_zfs.create_snapshots(ds, "keep")
    await local_zfs.create_snapshots(ds, "drop")
    await local_zfs.hold("mw-base", [f"{ds}@keep"])

    [keep, _] = await local_zfs.list_snapshots(ds)
    assert keep.userrefs == 1 and keep.held
    result = await local_zfs.destroy_snapshots([f"{ds}@keep", f"{ds}@drop"])

    assert result.destroyed == [f"{ds}@drop"]
    assert list(result.skipped) == [f"{ds}@keep"]
    assert "busy" in result.skipped[f"{ds}@keep"] or "held" in result.skipped[f"{ds}@keep"]
    assert [s.name for s in await local_zfs.list_snapshots(ds)] == ["keep"]

    await local_zfs.release("mw-base", [f"{ds}@keep"])
    assert (await local_zfs.destroy_snapshots([f"{ds}@keep"])).destroyed == [f"{ds}@keep"]


async def test_properties_get_set_inherit_and_rollback(local_zfs: Zfs, pool: FilePool):
    parent, child = f"{pool.name}/p", f"{pool.name}/p/c"
    await local_zfs.create_dataset(child)
    await local_zfs.set_properties(parent, {"org.example:a": "1", "compression": "on"})
    assert await local_zfs.get_properties(child, ["org.example:a", "compression", "org.example:unset"]) == {
        "org.example:a": "1", "compression": "on", "org.example:unset": None,
    }
    await local_zfs.inherit_property(parent, "org.example:a")
    assert (await local_zfs.get_properties(child, ["org.example:a"]))["org.example:a"] is None

    (pool.mountpoint / "p" / "file").write_text("before")
    await local_zfs.create_snapshots(parent, "base")
    (pool.mountpoint / "p" / "file").write_text("after")
    await local_zfs.create_snapshots(parent, "later")
    with pytest.raises(CallError):
        await local_zfs.rollback(f"{parent}@base")  # a later snapshot exists: refused without -r
    await local_zfs.rollback(f"{parent}@base", destroy_newer=True)
    assert [s.name for s in await local_zfs.list_snapshots(parent, recursive=False)] == ["base"]


async def test_feature_detection_reports_what_zfs_fuse_lacks(zfs_daemon: None, local_runner: LocalRunner,
                                                            local_zfs: Zfs, pool: FilePool):
    features = await detect_features(local_runner, refresh=True)

    for missing in (Feature.SEND_DRY_RUN, Feature.SEND_RAW, Feature.SEND_RESUME, Feature.RECV_RESUMABLE,
                    Feature.RECV_EXCLUDE_PROPERTY, Feature.ENCRYPTION, Feature.BOOKMARKS, Feature.ZVOLS,
                    Feature.MULTI_SNAPSHOT, Feature.DESTROY_SNAPSHOT_LIST, Feature.WRITTEN_PROPERTY):
        assert not features.has(missing), missing
    assert features.has(Feature.HOLDS)
    assert features.has(Feature.RECV_NO_MOUNT)  # accepted although zfs-fuse's usage text hides it
    assert "mountpoint" in features.properties and "receive_resume_token" not in features.properties
    with pytest.raises(CallError) as e:
        features.require(Feature.RECV_RESUMABLE, "resuming interrupted transfers")
    assert e.value.errno == errno.ENOTSUP
    assert "does not support resumable receives" in e.value.errmsg
    assert await local_zfs.pool_features(pool.name) == {}  # pool version 23 has no feature flags


async def _pipe(runner: LocalRunner, send: list[str], recv: list[str]) -> int:
    """send | recv through our own loop, counting bytes, as the replication executor will."""
    sender = await runner.start(send, stdout=True)
    receiver = await runner.start(recv, stdin=True)
    total = 0
    while chunk := await sender.read(65536):
        total += len(chunk)
        await receiver.write(chunk)
    await receiver.close_stdin()
    codes = await asyncio.gather(sender.wait(), receiver.wait())
    assert codes == [0, 0], (sender.stderr_text(), receiver.stderr_text())
    return total


async def test_send_and_recv_argv_replicate_full_then_incremental(local_runner: LocalRunner, local_zfs: Zfs,
                                                                  pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(src)
    (src_pool.mountpoint / "data" / "hello").write_text("one")
    await local_zfs.create_snapshots(src, "s1")
    (src_pool.mountpoint / "data" / "hello").write_text("two")
    await local_zfs.create_snapshots(src, "s2")
    await local_zfs.create_snapshots(src, "s3")

    full = await _pipe(local_runner, send_argv(f"{src}@s1", properties=True), recv_argv(dst))
    incremental = await _pipe(
        local_runner, send_argv(f"{src}@s3", base="s1", intermediates=True), recv_argv(dst, force=True),
    )

    assert full > 0 and incremental > 0
    source = {s.name: s.guid for s in await local_zfs.list_snapshots(src)}
    target = {s.name: s.guid for s in await local_zfs.list_snapshots(dst)}
    assert target == source  # -I carried s2 along; guids prove they are the same snapshots
    assert (dst_pool.mountpoint / "copy" / "hello").read_text() == "two"


async def test_recv_no_mount_leaves_target_unmounted(local_runner: LocalRunner, local_zfs: Zfs,
                                                     pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src = f"{src_pool.name}/data"
    await local_zfs.create_dataset(src)
    await local_zfs.create_snapshots(src, "s1")

    await _pipe(local_runner, send_argv(f"{src}@s1"), recv_argv(f"{dst_pool.name}/copy", no_mount=True))

    assert (await local_zfs.get_properties(f"{dst_pool.name}/copy", ["mounted"]))["mounted"] == "no"
