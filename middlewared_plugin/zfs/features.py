"""What the `zfs` on a host can do, found by asking it, cached per runner.

ZFS implementations differ far more than their version numbers suggest (zfs-fuse is pool version 23 with
no resumable receive, no `send -nvP`, no multi-snapshot `zfs snapshot`, no comma-list destroy; OpenZFS 0.8
has resume tokens but 2.0 added more), so every feature is detected by a harmless probe:

* option probes run the command with the option against a dataset that cannot exist
  (`mwpt-probe-absent`) and stdin at EOF; the option is missing exactly when ZFS answers
  "invalid option 'x'" (getopt's complaint) instead of "dataset does not exist".
* command probes look for "unrecognized command" (e.g. `zfs bookmark` on zfs-fuse) or the
  "internal error" zfs-fuse prints for commands it delegates to a missing python helper (`zfs holds`).
* property names come from the table `zfs get` prints with its usage (no pool needed).

Nothing is ever created by a probe. `detect_features()` caches by `runner.name`; call `forget_features()`
after a host's ZFS was upgraded.
"""
from __future__ import annotations

import asyncio
import errno
import re
from dataclasses import dataclass
from enum import Enum

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import Runner

#: A dataset name no pool will have; probes aim at it so that nothing can be touched.
PROBE_DATASET = "mwpt-probe-absent/probe"

#: zfs-fuse's daemon socket; its presence marks a zfs-fuse host (which implements no zvols).
ZFS_FUSE_SOCKET = "/var/run/zfs/zfs_socket"


class Feature(Enum):
    """Capabilities the engine may need; the value is the phrase used in "does not support ..." errors."""

    SEND_DRY_RUN = "size estimates (zfs send -nvP)"
    SEND_RAW = "raw sends (zfs send -w)"
    SEND_LARGE_BLOCK = "large-block sends (zfs send -L)"
    SEND_COMPRESSED = "compressed sends (zfs send -c)"
    SEND_EMBEDDED = "embedded-data sends (zfs send -e)"
    SEND_RESUME = "resuming sends from a token (zfs send -t)"
    RECV_RESUMABLE = "resumable receives (zfs receive -s, receive_resume_token)"
    RECV_ABORT = "aborting a partial receive (zfs receive -A)"
    RECV_EXCLUDE_PROPERTY = "excluding properties on receive (zfs receive -x)"
    RECV_OVERRIDE_PROPERTY = "overriding properties on receive (zfs receive -o)"
    RECV_NO_MOUNT = "receiving without mounting (zfs receive -u)"
    ENCRYPTION = "native encryption"
    BOOKMARKS = "bookmarks"
    ZVOLS = "volumes (zvols)"
    HOLDS = "snapshot holds (zfs hold/release)"
    LIST_HOLDS = "listing hold tags (zfs holds)"
    WRITTEN_PROPERTY = "the 'written' property"
    MULTI_SNAPSHOT = "atomic snapshots of several datasets in one 'zfs snapshot'"
    DESTROY_SNAPSHOT_LIST = "destroying several snapshots in one 'zfs destroy ds@a,b'"
    GET_TYPE_FILTER = "type filters on 'zfs get' (-t)"


@dataclass(frozen=True)
class Features:
    host: str
    supported: frozenset[Feature]
    #: Every dataset property name `zfs get` knows on that host (user properties excluded).
    properties: frozenset[str]

    def has(self, feature: Feature) -> bool:
        return feature in self.supported

    def require(self, feature: Feature, purpose: str | None = None) -> None:
        """Raise CallError(ENOTSUP) naming the host and the missing capability."""
        if feature not in self.supported:
            why = f" (needed for {purpose})" if purpose else ""
            raise CallError(f"ZFS on host {self.host} does not support {feature.value}{why}", errno.ENOTSUP)


_cache: dict[str, Features] = {}
_locks: dict[str, asyncio.Lock] = {}

_PROBE_TIMEOUT = 60.0


async def detect_features(runner: Runner, *, refresh: bool = False) -> Features:
    """Probe (once per host) what this host's `zfs` supports."""
    lock = _locks.setdefault(runner.name, asyncio.Lock())
    async with lock:
        if refresh or runner.name not in _cache:
            _cache[runner.name] = await _probe(runner)
        return _cache[runner.name]


def forget_features(runner: Runner) -> None:
    _cache.pop(runner.name, None)


