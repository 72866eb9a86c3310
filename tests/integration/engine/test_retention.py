"""Replication retention on real pools: the target policy before receiving, and the source-side owner that
keeps what a push task has not sent yet."""
from __future__ import annotations

from datetime import timedelta

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.replication.engine import pending_snapshots_owner, run_task
from middlewared_plugin.replication.transports.local import LocalTransport
from middlewared_plugin.snapshots.retention import PeriodicSnapshotTaskOwner, SnapshotInfo, snapshots_to_destroy
from middlewared_plugin.zfs import Zfs

from .conftest import SCHEMA, T0, Recorder, snap_name, snapshots, task


async def _source(zfs: Zfs, dataset: str, count: int) -> None:
    await zfs.create_dataset(dataset)
    for i in range(count):
        await zfs.create_snapshots(dataset, snap_name(i))


async def test_source_retention_destroys_target_snapshots_gone_from_the_source(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await _source(zfs, src, 3)
    definition = task(src, dst, retention_policy="SOURCE")
    rec = Recorder()
    await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)
    await zfs.destroy_snapshots([f"{src}@{snap_name(0)}"])
    await zfs.create_snapshots(src, snap_name(3))

    result = await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)

    assert result.destroyed == [f"{dst}@{snap_name(0)}"]
    assert f"Destroyed {dst}@{snap_name(0)} (retention)" in rec.lines
    assert await snapshots(zfs, dst) == [snap_name(i) for i in (1, 2, 3)]


async def test_custom_retention_with_per_schedule_lifetimes(zfs: Zfs, runner: LocalRunner,
                                                            pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await _source(zfs, src, 3)  # 10:00, 11:00, 12:00
    definition = task(src, dst, retention_policy="CUSTOM", lifetime_value=2, lifetime_unit="HOUR",
                      lifetimes=[{"schedule": {"minute": "0", "hour": "11"}, "lifetime_value": 1,
                                  "lifetime_unit": "DAY"}])
    rec = Recorder()
    await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log, now=T0)
    for i in (3, 4):
        await zfs.create_snapshots(src, snap_name(i))

    # At 15:00: 10:00 expired (2 hours); 11:00 is kept a day by its schedule; 12:00 is the base.
    result = await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log,
                            now=T0 + timedelta(hours=5))

    assert result.destroyed == [f"{dst}@{snap_name(0)}"]
    assert await snapshots(zfs, dst) == [snap_name(i) for i in (1, 2, 3, 4)]


async def test_hold_pending_snapshots_keeps_unsent_snapshots_and_the_base(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await _source(zfs, src, 2)
    definition = task(src, dst, hold_pending_snapshots=True)
    rec = Recorder()
    await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)
    for i in (2, 3):
        await zfs.create_snapshots(src, snap_name(i))  # not replicated yet
    listed = [SnapshotInfo(s.dataset, s.name) for s in await zfs.list_snapshots(src)]
    expired = PeriodicSnapshotTaskOwner(src, SCHEMA, 1, "HOUR")  # every snapshot is past its lifetime
    now = T0 + timedelta(days=30)

    owner = await pending_snapshots_owner(definition, LocalTransport(runner), now=now)
    with_hold = snapshots_to_destroy([expired, owner], listed, now).destroy
    without = snapshots_to_destroy([expired], listed, now).destroy

    assert owner.retained == {f"{src}@{snap_name(i)}" for i in (1, 2, 3)}  # base + unsent
    assert [s.name for s in with_hold] == [snap_name(0)]
    assert [s.name for s in without] == [snap_name(0), snap_name(1), snap_name(2)]  # newest is always spared


async def test_hold_pending_keeps_everything_selected_when_the_target_cannot_be_listed(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, _ = pool_pair
    src = f"{src_pool.name}/data"
    await _source(zfs, src, 2)
    definition = task(src, "no-such-pool/target", hold_pending_snapshots=True)

    owner = await pending_snapshots_owner(definition, LocalTransport(runner))

    assert owner.retained == {f"{src}@{snap_name(i)}" for i in (0, 1)}
