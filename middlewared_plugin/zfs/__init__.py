"""The ZFS layer: the only code that knows `zfs`/`zpool` command lines and output formats.

- `Zfs(runner)`: list, create, snapshot, destroy, hold, properties, rollback on one host.
- `detect_features(runner)` / `Features.require(...)`: what that host's ZFS can do, found by probes.
- `send_argv`, `resume_send_argv`, `recv_argv`, `recv_abort_argv`: pure builders for replication pipelines;
  `is_modified_refusal`: whether a receive was refused because its target changed; `import_pool_argv`.
- `names`: the one grammar of pool, dataset, snapshot, hold tag and property names (none reads as an option).
- `Dataset`, `Snapshot`, `Pool`, `DestroyResult`: the values the rest of the engine reasons about.
"""
from middlewared_plugin.zfs.commands import (
    Zfs,
    import_pool_argv,
    is_modified_refusal,
    recv_abort_argv,
    recv_argv,
    resume_send_argv,
    send_argv,
)
from middlewared_plugin.zfs.features import Feature, Features, detect_features, forget_features
from middlewared_plugin.zfs.types import (
    Dataset,
    DestroyResult,
    ImportablePool,
    Pool,
    Snapshot,
    is_same_or_descendant,
    split_snapshot_name,
)

__all__ = [
    "Dataset",
    "DestroyResult",
    "Feature",
    "Features",
    "ImportablePool",
    "Pool",
    "Snapshot",
    "Zfs",
    "detect_features",
    "forget_features",
    "import_pool_argv",
    "is_modified_refusal",
    "is_same_or_descendant",
    "recv_abort_argv",
    "recv_argv",
    "resume_send_argv",
    "send_argv",
    "split_snapshot_name",
]
