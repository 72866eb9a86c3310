"""Which replication tasks may run together."""
from __future__ import annotations

import asyncio

from middlewared_plugin.replication.admission import Footprint, blocking_reason, conflicts, overlaps
from middlewared_plugin.replication.slots import RunSlots


def fp(task_id, direction="PUSH", host="nas2", sources=("tank/a",), target="backup/a") -> Footprint:
    return Footprint(task_id, f"task{task_id}", direction, host, tuple(sources), target)


def test_overlap_means_same_or_nested_not_name_prefix():
    assert overlaps("tank/a", "tank/a")
    assert overlaps("tank", "tank/a/b")
    assert not overlaps("tank/a", "tank/ab")


def test_same_direction_conflicts_only_on_the_same_host_with_overlapping_targets():
    assert conflicts(fp(1, target="backup/a"), fp(2, target="backup/a/child"))
    assert not conflicts(fp(1, target="backup/a"), fp(2, target="backup/b"))
    assert not conflicts(fp(1, host="nas2"), fp(2, host="nas3"))


def test_push_and_pull_conflict_when_one_reads_what_the_other_writes():
    push = fp(1, "PUSH", sources=("tank/a",), target="remote/x")
    assert conflicts(push, fp(2, "PULL", sources=("other",), target="tank/a/restored"))
    assert conflicts(push, fp(3, "PULL", sources=("remote/x",), target="tank/b"))
    assert not conflicts(push, fp(4, "PULL", sources=("remote/y",), target="tank/b"))


def test_parallel_limit_gives_a_reason_with_counts():
    running = [fp(1, target="b/1"), fp(2, target="b/2")]
    assert blocking_reason(fp(3, target="b/3"), running, 2) == "Waiting for a free replication slot (2 of 2 running)"
    assert blocking_reason(fp(3, target="b/3"), running, 3) is None
    assert blocking_reason(fp(3, target="b/3"), running, None) is None


def test_conflict_reason_names_the_other_task():
    reason = blocking_reason(fp(3, target="b/1/x"), [fp(1, target="b/1")], None)
    assert reason is not None and "'task1'" in reason


async def test_a_waiting_run_starts_when_the_slot_frees_and_reports_its_reason():
    slots = RunSlots(max_parallel=1)
    reasons: list[str] = []
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with slots.slot(fp(1, target="b/1"), reasons.append):
            order.append("first started")
            await release.wait()
        order.append("first done")

    async def second() -> None:
        async with slots.slot(fp(2, target="b/2"), reasons.append):
            order.append("second started")

    one = asyncio.create_task(first())
    await asyncio.sleep(0.01)
    two = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert reasons == ["Waiting for a free replication slot (1 of 1 running)"]
    assert order == ["first started"]
    release.set()
    await asyncio.gather(one, two)
    assert order == ["first started", "first done", "second started"]


async def test_raising_the_limit_releases_waiters():
    slots = RunSlots(max_parallel=1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(fp(1, target="b/1"), lambda r: None):
            await hold.wait()

    started = asyncio.Event()

    async def waiter() -> None:
        async with slots.slot(fp(2, target="b/2"), lambda r: None):
            started.set()

    tasks = [asyncio.create_task(holder()), asyncio.create_task(waiter())]
    await asyncio.sleep(0.01)
    assert not started.is_set()
    await slots.set_max_parallel(2)
    await asyncio.wait_for(started.wait(), 1)
    hold.set()
    await asyncio.gather(*tasks)

