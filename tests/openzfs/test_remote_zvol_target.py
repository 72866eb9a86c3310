"""A zvol is refused as the remote destination of a push (seed-remote-replication: "You cannot use Zvols as a
remote replication destination"). zfs-fuse has no zvols, so this runs against the OpenZFS VM."""
from __future__ import annotations

import pytest

from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.services.replication import ZVOL_TARGET_MESSAGE
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.integration.replication_api.conftest import Env, create_ssh_credentials

pytestmark = pytest.mark.openzfs


async def test_push_into_an_existing_remote_zvol_is_refused(env: Env, openzfs_vm: OpenZFSVM) -> None:
    await openzfs_vm.run(["zpool", "create", "-f", "zvt", openzfs_vm.disks[0]])
    try:
        await openzfs_vm.run(["zfs", "create", "-V", "16M", "zvt/vol"])
        await openzfs_vm.run(["zfs", "create", "zvt/fs"])
        _, credentials = await create_ssh_credentials(
            env.client, port=openzfs_vm.port, private_key=openzfs_vm.private_key,
            remote_host_key=openzfs_vm.host_key)
        push = await env.task(transport="SSH", ssh_credentials=credentials)

        with pytest.raises(ValidationErrors) as raised:
            await env.client.call("replication.create", {**push, "target_dataset": "zvt/vol"})
        assert raised.value.triples() == [["replication_create.target_dataset", ZVOL_TARGET_MESSAGE, 22]]
        # A filesystem, or a target that does not exist yet, is fine.
        assert (await env.client.call("replication.create", {**push, "target_dataset": "zvt/fs"}))["id"]
        assert (await env.client.call("replication.create", {**push, "name": "new", "target_dataset": "zvt/new"}))
        # A pull writes into a local target: the remote side is only read.
        pull = {**push, "name": "pull", "direction": "PULL", "source_datasets": ["zvt/fs"], "target_dataset":
                "zvt/vol", "naming_schema": push["also_include_naming_schema"], "also_include_naming_schema": []}
        assert (await env.client.call("replication.create", pull))["direction"] == "PULL"
    finally:
        await openzfs_vm.run(["zpool", "destroy", "-f", "zvt"])
