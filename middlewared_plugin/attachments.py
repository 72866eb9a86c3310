"""Tasks that use a dataset (TrueNAS's "attachments"): what deleting the dataset deletes, what exporting its
pool disables and importing the pool enables again, and what `pool.dataset.attachments` lists.

Every service whose entries use local datasets implements `dataset_attachments(dataset)`: its entries on
`dataset` or below it, each with a way to delete or toggle it. An entry that depends on another service's
entries (a replication task bound to periodic snapshot tasks) has a higher `order`: it is disabled and
deleted before them and enabled after them, so that no step breaks a binding rule.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from middlewared_plugin.app import App


@dataclass(frozen=True)
class Attachment:
    type: str
    """What `pool.dataset.attachments` groups by: "Replication", "Snapshot Task"."""
    name: str
    """How the listing names it (a task's name, a snapshot task's dataset)."""
    enabled: bool
    order: int
    delete: Callable[[], Awaitable[None]]
    toggle: Callable[[bool], Awaitable[None]]


async def attachments_of(app: App, dataset: str) -> list[Attachment]:
    """Every entry of every service that uses `dataset` or a dataset below it."""
    found: list[Attachment] = []
    for service in app.services.values():
        finder = getattr(service, "dataset_attachments", None)
        if finder is not None:
            found.extend(await finder(dataset))
    return found


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