async def _stderr(runner: Runner, argv: list[str]) -> str:
    result = await runner.run(argv, check=False, timeout=_PROBE_TIMEOUT)
    return (result.stderr + result.stdout).decode(errors="replace")


def _lacks_option(output: str) -> bool:
    # Each probe passes only the option(s) under test, so any getopt complaint means "missing".
    return re.search(r"(invalid|unrecognized|illegal) option", output) is not None


def _lacks_command(output: str) -> bool:
    return "unrecognized command" in output or "internal error" in output


_PROPERTY_ROW = re.compile(r"^\s+([a-z][a-z0-9_:.@-]*)\s+(?:YES|NO)\s+(?:YES|NO)\s", re.MULTILINE)


async def _probe(runner: Runner) -> Features:
    target = PROBE_DATASET
    snap = f"{target}@probe"
    option_probes: dict[Feature, list[str]] = {
        Feature.SEND_DRY_RUN: ["zfs", "send", "-n", "-v", "-P", snap],
        Feature.SEND_RAW: ["zfs", "send", "-w", snap],
        Feature.SEND_LARGE_BLOCK: ["zfs", "send", "-L", snap],
        Feature.SEND_COMPRESSED: ["zfs", "send", "-c", snap],
        Feature.SEND_EMBEDDED: ["zfs", "send", "-e", snap],
        Feature.SEND_RESUME: ["zfs", "send", "-t", "probe"],
        Feature.RECV_RESUMABLE: ["zfs", "receive", "-s", target],
        Feature.RECV_ABORT: ["zfs", "receive", "-A", target],
        Feature.RECV_EXCLUDE_PROPERTY: ["zfs", "receive", "-x", "compression", target],
        Feature.RECV_OVERRIDE_PROPERTY: ["zfs", "receive", "-o", "compression=on", target],
        Feature.RECV_NO_MOUNT: ["zfs", "receive", "-u", target],
        Feature.GET_TYPE_FILTER: ["zfs", "get", "-H", "-t", "snapshot", "name", target],
    }
    command_probes: dict[Feature, list[str]] = {
        Feature.BOOKMARKS: ["zfs", "bookmark", snap, f"{target}#probe"],
        Feature.HOLDS: ["zfs", "hold", "mwpt-probe", snap],
        Feature.LIST_HOLDS: ["zfs", "holds", "-H", snap],
    }
    multi_snapshot = ["zfs", "snapshot", f"{target}a@probe", f"{target}b@probe"]
    destroy_list = ["zfs", "destroy", f"{target}@probe1,probe2"]
    zfs_fuse = ["test", "-S", ZFS_FUSE_SOCKET]

    option_out, command_out, multi_out, destroy_out, properties_out, fuse_result = await asyncio.gather(
        asyncio.gather(*(_stderr(runner, argv) for argv in option_probes.values())),
        asyncio.gather(*(_stderr(runner, argv) for argv in command_probes.values())),
        _stderr(runner, multi_snapshot),
        _stderr(runner, destroy_list),
        _stderr(runner, ["zfs", "get"]),
        runner.run(zfs_fuse, check=False, timeout=_PROBE_TIMEOUT),
    )
    supported: set[Feature] = set()
    for feature, out in zip(option_probes, option_out, strict=True):
        if not _lacks_option(out):
            supported.add(feature)
    for feature, out in zip(command_probes, command_out, strict=True):
        if not _lacks_command(out):
            supported.add(feature)
    if "too many arguments" not in multi_out:
        supported.add(Feature.MULTI_SNAPSHOT)
    if "invalid dataset name" not in destroy_out:
        supported.add(Feature.DESTROY_SNAPSHOT_LIST)

    properties = frozenset(_PROPERTY_ROW.findall(properties_out))
    if not properties:
        raise CallError(f"[{runner.name}] could not read the property list from 'zfs get': {properties_out[:300]}")
    if "receive_resume_token" not in properties:
        # Without the property there is no token to resume from, whatever `receive -s` accepts.
        supported.discard(Feature.RECV_RESUMABLE)
    if "written" in properties:
        supported.add(Feature.WRITTEN_PROPERTY)
    if "encryption" in properties:
        supported.add(Feature.ENCRYPTION)
    if fuse_result.returncode != 0:
        supported.add(Feature.ZVOLS)
    return Features(runner.name, frozenset(supported), properties)
