"""TrueNAS cron schedules: `{minute, hour, dom, month, dow, begin, end}`, matched with croniter and
described in words with cron-descriptor. Pure: no clock of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from cron_descriptor import ExpressionDescriptor, FormatException, MissingFieldException, Options
from croniter import CroniterBadCronError, croniter

from middlewared_plugin.errors import ValidationErrors

CRON_FIELDS = ("minute", "hour", "dom", "month", "dow")
DEFAULTS = {"minute": "00", "hour": "*", "dom": "*", "month": "*", "dow": "*"}


def _parse_hhmm(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True)
class Schedule:
    minute: str = "00"
    hour: str = "*"
    dom: str = "*"
    month: str = "*"
    dow: str = "*"
    begin: time = time(0, 0)
    end: time = time(23, 59)

    @classmethod
    def from_api(cls, value: dict[str, Any]) -> Schedule:
        fields = {k: str(value.get(k, DEFAULTS[k])) for k in CRON_FIELDS}
        return cls(
            **fields,
            begin=_parse_hhmm(value.get("begin") or "00:00"),
            end=_parse_hhmm(value.get("end") or "23:59"),
        )

    @property
    def cron(self) -> str:
        return " ".join(getattr(self, f) for f in CRON_FIELDS)

    def in_window(self, moment: datetime) -> bool:
        """Inside [begin, end]; a window whose end is before its begin wraps past midnight."""
        now = moment.time().replace(second=0, microsecond=0)
        if self.begin <= self.end:
            return self.begin <= now <= self.end
        return now >= self.begin or now <= self.end

    def matches(self, moment: datetime) -> bool:
        """Whether a task on this schedule runs in the minute of `moment` (local wall-clock time)."""
        return croniter.match(self.cron, moment.replace(second=0, microsecond=0)) and self.in_window(moment)

    def next_run(self, after: datetime) -> datetime | None:
        """The first firing strictly after `after` inside the begin/end window; None if it never fires there.

        Which days fire does not depend on the time of day, so every firing day has the same times: if any
        falls in the window, one does within two days' worth of firings (at most 1440 a day)."""
        firings = croniter(self.cron, after.replace(second=0, microsecond=0))
        for _ in range(2 * 24 * 60):
            candidate: datetime = firings.get_next(datetime)
            if self.in_window(candidate):
                return candidate
        return None

    def describe(self) -> str:
        options = Options()
        options.use_24hour_time_format = True
        text = ExpressionDescriptor(self.cron, options).get_description()
        if (self.begin, self.end) != (time(0, 0), time(23, 59)):
            text += f", between {self.begin:%H:%M} and {self.end:%H:%M}"
        return text


def validate_schedule(verrors: ValidationErrors, attribute: str, value: dict[str, Any] | None) -> None:
    """Add an error per invalid part of a schedule object."""
    if value is None:
        return
    for key in ("begin", "end"):
        text = value.get(key)
        if text is None:
            continue
        try:
            _parse_hhmm(str(text))
        except ValueError:
            verrors.add(f"{attribute}.{key}", "Time should be in HH:MM format")
    try:
        schedule = Schedule.from_api({k: v for k, v in value.items() if k in CRON_FIELDS})
        if not croniter.is_valid(schedule.cron):
            raise CroniterBadCronError(schedule.cron)
        schedule.describe()
    except (CroniterBadCronError, FormatException, MissingFieldException, ValueError) as exc:
        verrors.add(attribute, f"Invalid cron schedule: {exc}")


def describe(value: dict[str, Any] | None) -> str | None:
    """Words for an API schedule object, or None when there is none or it is invalid."""
    if not value:
        return None
    try:
        return Schedule.from_api(value).describe()
    except (CroniterBadCronError, FormatException, MissingFieldException, ValueError):
        return None
