"""Issue 12 §2/§3 on real zfs-fuse pools: a task's later runs never fail because of what its earlier runs did
to the target, and nothing on the target is discarded unless the task allows it, explicitly and logged.

zfs-fuse stamps the access time of a directory a filesystem is mounted on, so mounting a child target changes
its parent after the parent's newest snapshot; and zfs-fuse has no `written` property, so the planner cannot
see changes made on a target: only the receive's refusal tells.
"""
from __future__ import annotations

import errno

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshRunner
from middlewared_plugin.replication.engine import ReplicationFailed, run_task
from middlewared_plugin.replication.transports.base import Transport
from middlewared_plugin.replication.transports.local import LocalTransport
from middlewared_plugin.replication.transports.ssh import SshTransport
from middlewared_plugin.zfs import Zfs

from .conftest import Recorder, make_writable, read, snap_name, snapshots, task, write

CHILDREN = ("", "/a", "/a/deep", "/b")


@pytest.mark.parametrize("transport_kind", ["LOCAL", "SSH"])
@pytest.mark.parametrize("readonly", ["SET", "REQUIRE", "IGNORE"])
async def test_recursive_task_runs_again_and_again_under_every_readonly_policy(
        zfs: Zfs, runner: LocalRunner, remote: SshRunner, pool_pair: tuple[FilePool, FilePool],
        readonly: str, transport_kind: str):
    src_pool, dst_pool = pool_pair
    root, dst = f"{src_pool.name}/tree", f"{dst_pool.name}/copy"
    for child in CHILDREN[1:]:
        await zfs.create_dataset(f"{root}{child}")
    transport: Transport = (LocalTransport(runner) if transport_kind == "LOCAL"
                            else SshTransport(runner, remote, "PUSH"))
    definition = task(root, dst, recursive=True, readonly=readonly, transport=transport_kind)
    rec = Recorder()
    try:
        for run in range(3):
            for child in CHILDREN:
                await write(zfs, f"{root}{child}", f"run{run}", f"{child} {run}".encode())
            await zfs.create_snapshots(root, snap_name(run), recursive=True)

            result = await run_task(definition, transport, progress=rec.on_progress, log=rec.log)

            assert result.snapshots_sent == [f"{dst}{child}@{snap_name(run)}" for child in CHILDREN], run
            assert result.rolled_back == [] and result.destroyed == [] and result.warnings == []
            for child in CHILDREN:
                assert await snapshots(zfs, f"{dst}{child}") == [snap_name(i) for i in range(run + 1)]
                if readonly != "IGNORE":
                    # Reading is harmless on read-only targets. zfs-fuse stamps access times even through a
                    # read-only mount unless the `readonly` property is on: reading an IGNORE target there is
                    # a change the next run would refuse (OpenZFS does not stamp through read-only mounts).
                    assert await read(zfs, f"{dst}{child}", f"run{run}") == f"{child} {run}".encode()
    finally:
        await transport.close()
    for child in CHILDREN:
        for run in range(3):
            assert await read(zfs, f"{dst}{child}", f"run{run}") == f"{child} {run}".encode()
    pipelines = [line for line in rec.lines if line.startswith(f"[{transport_kind}]")]
    assert len(pipelines) == 3 * len(CHILDREN)
    assert all(" -F " not in line and "zfs receive -u " in line for line in pipelines), pipelines
    if readonly == "IGNORE":
        # The property is left alone; the mount is read-only, so nobody changes the target between runs.
        assert not any("readonly=on" in line for line in rec.lines)
        with pytest.raises(OSError) as refused:
            await write(zfs, dst, "mine", b"x")
        assert refused.value.errno == errno.EROFS
        # Mounting a child changed its parent: undone at once, said so, and not counted as a discard.
        assert any(line.startswith(f"Rolled back {dst} to {snap_name(0)}: undoes what mounting {dst}/a")
                   for line in rec.lines)
    else:
        assert not any(line.startswith("Rolled back") for line in rec.lines)


async def _changed_target(zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool],
                          **fields) -> tuple[str, str, dict, Recorder]:
    """A target replicated once, then written to by its user; the source has a new snapshot."""
    src_pool, dst_pool = pool_pair
    src, dst = f"{src_pool.name}/data", f"{dst_pool.name}/data"
    await zfs.create_dataset(src)
    await write(zfs, src, "a", b"source")
    await zfs.create_snapshots(src, snap_name(0))
    definition = task(src, dst, **fields)
    rec = Recorder()
    await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)
    await make_writable(zfs, dst)
    await write(zfs, dst, "users-file", b"written on the target")
    await write(zfs, src, "b", b"more")
    await zfs.create_snapshots(src, snap_name(1))
    rec.lines.clear()
    return src, dst, definition, rec


async def test_allow_from_scratch_rolls_back_target_changes_explicitly_and_says_so(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src, dst, definition, rec = await _changed_target(zfs, runner, pool_pair, allow_from_scratch=True)

    result = await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)

    assert result.rolled_back == [f"{dst}@{snap_name(0)}"] and result.destroyed == []
    assert (f"Rolled back {dst} to {snap_name(0)}, discarding the changes made on the target since that "
            f"snapshot (amount unknown: this ZFS does not report 'written')") in rec.lines
    assert f"[local] zfs rollback -- {dst}@{snap_name(0)}" in rec.lines
    assert not any(" -F " in line for line in rec.lines if line.startswith("[LOCAL]"))
    assert await snapshots(zfs, dst) == [snap_name(0), snap_name(1)]
    assert await read(zfs, dst, "b") == b"more"
    with pytest.raises(FileNotFoundError):
        await read(zfs, dst, "users-file")
    # The next run has nothing to roll back.
    await zfs.create_snapshots(src, snap_name(2))
    again = await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)
    assert again.rolled_back == [] and again.snapshots_sent == [f"{dst}@{snap_name(2)}"]


async def test_target_changes_are_refused_and_kept_without_permission(
        zfs: Zfs, runner: LocalRunner, pool_pair: tuple[FilePool, FilePool]):
    src, dst, definition, rec = await _changed_target(zfs, runner, pool_pair)

    with pytest.raises(ReplicationFailed) as refused:
        await run_task(definition, LocalTransport(runner), progress=rec.on_progress, log=rec.log)

    assert f"Target {dst} was modified since its snapshot {snap_name(0)} and is kept as it is" in refused.value.errmsg
    assert "allow from scratch" in refused.value.errmsg
    assert refused.value.result.rolled_back == [] and not any("zfs rollback" in line for line in rec.lines)
    assert await snapshots(zfs, dst) == [snap_name(0)]
    assert await read(zfs, dst, "users-file") == b"written on the target"
