"""Which replication tasks may run together: the parallel limit and the overlap rules (zettarepl notes §8).

Pure: a task's footprint in, the reason it must wait (or None) out. Two tasks in the same direction
conflict when they use the same remote host and their target datasets overlap (one contains the
other); a push and a pull conflict when the pull's local target overlaps the push's local sources, or
the push's remote target overlaps the pull's remote sources.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def overlaps(a: str, b: str) -> bool:
    """One dataset is the other or contains it."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _any_overlap(left: Iterable[str], right: Iterable[str]) -> bool:
    right = list(right)
    return any(overlaps(x, y) for x in left for y in right)


@dataclass(frozen=True)
class Footprint:
    """What a running replication task touches."""

    task_id: int | str
    name: str
    direction: str  # "PUSH" or "PULL"
    #: The remote host ("" for LOCAL: both sides are this machine).
    host: str
    source_datasets: tuple[str, ...]
    target_dataset: str


def conflicts(a: Footprint, b: Footprint) -> bool:
    if a.direction == b.direction:
        return a.host == b.host and overlaps(a.target_dataset, b.target_dataset)
    push, pull = (a, b) if a.direction == "PUSH" else (b, a)
    return (
        _any_overlap([pull.target_dataset], push.source_datasets)
        or _any_overlap([push.target_dataset], pull.source_datasets)
    )


def blocking_reason(candidate: Footprint, running: Iterable[Footprint], max_parallel: int | None) -> str | None:
    """Why `candidate` cannot start now, in words for the WAITING state; None when it can."""
    running = [r for r in running if r.task_id != candidate.task_id]
    for other in running:
        if conflicts(candidate, other):
            return f"Waiting for replication task {other.name!r} that uses overlapping datasets to finish"
    if max_parallel is not None and len(running) >= max_parallel:
        return f"Waiting for a free replication slot ({len(running)} of {max_parallel} running)"
    return None
