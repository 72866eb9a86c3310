"""Issue 13 item 7: the pure parts of `pool.dataset.create` and the attachment path helpers — the `zfs create`
argv (volumes, whose zfs-fuse refusal leaves them to the OpenZFS tier) and how a path names a dataset."""
from __future__ import annotations

import pytest

from middlewared_plugin.attachments import Attachment, dataset_of_path, uses
from middlewared_plugin.zfs.commands import create_argv
from middlewared_plugin.zfs.names import InvalidName


def test_create_argv_of_a_filesystem_and_of_a_thin_volume():
    assert create_argv("tank/a/b", parents=True, properties={"compression": "gzip", "org.freenas:description": "x"}) \
        == ["zfs", "create", "-p", "-o", "compression=gzip", "-o", "org.freenas:description=x", "--", "tank/a/b"]
    assert create_argv("tank/vol", volume_size=16 * 1024 ** 2, sparse=True, properties={"volblocksize": "16K"}) \
        == ["zfs", "create", "-s", "-V", str(16 * 1024 ** 2), "-o", "volblocksize=16K", "--", "tank/vol"]


def test_create_argv_refuses_what_could_read_as_an_option():
    with pytest.raises(InvalidName):
        create_argv("-o")
    with pytest.raises(InvalidName):
        create_argv("tank/a", properties={"-V": "1"})
    with pytest.raises(ValueError, match="volumes only"):
        create_argv("tank/a", sparse=True)


MOUNTS = [("tank", "/srv/tank"), ("tank/data", "/srv/tank/data"), ("tank/elsewhere", "/data/other")]


@pytest.mark.parametrize(("path", "dataset"), [
    ("/srv/tank/data", "tank/data"),
    ("/srv/tank/data/", "tank/data"),
    ("/srv/tank/data/dir/sub", "tank/data/dir/sub"),
    ("/srv/tank/datax", "tank/datax"),  # a sibling sharing a prefix is not below tank/data
    ("/data/other/x", "tank/elsewhere/x"),  # a mountpoint outside the pool's tree
    ("/mnt/backup/copy", "backup/copy"),  # TrueNAS's layout for pools we do not mount there
    ("/srv/tank/../etc", None),
    ("relative", None),
    ("", None),
])
def test_a_path_names_the_dataset_of_its_deepest_mountpoint(path: str, dataset: str | None):
    assert dataset_of_path(path, MOUNTS) == dataset


def _attachment(*datasets: str) -> Attachment:
    async def nothing(*_: object) -> None: ...

    return Attachment("Replication", "task", True, 1, nothing, nothing, "replication", datasets, nothing)  # type: ignore[arg-type]


def test_uses_and_its_truenas_options():
    task = _attachment("tank/a/b", "backup/copy")
    assert uses(task, "tank") and uses(task, "tank/a/b") and uses(task, "backup")
    assert not uses(task, "tank/a/b/c") and uses(task, "tank/a/b/c", check_parent=True)
    assert not uses(task, "tank/a", exact_match=True) and uses(task, "backup/copy", exact_match=True)
    assert not uses(task, "tank/a/bc") and not uses(task, "tank/a/bc", check_parent=True)
