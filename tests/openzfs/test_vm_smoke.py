"""The OpenZFS VM offers what the zfs-fuse tier cannot: a real module, encryption and send estimates."""
import re

import pytest

pytestmark = pytest.mark.openzfs

PASSPHRASE = b"smoke-test-passphrase\n"


async def test_guest_runs_the_openzfs_module(openzfs_vm):
    result = await openzfs_vm.run(["zfs", "version"])
    assert re.search(r"^zfs-2\.\d+\.\d+", result.text, re.MULTILINE), result.text
    assert re.search(r"^zfs-kmod-2\.\d+\.\d+", result.text, re.MULTILINE), result.text
    assert result.text.strip() == openzfs_vm.zfs_version


async def test_fixture_describes_how_to_reach_the_guest(openzfs_vm):
    assert openzfs_vm.host == "127.0.0.1"
    assert openzfs_vm.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/=]+", openzfs_vm.host_key)
    offered = await openzfs_vm.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
    assert offered.text.split()[:2] == openzfs_vm.host_key.split()
    assert len(openzfs_vm.disks) >= 2
    listed = await openzfs_vm.run(["ls", *openzfs_vm.disks])
    assert listed.text.split() == list(openzfs_vm.disks)
    python = await openzfs_vm.run(["python3", "-c", "import sys; print(sys.version_info[0])"])
    assert python.text.strip() == "3"


async def test_encrypted_dataset_send_estimate_and_pool_destroy(openzfs_vm):
    pool = "smoke"
    await openzfs_vm.run(["zpool", "create", "-f", pool, openzfs_vm.disks[0]])
    try:
        # the passphrase is read from stdin (keylocation=prompt); the minimum PBKDF2 work keeps it quick
        await openzfs_vm.run(
            ["zfs", "create", "-o", "encryption=on", "-o", "keyformat=passphrase", "-o", "pbkdf2iters=100000",
             f"{pool}/enc"],
            input=PASSPHRASE,
        )
        props = await openzfs_vm.run(
            ["zfs", "get", "-H", "-o", "value", "encryption,keyformat,keystatus", f"{pool}/enc"])
        assert props.text.split() == ["aes-256-gcm", "passphrase", "available"]

        await openzfs_vm.run(["dd", "if=/dev/urandom", f"of=/{pool}/enc/data", "bs=1M", "count=8", "status=none"])
        await openzfs_vm.run(["zfs", "snapshot", f"{pool}/enc@s1"])
        estimate = await openzfs_vm.run(["zfs", "send", "-nvP", "-w", f"{pool}/enc@s1"])
        size = re.search(r"^size\t(\d+)$", estimate.text, re.MULTILINE)
        assert size, estimate.text
        assert int(size.group(1)) >= 8 * 1024 * 1024
    finally:
        await openzfs_vm.run(["zpool", "destroy", "-f", pool], check=False)
    assert pool not in await openzfs_vm.pools()
