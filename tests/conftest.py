"""Fixtures live in tests/fixtures/, one module per real part (zfs-fuse pools, sshd, server, OpenZFS VM)."""
pytest_plugins = [
    "tests.fixtures.zfs",
    "tests.fixtures.sshd",
    "tests.fixtures.server",
    "tests.fixtures.openzfs_vm",
]
