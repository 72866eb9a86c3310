"""Cron schedules and the minute scheduler, with a stepped clock."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.scheduling.schedule import Schedule, describe, validate_schedule
from middlewared_plugin.scheduling.scheduler import Scheduler

BERLIN = ZoneInfo("Europe/Berlin")


def test_truenas_defaults_run_hourly_on_the_hour():
    schedule = Schedule.from_api({})
    assert schedule.cron == "00 * * * *"
    assert schedule.matches(datetime(2026, 1, 1, 5, 0))
    assert not schedule.matches(datetime(2026, 1, 1, 5, 1))


def test_begin_end_window_limits_matches():
    schedule = Schedule.from_api({"minute": "*", "begin": "09:00", "end": "17:00"})
    assert schedule.matches(datetime(2026, 1, 1, 9, 0))
    assert schedule.matches(datetime(2026, 1, 1, 17, 0))
    assert not schedule.matches(datetime(2026, 1, 1, 17, 1))
    assert not schedule.matches(datetime(2026, 1, 1, 8, 59))


def test_window_wrapping_midnight():
    schedule = Schedule.from_api({"minute": "*", "begin": "22:00", "end": "02:00"})
    assert schedule.matches(datetime(2026, 1, 1, 23, 30))
    assert schedule.matches(datetime(2026, 1, 1, 1, 30))
    assert not schedule.matches(datetime(2026, 1, 1, 12, 0))


def test_next_run_skips_minutes_outside_the_window():
    schedule = Schedule.from_api({"minute": "0", "hour": "*", "begin": "10:00", "end": "11:00"})
    assert schedule.next_run(datetime(2026, 1, 1, 11, 30)) == datetime(2026, 1, 2, 10, 0)


def test_next_run_is_none_when_the_cron_never_fires_inside_the_window():
    schedule = Schedule.from_api({"minute": "0", "hour": "3", "begin": "10:00", "end": "11:00"})
    assert schedule.next_run(datetime(2026, 1, 1)) is None


def test_next_run_finds_rare_days():
    schedule = Schedule.from_api({"minute": "0", "hour": "0", "dom": "29", "month": "2"})
    assert schedule.next_run(datetime(2026, 3, 1)) == datetime(2028, 2, 29, 0, 0)


def test_description_in_words_24_hour():
    assert describe({"minute": "0", "hour": "0", "dom": "*", "month": "*", "dow": "0"}) == "At 00:00, only on Sunday"
    assert describe({"minute": "*/5", "begin": "09:00", "end": "17:00"}) == "Every 5 minutes, between 09:00 and 17:00"
    assert describe(None) is None


@pytest.mark.parametrize("schedule, attribute", [
    ({"minute": "61"}, "schedule"),
    ({"minute": "*", "hour": "x"}, "schedule"),
    ({"minute": "*", "begin": "25:99"}, "schedule.begin"),
])
def test_invalid_schedules_name_the_attribute(schedule, attribute):
    verrors = ValidationErrors()
    validate_schedule(verrors, "schedule", schedule)
    assert attribute in verrors


async def test_scheduler_steps_through_a_day_once_per_minute():
    fired: list[datetime] = []
    schedule = Schedule.from_api({"minute": "0", "hour": "*/6"})

    async def handler(minute: datetime) -> None:
        if schedule.matches(minute):
            fired.append(minute)

    scheduler = Scheduler(clock=lambda: datetime(2026, 1, 1))
    scheduler.add("test", handler)
    start = datetime(2026, 1, 1, tzinfo=BERLIN)
    for minutes in range(24 * 60):
        now = start + timedelta(minutes=minutes, seconds=7)
        await scheduler.tick(now)
        await scheduler.tick(now + timedelta(seconds=30))  # a second tick in the same minute fires nothing
    assert [m.hour for m in fired] == [0, 6, 12, 18]


async def test_missed_minutes_are_not_back_filled():
    seen: list[datetime] = []

    async def handler(minute: datetime) -> None:
        seen.append(minute)

    scheduler = Scheduler()
    scheduler.add("test", handler)
    await scheduler.tick(datetime(2026, 1, 1, 10, 0, tzinfo=BERLIN))
    await scheduler.tick(datetime(2026, 1, 1, 10, 5, tzinfo=BERLIN))
    assert [m.minute for m in seen] == [0, 5]


async def test_repeated_wall_clock_hour_at_dst_end_fires_once():
    fired: list[datetime] = []
    schedule = Schedule.from_api({"minute": "30", "hour": "2"})

    async def handler(minute: datetime) -> None:
        if schedule.matches(minute):
            fired.append(minute)

    scheduler = Scheduler()
    scheduler.add("test", handler)
    # 2026-10-25: Berlin clocks go from 03:00 CEST back to 02:00 CET, so 02:30 happens twice.
    start = datetime(2026, 10, 25, 0, 0, tzinfo=ZoneInfo("UTC"))
    for minutes in range(4 * 60):
        await scheduler.tick((start + timedelta(minutes=minutes)).astimezone(BERLIN))
    assert len(fired) == 1


async def test_a_failing_handler_does_not_stop_the_others():
    calls: list[str] = []

    async def broken(minute: datetime) -> None:
        raise RuntimeError("boom")

    async def healthy(minute: datetime) -> None:
        calls.append("healthy")

    scheduler = Scheduler()
    scheduler.add("broken", broken)
    scheduler.add("healthy", healthy)
    await scheduler.tick(datetime(2026, 1, 1, 10, 0, tzinfo=BERLIN))
    assert calls == ["healthy"]
