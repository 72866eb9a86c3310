"""Snapshot naming schemas (strftime patterns such as `auto-%Y-%m-%d_%H-%M`): validate, format, parse.

Behaviour follows zettarepl so that TrueNAS snapshots keep working: a snapshot's time comes from its
name (naive wall-clock time of the configured timezone); `%z` offsets are written with `--` instead of
`+` (ZFS names cannot hold `+`), and legacy names that used `:` for `+` are still read; `%s` schemas hold
epoch seconds. Names matching no schema are invisible to the engine, names that two schemas read as
different times are refused (`AmbiguousSnapshotName`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo

from middlewared_plugin.zfs.names import characters_message, disallowed_characters

REQUIRED_DIRECTIVES = ("%Y", "%m", "%d", "%H", "%M")


class AmbiguousSnapshotName(ValueError):
    """One name parses to different times under two schemas; callers skip the dataset or fail the task."""


@dataclass(frozen=True)
class ParsedName:
    name: str
    schema: str
    #: Naive wall-clock time from the name; all ordering and retention use this value.
    datetime: datetime
    #: The offset from `%z`, if the schema has one.
    tzinfo: tzinfo | None = None

    @property
    def sort_key(self) -> tuple:
        """Oldest first; for equal times naive before aware, larger UTC offset first (it was taken first)."""
        offset = self.tzinfo.utcoffset(None).total_seconds() if self.tzinfo is not None else 0.0
        return (self.datetime, self.tzinfo is not None, -offset, self.name)


def has_utc_offset(schema: str) -> bool:
    return re.search(r"(^|[^%])%z", schema) is not None


def naming_schema_errors(schema: str) -> list[str]:
    """Why `schema` is unusable (empty list when it is fine). Messages are TrueNAS's/zettarepl's."""
    if "%%" in schema:
        return ["% is not an allowed character in ZFS snapshot name"]
    # A schema is a snapshot name component with strftime's `%` directives in it.
    if bad := disallowed_characters(schema, also_allowed="%"):
        if len(set(bad)) == 1:
            return [f"{bad[0]} is not an allowed character in ZFS snapshot name"]
        return [f"{characters_message(bad)} in ZFS snapshot name"]
    if "%s" in schema:
        if re.search(r"%[^s]", schema):
            return ["No other placeholder can be used with %s in naming schema"]
        return []
    errors = [f"{d} must be present in snapshot naming schema" for d in REQUIRED_DIRECTIVES if d not in schema]
    if errors:
        return errors
    if has_utc_offset(schema) and "--" in schema:
        return ["%z and `--` can't be present in snapshot naming schema at the same time. "
                "ZFS snapshot names can't contain `+` so we use `--` instead."]
    return _round_trip_errors(schema)


def _round_trip_errors(schema: str) -> list[str]:
    # A leap day late in the evening on both sides of UTC catches %I without %p, %y ambiguity and the like.
    for offset in (10, -10):
        when = datetime(2000, 2, 29, 19, 40, tzinfo=timezone(timedelta(hours=offset)))
        formatted = format_snapshot_name(schema, when)
        parsed = parse_snapshot_name(formatted, schema)
        if parsed is None or parsed.datetime != when.replace(tzinfo=None) or (
            has_utc_offset(schema) and (parsed.tzinfo is None or parsed.tzinfo.utcoffset(None) != when.utcoffset())
        ):
            return [f"Failed to parse datetime using provided format: datetime={when.isoformat()}, "
                    f"formatted={formatted}, parsed={parsed.datetime.isoformat() if parsed else None}"]
    return []


def format_snapshot_name(schema: str, when: datetime) -> str:
    """The snapshot name for `when` (aware if the schema has %z)."""
    return when.strftime(schema).replace("+", "--")


def _epoch_pattern(schema: str) -> re.Pattern[str]:
    return re.compile("(?P<s>[0-9]+)".join(re.escape(part) for part in schema.split("%s")))


def parse_snapshot_name(name: str, schema: str) -> ParsedName | None:
    """The time a name encodes under `schema`, or None when the whole name does not match it."""
    if "%s" in schema:
        m = _epoch_pattern(schema).fullmatch(name)
        if m is None:
            return None
        # Local time, as strftime("%s") formatted it.
        return ParsedName(name, schema, datetime.fromtimestamp(int(m.group("s"))))
    text = name
    if has_utc_offset(schema):
        text = text.replace("--", "+") if "--" in text else text.replace(":", "+")
    try:
        parsed = datetime.strptime(text, schema)
    except ValueError:
        return None
    return ParsedName(name, schema, parsed.replace(tzinfo=None), parsed.tzinfo)


def parse_snapshot_names(names: Iterable[str], schemas: Iterable[str]) -> dict[str, ParsedName]:
    """Names that match any schema -> parsed value. Raises AmbiguousSnapshotName for conflicting times."""
    schemas = list(schemas)
    parsed: dict[str, ParsedName] = {}
    for name in names:
        for schema in schemas:
            p = parse_snapshot_name(name, schema)
            if p is None:
                continue
            seen = parsed.get(name)
            if seen is None:
                parsed[name] = p
            elif seen.datetime != p.datetime:
                raise AmbiguousSnapshotName(
                    f"Snapshot name {name} was parsed ambiguously: as {seen.datetime} with naming schema "
                    f"{seen.schema}, and as {p.datetime} with naming schema {schema}"
                )
    return parsed


_SAMPLE_TIMES = [
    datetime(2001, 2, 3, 4, 5, 6), datetime(2012, 11, 10, 9, 8, 7), datetime(2024, 12, 31, 23, 59, 58),
    datetime(2030, 1, 12, 13, 1, 2),
]


def compile_name_regex(regex: str) -> re.Pattern[str]:
    """A `name_regex` as zettarepl applies it: anchored at both ends. Raises ValueError if invalid."""
    try:
        return re.compile(f"(?:{regex})")
    except re.error as e:
        raise ValueError(f"Invalid regex: {e}") from None


def name_regex_matches(name: str, regex: str | re.Pattern[str]) -> bool:
    pattern = compile_name_regex(regex) if isinstance(regex, str) else regex
    return pattern.fullmatch(name) is not None
