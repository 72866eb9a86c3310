"""LOCAL replication on real zfs-fuse pools: what arrives, in how many streams, and what is refused."""
from __future__ import annotations

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.replication.engine import ReplicationFailed, plan_task, run_task
from middlewared_plugin.replication.plan import FullSend, IncrementalSend
from middlewared_plugin.replication.transports.local import LocalTransport
from middlewared_plugin.zfs import Zfs

from .conftest import Recorder, make_writable, read, snap_name, snapshots, task, write


async def test_full_then_incremental(zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/backup/data"
    await zfs.create_dataset(src)
    await write(zfs, src, "a.txt", b"first")
    await zfs.create_snapshots(src, snap_name(0))
    transport = LocalTransport(runner)
    rec = Recorder()

    first = await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)

    assert first.snapshots_sent == [f"{dst}@{snap_name(0)}"]
    assert await snapshots(zfs, dst) == [snap_name(0)]
    assert await read(zfs, dst, "a.txt") == b"first"
    # readonly SET (zfs-fuse reports the mounted value "off temporary", so the command is what we can check)
    assert f"[local] zfs set readonly=on {dst}" in rec.lines

    await write(zfs, src, "b.txt", b"second")
    await zfs.create_snapshots(src, snap_name(1))
    plan = await plan_task(task(src, dst), transport)
    (step,) = plan.datasets[0].sends
    assert isinstance(step, IncrementalSend) and step.base == snap_name(0) and step.snapshot == snap_name(1)

    second = await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)

    assert second.snapshots_sent == [f"{dst}@{snap_name(1)}"]
    assert await snapshots(zfs, dst) == [snap_name(0), snap_name(1)]
    assert await read(zfs, dst, "b.txt") == b"second"
    src_guids = {s.name: s.guid for s in await zfs.list_snapshots(src)}
    dst_guids = {s.name: s.guid for s in await zfs.list_snapshots(dst)}
    assert src_guids == dst_guids
    assert any(line.startswith(f"Sent {src}@{snap_name(1)}") for line in rec.lines)


async def test_contiguous_snapshots_travel_in_one_stream(zfs: Zfs, runner: LocalRunner,
                                                         pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await zfs.create_snapshots(src, snap_name(0))
    transport = LocalTransport(runner)
    rec = Recorder()
    await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)
    for i in range(1, 6):
        await write(zfs, src, f"f{i}", b"x" * i)
        await zfs.create_snapshots(src, snap_name(i))
    rec.lines.clear()

    result = await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)

    pipes = [line for line in rec.lines if line.startswith("[LOCAL]")]
    assert len(pipes) == 1 and " -I " in pipes[0]
    assert result.snapshots_sent == [f"{dst}@{snap_name(i)}" for i in range(1, 6)]
    assert await snapshots(zfs, dst) == [snap_name(i) for i in range(6)]


async def test_recursive_with_excludes(zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    root, dst = f"{src_pool.name}/tree", f"{dst_pool.name}/copy"
    for child in ("a", "a/deep", "skip", "skip/below", "b"):
        await zfs.create_dataset(f"{root}/{child}")
    await write(zfs, f"{root}/a/deep", "f", b"deep data")
    await zfs.create_snapshots(root, snap_name(0), recursive=True)
    rec = Recorder()

    await run_task(task(root, dst, recursive=True, exclude=[f"{root}/skip"]), LocalTransport(runner),
                   progress=rec.on_progress, log=rec.log)

    names = [d.name for d in await zfs.list_datasets(dst)]
    assert names == [dst, f"{dst}/a", f"{dst}/a/deep", f"{dst}/b"]
    assert await read(zfs, f"{dst}/a/deep", "f") == b"deep data"
    assert await snapshots(zfs, f"{dst}/b") == [snap_name(0)]


async def test_pull_over_local_runners(zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/remote-data", f"{dst_pool.name}/pulled"
    await zfs.create_dataset(src)
    await write(zfs, src, "f", b"pulled")
    await zfs.create_snapshots(src, snap_name(0))
    rec = Recorder()
    pull = task(src, dst, direction="PULL", naming_schema=[task("x", "y")["also_include_naming_schema"][0]],
                also_include_naming_schema=[])

    result = await run_task(pull, LocalTransport(runner), progress=rec.on_progress, log=rec.log)

    assert result.snapshots_sent == [f"{dst}@{snap_name(0)}"]
    assert await read(zfs, dst, "f") == b"pulled"


async def test_diverged_target_is_refused_with_the_snapshots_named(zfs: Zfs, runner: LocalRunner,
                                                                   pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await zfs.create_snapshots(src, snap_name(0))
    transport = LocalTransport(runner)
    rec = Recorder()
    await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)
    await make_writable(zfs, dst)
    await write(zfs, dst, "local-change", b"mine")
    await zfs.create_snapshots(dst, "manual-keep-me")
    await zfs.create_snapshots(src, snap_name(1))

    with pytest.raises(ReplicationFailed) as e:
        await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)

    assert "diverged" in e.value.errmsg and "manual-keep-me" in e.value.errmsg
    assert await snapshots(zfs, dst) == [snap_name(0), "manual-keep-me"]  # nothing destroyed


async def test_unrelated_same_named_snapshot_is_detected(zfs: Zfs, runner: LocalRunner,
                                                         pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await zfs.create_dataset(dst)
    await zfs.create_snapshots(src, snap_name(0))
    await zfs.create_snapshots(dst, snap_name(0))  # same name, different snapshot (guid)
    rec = Recorder()

    plan = await plan_task(task(src, dst), LocalTransport(runner))
    codes = {c.code for c in plan.conflicts}
    assert {"NO_COMMON_BASE", "UNRELATED_SNAPSHOT"} <= codes
    with pytest.raises(ReplicationFailed) as e:
        await run_task(task(src, dst), LocalTransport(runner), progress=rec.on_progress, log=rec.log)
    assert f"{dst}@{snap_name(0)} is not the source's snapshot" in e.value.errmsg


async def test_progress_reaches_100_with_the_bytes_that_crossed_the_pipe(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await write(zfs, src, "blob", bytes(range(256)) * 40_000)
    await zfs.create_snapshots(src, snap_name(0))
    await write(zfs, src, "blob2", b"y" * 3_000_000)
    await zfs.create_snapshots(src, snap_name(1))
    transport = LocalTransport(runner)
    crossed: list[int] = []
    original = transport.pipe

    async def counting_pipe(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(*args, **kwargs)
        crossed.append(result.bytes)
        return result

    transport.pipe = counting_pipe  # type: ignore[method-assign]
    rec = Recorder()
    plan = await plan_task(task(src, dst), transport)
    assert isinstance(plan.datasets[0].sends[0], FullSend)

    result = await run_task(task(src, dst), transport, progress=rec.on_progress, log=rec.log)

    last = rec.progress[-1]
    assert last.percent == 100.0
    assert last.bytes_sent == last.bytes_total == result.bytes_sent == sum(crossed) > 10_000_000
    assert last.snapshots_sent == last.snapshots_total == 2
    percents = [p.percent for p in rec.progress]
    assert percents == sorted(percents) and 0 < percents[len(percents) // 2] < 100
    assert any(p.rate for p in rec.progress)
