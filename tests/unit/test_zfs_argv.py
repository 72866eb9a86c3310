"""Send/receive command lines: flags in zettarepl's order, nothing the caller did not ask for, names after `--`."""
from __future__ import annotations

import pytest

from middlewared_plugin.zfs import recv_abort_argv, recv_argv, resume_send_argv, send_argv
from middlewared_plugin.zfs.commands import inherited_value


def test_full_send_is_plain():
    assert send_argv("tank/a@s1") == ["zfs", "send", "--", "tank/a@s1"]


def test_send_flags_follow_zettarepl_order():
    argv = send_argv("tank/a@s2", base="s1", replicate=True, raw=True, large_block=True, compressed=True,
                     embedded=True)
    assert argv == ["zfs", "send", "-e", "-R", "-w", "-i", "tank/a@s1", "-L", "-c", "--", "tank/a@s2"]


@pytest.mark.parametrize(("base", "expected"), [
    ("s1", "tank/a@s1"), ("@s1", "tank/a@s1"), ("#mark", "tank/a#mark"), ("tank/a@s1", "tank/a@s1"),
])
def test_incremental_base_forms(base: str, expected: str):
    assert send_argv("tank/a@s2", base=base, intermediates=True)[2:4] == ["-I", expected]


def test_properties_flag_is_implied_by_replicate_and_dry_run_is_parsable():
    assert send_argv("tank/a@s1", replicate=True, properties=True).count("-p") == 0
    assert send_argv("tank/a@s1", properties=True, dry_run=True) == [
        "zfs", "send", "-n", "-v", "-P", "-p", "--", "tank/a@s1",
    ]


def test_intermediates_need_a_base():
    with pytest.raises(ValueError):
        send_argv("tank/a@s2", intermediates=True)


def test_resume_and_receive_argv():
    assert resume_send_argv("1-abc") == ["zfs", "send", "-t", "1-abc"]
    assert recv_argv("pool/b") == ["zfs", "receive", "--", "pool/b"]
    assert recv_argv(
        "pool/b", resumable=True, force=True, no_mount=True, exclude_properties=["mountpoint"],
        override_properties={"readonly": "on"},
    ) == ["zfs", "receive", "-s", "-F", "-u", "-x", "mountpoint", "-o", "readonly=on", "--", "pool/b"]
    assert recv_abort_argv("pool/b") == ["zfs", "receive", "-A", "--", "pool/b"]



@pytest.mark.parametrize(("prop", "parent", "expected"), [
    ("mountpoint", "/mnt/backup/copy", "/mnt/backup/copy/child"),
    ("mountpoint", "/", "/child"),
    ("mountpoint", "legacy", "legacy"),
    ("mountpoint", "none", "none"),
    ("sharenfs", "off", "off"),
    ("mountpoint", None, None),
])
def test_inherited_value_appends_the_name_to_a_mountpoint_path_only(prop: str, parent: str | None,
                                                                    expected: str | None):
    # What a dataset set in place of a received value it cannot inherit over (zfs-fuse) must equal what
    # `zfs inherit` would have given it: a child's mountpoint is its parent's path plus its own name.
    assert inherited_value(prop, parent, "child") == expected
