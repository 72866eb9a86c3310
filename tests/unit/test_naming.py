"""Naming schemas: what is accepted, and that names round-trip to the time they were made for."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middlewared_plugin.snapshots.naming import (
    AmbiguousSnapshotName,
    compile_name_regex,
    format_snapshot_name,
    name_regex_matches,
    naming_schema_errors,
    parse_snapshot_name,
    parse_snapshot_names,
)

VALID_SCHEMAS = [
    "auto-%Y-%m-%d_%H-%M",
    "%Y%m%d%H%M",
    "daily %Y.%m.%d %H:%M:%S",
    "auto-%Y-%m-%d_%H-%M%z",
    "hourly_%d-%m-%Y_%H%M_%b",
]


@pytest.mark.parametrize("schema", VALID_SCHEMAS + ["%s", "snap-%s"])
def test_valid_schemas_have_no_errors(schema: str):
    assert naming_schema_errors(schema) == []


@pytest.mark.parametrize(("schema", "message"), [
    ("auto-%m-%d_%H-%M", "%Y must be present in snapshot naming schema"),
    ("auto-%Y-%m-%d_%H", "%M must be present in snapshot naming schema"),
    ("auto@%Y-%m-%d_%H-%M", "@ is not an allowed character in ZFS snapshot name"),
    ("a/b+%Y-%m-%d_%H-%M", 'Characters "/", "+" are not allowed in ZFS snapshot name'),
    # Each offending character once, in order, quoted: "$(////)" used to come back verbatim.
    ("$(////)%Y-%m-%d_%H-%M", 'Characters "$", "(", "/", ")" are not allowed in ZFS snapshot name'),
    ("a//%Y-%m-%d_%H-%M", "/ is not an allowed character in ZFS snapshot name"),
    ("100%%-%Y-%m-%d_%H-%M", "% is not an allowed character in ZFS snapshot name"),
    ("%s-%Y", "No other placeholder can be used with %s in naming schema"),
    ("a--%Y-%m-%d_%H-%M%z", "%z and `--` can't be present in snapshot naming schema at the same time. "
                            "ZFS snapshot names can't contain `+` so we use `--` instead."),
])
def test_invalid_schemas_are_explained(schema: str, message: str):
    assert naming_schema_errors(schema)[0] == message


def test_a_schema_that_does_not_round_trip_is_refused():
    # A trailing 12-hour field overrides %H when parsing: 19:40 would come back as 07:40.
    errors = naming_schema_errors("%Y-%m-%d_%H-%M-%I")
    assert len(errors) == 1
    assert errors[0].startswith("Failed to parse datetime using provided format")
    assert "parsed=2000-02-29T07:40:00" in errors[0]


def test_utc_offset_is_written_with_double_dash_and_read_back():
    when = datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    name = format_snapshot_name("auto-%Y-%m-%d_%H-%M%z", when)
    assert name == "auto-2024-03-01_12-30--0200"
    parsed = parse_snapshot_name(name, "auto-%Y-%m-%d_%H-%M%z")
    assert parsed is not None
    assert parsed.datetime == datetime(2024, 3, 1, 12, 30)
    assert parsed.tzinfo is not None and parsed.tzinfo.utcoffset(None) == timedelta(hours=2)


def test_legacy_colon_offset_names_still_parse():
    parsed = parse_snapshot_name("auto-2024-03-01_12-30:0200", "auto-%Y-%m-%d_%H-%M%z")
    assert parsed is not None and parsed.tzinfo.utcoffset(None) == timedelta(hours=2)


def test_names_not_matching_the_whole_schema_are_none():
    assert parse_snapshot_name("auto-2024-03-01_12-30-extra", "auto-%Y-%m-%d_%H-%M") is None
    assert parse_snapshot_name("manual-2024-03-01_12-30", "auto-%Y-%m-%d_%H-%M") is None
    assert parse_snapshot_name("snap-12x", "snap-%s") is None


def test_epoch_schema_treats_other_characters_literally():
    parsed = parse_snapshot_name("s.1700000000", "s.%s")
    assert parsed is not None and parsed.datetime == datetime.fromtimestamp(1700000000)
    assert parse_snapshot_name("sx1700000000", "s.%s") is None  # "." is not a regex wildcard


def test_names_read_by_two_schemas_as_different_times_are_ambiguous():
    with pytest.raises(AmbiguousSnapshotName, match="parsed ambiguously"):
        parse_snapshot_names(["2024-01-02-03-04"], ["%Y-%m-%d-%H-%M", "%Y-%d-%m-%H-%M"])
    # The same time under two schemas is not a conflict; a name matching none is left out.
    parsed = parse_snapshot_names(["2024-01-01-03-04", "other"], ["%Y-%m-%d-%H-%M", "%Y-%d-%m-%H-%M"])
    assert list(parsed) == ["2024-01-01-03-04"]




def test_sort_key_orders_by_time_then_offset():
    schema = "auto-%Y-%m-%d_%H-%M%z"
    east = parse_snapshot_name("auto-2024-01-01_10-00--0200", schema)
    west = parse_snapshot_name("auto-2024-01-01_10-00-0500", schema)
    later = parse_snapshot_name("auto-2024-01-01_10-01--0200", schema)
    assert sorted([later, west, east], key=lambda p: p.sort_key) == [east, west, later]


def test_name_regex_is_anchored_at_both_ends():
    assert name_regex_matches("auto-123", "auto-[0-9]+")
    assert not name_regex_matches("xauto-123", "auto-[0-9]+")
    assert not name_regex_matches("auto-123x", "auto-[0-9]+")
    assert name_regex_matches("b", "a|b")  # alternation stays inside the anchors
    with pytest.raises(ValueError, match="Invalid regex"):
        compile_name_regex("(")


naive_times = st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(schema=st.sampled_from(VALID_SCHEMAS), when=naive_times, tz=offsets)
def test_format_then_parse_round_trips(schema: str, when: datetime, tz: timezone):
    name = format_snapshot_name(schema, when.replace(tzinfo=tz))
    parsed = parse_snapshot_name(name, schema)
    assert parsed is not None, name
    precision = when if "%S" in schema else when.replace(second=0)
    assert parsed.datetime == precision
    assert "+" not in name
    if "%z" in schema:
        assert parsed.tzinfo is not None and parsed.tzinfo.utcoffset(None) == tz.utcoffset(None)


@given(schema=st.sampled_from(VALID_SCHEMAS), times=st.lists(naive_times, min_size=2, max_size=8, unique=True))
def test_name_order_follows_time_order(schema: str, times: list[datetime]):
    names = [format_snapshot_name(schema, t.replace(tzinfo=UTC)) for t in times]
    parsed = parse_snapshot_names(names, [schema])
    by_name = sorted(parsed.values(), key=lambda p: p.sort_key)
    assert [p.datetime for p in by_name] == sorted(p.datetime for p in parsed.values())
