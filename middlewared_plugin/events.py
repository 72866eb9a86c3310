"""The one event bus: services and the job manager publish, protocol connections subscribe.

An event is a `collection_update` in TrueNAS terms: (collection, msg, id, fields, extra). Subscribers decide
themselves which events they may see (roles, job ownership); the bus only fans out, synchronously and in
publication order, so a connection receives events in the order they happened.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["ADDED", "CHANGED", "REMOVED"]


@dataclass(frozen=True)
class Event:
    collection: str
    kind: EventKind
    id: Any = None
    fields: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Who may see it, when narrower than the collection's roles (jobs: owner and read roles).
    audience: Callable[[Any], bool] | None = None
    #: Fields as a given subscriber's credentials may see them (secrets redacted for readers).
    redact: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._wants: dict[Listener, Callable[[str], bool]] = {}

    def listen(self, listener: Listener, wants: Callable[[str], bool] | None = None) -> Callable[[], None]:
        """Register a listener; returns the function that removes it. `wants(collection)` says whether the
        listener would deliver that collection's events (without it: every collection)."""
        self._listeners.append(listener)
        if wants is not None:
            self._wants[listener] = wants

        def stop() -> None:
            self._listeners.remove(listener)
            self._wants.pop(listener, None)

        return stop

    def wanted(self, *collections: str) -> bool:
        """Whether any listener would deliver an event of one of `collections`: publishers whose events cost
        work to compute (listings) skip that work when nobody would receive them."""
        return any(
            (wants := self._wants.get(listener)) is None or any(wants(c) for c in collections)
            for listener in self._listeners
        )

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)
