"""Feature detection tells OpenZFS from zfs-fuse by probing, and a task needing what a host lacks fails with a
clear error instead of a ZFS one.

The VM is probed through the product's own SSH runner (as replication reaches a remote host); zfs-fuse is
this machine's ZFS.
"""
from __future__ import annotations

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import runner_for_credentials
from middlewared_plugin.zfs import Feature, Zfs
from middlewared_plugin.zfs.features import detect_features
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer
from tests.openzfs.support import local_zfs_over_ssh, snapshot_name, task

#: What the engine's OpenZFS-only paths need: resume, raw sends, encryption, estimates, bookmarks, zvols.
OPENZFS_ONLY = {
    Feature.BOOKMARKS, Feature.RECV_RESUMABLE, Feature.SEND_RESUME, Feature.RECV_ABORT, Feature.ENCRYPTION,
    Feature.SEND_RAW, Feature.SEND_DRY_RUN, Feature.ZVOLS,
}


async def test_openzfs_in_the_vm_has_every_feature_the_engine_uses(openzfs_vm: OpenZFSVM) -> None:
    runner = runner_for_credentials(local_zfs_over_ssh(openzfs_vm))
    try:
        features = await detect_features(runner, refresh=True)
    finally:
        await runner.close()
    missing = {f for f in Feature if not features.has(f)}
    assert missing == set(), missing
    assert {"encryption", "keystatus", "receive_resume_token", "written"} <= features.properties


async def test_zfs_fuse_lacks_the_openzfs_features(zfs_daemon: None) -> None:
    features = await detect_features(LocalRunner(), refresh=True)
    assert {f for f in OPENZFS_ONLY if features.has(f)} == set()
    assert "encryption" not in features.properties
    assert "receive_resume_token" not in features.properties


async def test_encryption_on_a_zfs_fuse_target_is_refused_before_the_task_is_saved(
    server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    source_pool, target_pool = pool_pair
    source, target = f"{source_pool.name}/src", f"{target_pool.name}/encrypted"
    await local_zfs.create_dataset(source)
    await local_zfs.create_snapshots(source, snapshot_name(1))
    client = await server.client()

    with pytest.raises(ValidationErrors) as raised:
        await client.call("replication.create", task(
            source, target, None, encryption=True, encryption_key="0" * 64, encryption_key_format="HEX",
            encryption_key_location="$TrueNAS"))
    assert [(e.attribute, e.errmsg) for e in raised.value.errors] == [
        ("replication_create.encryption", "ZFS on this system does not support native encryption")]
    assert await client.call("replication.query") == []
    assert not await local_zfs.exists(target)
