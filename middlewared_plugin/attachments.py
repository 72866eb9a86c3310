"""Tasks that use a dataset (TrueNAS's "attachments"): what deleting the dataset deletes, what exporting its
pool disables and importing the pool enables again, and what `pool.dataset.attachments` lists.

Every service whose entries use local datasets implements `dataset_attachments()`: each of its entries with
the local datasets it uses and a way to delete, toggle or read it, and names its TrueNAS attachment delegate
in `attachment_delegate`. `delegate` and `type` are the name and title of that delegate (`snapshottask`
"Snapshot Task", `replication` "Replication"). An entry that depends on another service's entries (a
replication task bound to periodic snapshot tasks) has a higher `order`: it is disabled and deleted before
them and enabled after them, so that no step breaks a binding rule.

Which entries use a dataset is decided here only: `uses` (by dataset name) for deletion, export and import,
and, after `dataset_of_path`, for TrueNAS's path-based helpers.
"""
from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from middlewared_plugin.zfs.types import is_same_or_descendant

if TYPE_CHECKING:
    from middlewared_plugin.app import App

#: Where TrueNAS mounts pools (its delegates compare `/mnt/<dataset>` paths); a path there that is no
#: mountpoint of ours still names the dataset after it, so paths written for TrueNAS keep working.
TRUENAS_MOUNT_ROOT = "/mnt"


@dataclass(frozen=True)
class Attachment:
    type: str
    """What `pool.dataset.attachments` groups by (TrueNAS's delegate title): "Replication", "Snapshot Task"."""
    name: str
    """How the listing names it (a task's name, a snapshot task's dataset)."""
    enabled: bool
    order: int
    delete: Callable[[], Awaitable[None]]
    toggle: Callable[[bool], Awaitable[None]]
    delegate: str
    """TrueNAS's delegate name (`pool.dataset.query_attachment_delegate`): "replication", "snapshottask"."""
    datasets: tuple[str, ...]
    """The local datasets the entry uses."""
    entry: Callable[[], Awaitable[dict[str, Any]]]
    """The entry as its service's `query` shows it."""


def uses(attachment: Attachment, dataset: str, *, check_parent: bool = False, exact_match: bool = False) -> bool:
    """Whether `attachment` uses `dataset`: one of its datasets is `dataset` or below it (deleting `dataset`
    takes it away). `exact_match`: only `dataset` itself; `check_parent`: also one above `dataset` (which
    consumes `dataset` as part of its tree), as TrueNAS's share delegates read these options."""
    if exact_match:
        return dataset in attachment.datasets
    return any(is_same_or_descendant(used, dataset) or (check_parent and is_same_or_descendant(dataset, used))
               for used in attachment.datasets)


async def _every(app: App) -> list[Attachment]:
    found: list[Attachment] = []
    for service in app.services.values():
        finder = getattr(service, "dataset_attachments", None)
        if finder is not None:
            found.extend(await finder())
    return found


async def attachments_of(
    app: App, dataset: str, *, check_parent: bool = False, exact_match: bool = False,
) -> list[Attachment]:
    """Every entry of every service that uses `dataset` or a dataset below it (see `uses` for the options)."""
    return [a for a in await _every(app) if uses(a, dataset, check_parent=check_parent, exact_match=exact_match)]


def delegate_names(app: App) -> set[str]:
    """The attachment delegates there are: one per service with `dataset_attachments`."""
    return {service.attachment_delegate for service in app.services.values()  # type: ignore[attr-defined]
            if hasattr(service, "dataset_attachments")}


def dataset_of_path(path: str, mountpoints: Iterable[tuple[str, str]]) -> str | None:
    """The dataset-space name of a path: below the deepest mountpoint (`(dataset, mountpoint)` pairs) holding
    it, the dataset's name followed by the rest of the path; else, below `/mnt`, the path after it (TrueNAS's
    layout); else None. Only absolute paths name anything."""
    if not path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    best: tuple[str, str] | None = None
    for dataset, mountpoint in mountpoints:
        mountpoint = posixpath.normpath(mountpoint)
        if (path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")) and (
                best is None or len(mountpoint) > len(best[1])):
            best = (dataset, mountpoint)
    if best is not None:
        rest = path[len(best[1]):].strip("/")
        return f"{best[0]}/{rest}" if rest else best[0]
    if path.startswith(TRUENAS_MOUNT_ROOT + "/"):
        return path[len(TRUENAS_MOUNT_ROOT) + 1:] or None
    return None


def listing(attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """The enabled attachments grouped by type, as `pool.dataset.attachments` answers (disabled ones are not
    reported: they stop nothing)."""
    groups: dict[str, list[str]] = {}
    for attachment in attachments:
        if attachment.enabled:
            groups.setdefault(attachment.type, []).append(attachment.name)
    return [{"type": type_, "service": None, "attachments": names} for type_, names in groups.items()]


async def delete_all(attachments: Sequence[Attachment]) -> None:
    for attachment in sorted(attachments, key=lambda a: -a.order):
        await attachment.delete()


async def toggle_all(attachments: Sequence[Attachment], enabled: bool) -> None:
    """Enable or disable each of `attachments`, dependents last when enabling and first when disabling."""
    for attachment in sorted(attachments, key=lambda a: a.order if enabled else -a.order):
        await attachment.toggle(enabled)
