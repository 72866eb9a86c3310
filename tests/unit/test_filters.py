"""The query engine (reference §1.11): every operator, OR, ordering with nulls, select, count/get/offset/limit."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middlewared_plugin.errors import MatchNotFound, ValidationErrors
from middlewared_plugin.query.filters import MAX_LIMIT, filter_list, get_path, validate_options

TASKS = [
    {"id": 1, "name": "alpha", "direction": "PUSH", "enabled": True, "retries": 5, "comment": None,
     "source_datasets": ["tank/a", "tank/b"], "ssh_credentials": {"id": 7, "name": "nas2"},
     "state": {"state": "FINISHED", "datetime": datetime(2024, 1, 1, tzinfo=UTC)}},
    {"id": 2, "name": "Beta", "direction": "PULL", "enabled": False, "retries": 1, "comment": "nightly",
     "source_datasets": ["pool/x"], "ssh_credentials": {"id": 8, "name": "backup"},
     "state": {"state": "RUNNING", "datetime": datetime(2024, 6, 1, tzinfo=UTC)}},
    {"id": 3, "name": "gamma", "direction": "PUSH", "enabled": True, "retries": 3, "comment": "weekly",
     "source_datasets": [], "ssh_credentials": None,
     "state": {"state": "ERROR", "datetime": None}},
]


def ids(result: list[dict]) -> list[int]:
    return [item["id"] for item in result]


@pytest.mark.parametrize(("the_filter", "expected"), [
    (["id", "=", 2], [2]),
    (["comment", "=", None], [1]),
    (["direction", "!=", "PUSH"], [2]),
    (["retries", ">", 3], [1]),
    (["retries", ">=", 3], [1, 3]),
    (["retries", "<", 3], [2]),
    (["retries", "<=", 3], [2, 3]),
    (["name", "~", "^[a-g]"], [1, 3]),
    (["name", "~", "eta$"], []),          # ~ is re.match: anchored at the start
    (["comment", "~", ".*ly"], [2, 3]),   # a null string field matches as ""
    (["direction", "in", ["PULL", "LOCAL"]], [2]),
    (["direction", "nin", ["PULL", "LOCAL"]], [1, 3]),
    (["comment", "nin", ["weekly"]], [2]),  # null never matches nin
    (["source_datasets", "rin", "tank/b"], [1]),
    (["source_datasets", "rnin", "tank/b"], [2, 3]),
    (["name", "^", "al"], [1]),
    (["name", "!^", "al"], [2, 3]),
    (["name", "$", "ma"], [3]),
    (["name", "!$", "ma"], [1, 2]),
    (["comment", "^", "n"], [2]),          # null never matches a string operator
    (["comment", "!^", "n"], [3]),
    (["name", "C=", "BETA"], [2]),
    (["name", "C^", "b"], [2]),
    (["name", "C~", "^B\\w+A$"], [2]),
    (["direction", "Cin", ["pull"]], [2]),
])
def test_each_operator(the_filter, expected):
    assert ids(filter_list(TASKS, [the_filter], {})) == expected


@pytest.mark.parametrize(("the_filter", "expected"), [
    (["ssh_credentials.id", "=", 8], [2]),
    (["ssh_credentials.name", "^", "n"], [1]),
    (["state.state", "in", ["RUNNING", "ERROR"]], [2, 3]),
    (["source_datasets.0", "=", "pool/x"], [2]),
    (["source_datasets.*", "^", "tank/"], [1]),
    (["state.datetime", ">", datetime(2024, 3, 1, tzinfo=UTC)], [2]),
    (["state.datetime.$date", "=", 1704067200000], [1]),
    (["no_such_field", "=", None], []),        # a missing key never matches, not even null
    (["ssh_credentials.id", "!=", 7], [2]),    # ... nor through a null parent
])
def test_dotted_paths(the_filter, expected):
    assert ids(filter_list(TASKS, [the_filter], {})) == expected


def test_escaped_dot_reaches_a_key_containing_a_dot():
    assert get_path({"a.b": 1, "a": {"b": 2}}, "a\\.b") == 1
    assert get_path({"a.b": 1, "a": {"b": 2}}, "a.b") == 2


def test_incomparable_values_do_not_match_instead_of_raising():
    assert ids(filter_list(TASKS, [["comment", ">", 3]], {})) == []
    assert ids(filter_list(TASKS, [["name", "rin", 3]], {})) == []


def test_filters_are_a_conjunction():
    assert ids(filter_list(TASKS, [["enabled", "=", True], ["retries", "<", 5]], {})) == [3]


def test_or_is_a_disjunction():
    f = ["OR", [["id", "=", 1], ["name", "=", "gamma"]]]
    assert ids(filter_list(TASKS, [f], {})) == [1, 3]


def test_or_branch_that_is_a_list_of_filters_is_a_conjunction():
    f = ["OR", [[["direction", "=", "PUSH"], ["retries", "<", 5]], ["id", "=", 2]]]
    assert ids(filter_list(TASKS, [f], {})) == [2, 3]


def test_nested_or_combined_with_and():
    f = ["OR", [["id", "=", 1], ["OR", [["id", "=", 2], ["id", "=", 3]]]]]
    assert ids(filter_list(TASKS, [f, ["enabled", "=", True]], {})) == [1, 3]


@pytest.mark.parametrize(("order_by", "expected"), [
    (["id"], [1, 2, 3]),
    (["-id"], [3, 2, 1]),
    (["name"], [2, 1, 3]),                       # plain string order: "Beta" < "alpha"
    (["direction", "-retries"], [2, 1, 3]),      # first key is primary
    (["-direction", "retries"], [3, 1, 2]),
    (["comment"], [1, 2, 3]),                    # nulls first ascending (SQLite)
    (["-comment"], [3, 2, 1]),                   # nulls last descending
    (["nulls_last:comment"], [2, 3, 1]),
    (["nulls_first:-comment"], [1, 3, 2]),
    (["nulls_last:ssh_credentials.id"], [1, 2, 3]),
    (["nulls_first:ssh_credentials.id"], [3, 1, 2]),
    (["nulls_last:-state.datetime"], [2, 1, 3]),
])
def test_order_by(order_by, expected):
    assert ids(filter_list(TASKS, [], {"order_by": order_by})) == expected


def test_ordering_is_stable_for_equal_keys():
    assert ids(filter_list(TASKS, [], {"order_by": ["direction"]})) == [2, 1, 3]


def test_order_by_incomparable_values_is_a_validation_error():
    with pytest.raises(ValidationErrors) as e:
        filter_list([{"id": 1, "x": 1}, {"id": 2, "x": "a"}], [], {"order_by": ["x"]})
    assert "not comparable" in str(e.value)


def test_select_keeps_fields_and_dotted_sub_keys():
    rows = filter_list(TASKS, [["id", "<", 3]], {"select": ["id", "ssh_credentials.name", "state.state"]})
    assert rows == [
        {"id": 1, "ssh_credentials": {"name": "nas2"}, "state": {"state": "FINISHED"}},
        {"id": 2, "ssh_credentials": {"name": "backup"}, "state": {"state": "RUNNING"}},
    ]


def test_select_skips_missing_fields_and_supports_renaming():
    rows = filter_list(TASKS, [["id", "=", 3]], {"select": ["ssh_credentials.name", ["name", "label"]]})
    assert rows == [{"label": "gamma"}]


def test_order_applies_to_fields_not_selected():
    rows = filter_list(TASKS, [], {"select": ["name"], "order_by": ["-retries"]})
    assert rows == [{"name": "alpha"}, {"name": "gamma"}, {"name": "Beta"}]


def test_count_counts_matches():
    assert filter_list(TASKS, [["enabled", "=", True]], {"count": True}) == 2
    assert filter_list(TASKS, [], {"count": True, "limit": 1}) == 3


def test_get_returns_first_match_after_ordering():
    assert filter_list(TASKS, [["enabled", "=", True]], {"get": True})["id"] == 1
    assert filter_list(TASKS, [], {"get": True, "order_by": ["-id"]})["id"] == 3
    assert filter_list(TASKS, [["id", "=", 2]], {"get": True, "select": ["name"]}) == {"name": "Beta"}


def test_get_without_match_raises_match_not_found():
    with pytest.raises(MatchNotFound):
        filter_list(TASKS, [["id", "=", 99]], {"get": True})


@pytest.mark.parametrize(("options", "expected"), [
    ({"offset": 1}, [2, 3]),
    ({"limit": 2}, [1, 2]),
    ({"offset": 1, "limit": 1}, [2]),
    ({"limit": 0}, [1, 2, 3]),
    ({"offset": 5}, []),
    ({"offset": 1, "order_by": ["-id"]}, [2, 1]),
])
def test_offset_and_limit(options, expected):
    assert ids(filter_list(TASKS, [], options)) == expected


def test_no_filters_no_options_returns_everything_as_a_new_list():
    result = filter_list(TASKS, None, None)
    assert result == TASKS and result is not TASKS


@pytest.mark.parametrize(("filters", "attribute", "message"), [
    ([["id", "==", 1]], "filters.0.1", "Invalid operation: '=='"),
    ([["id", "="]], "filters.0.0", "Invalid conjunction"),
    ([["id", "=", 1, 2]], "filters.0", "Filter must have 3 items"),
    ([["AND", [["id", "=", 1]]]], "filters.0.0", "Invalid conjunction 'AND'"),
    ([["OR", []]], "filters.0.1", "non-empty list"),
    ([["OR", [["id", "===", 1]]]], "filters.0.1.0.1", "Invalid operation"),
    ([[1, "=", 1]], "filters.0.0", "non-empty string"),
    ([["name", "~", "("]], "filters.0.2", "Invalid regular expression"),
    ([["name", "^", 1]], "filters.0.2", "needs a string value"),
    ([["id", "in", 1]], "filters.0.2", "needs a list value"),
    (["id"], "filters.0", "Filter must be a list"),
    ({"id": 1}, "filters", "Filters must be a list"),
])
def test_malformed_filters_are_validation_errors(filters, attribute, message):
    with pytest.raises(ValidationErrors) as e:
        filter_list(TASKS, filters, {})
    assert attribute in e.value
    assert message in str(e.value)


def test_hostile_nesting_is_refused():
    f: list = ["id", "=", 1]
    for _ in range(20):
        f = ["OR", [f]]
    with pytest.raises(ValidationErrors, match="nested too deeply"):
        filter_list(TASKS, [f], {})


@pytest.mark.parametrize(("options", "attribute", "message"), [
    ({"bogus": 1}, "options.bogus", "Extra inputs are not permitted"),
    ({"limit": MAX_LIMIT + 1}, "options.limit", "less than or equal to 10000"),
    ({"offset": -1}, "options.offset", "greater than or equal to 0"),
    ({"count": "yes"}, "options.count", "Input should be a valid boolean"),
    ({"limit": "5"}, "options.limit", "Input should be a valid integer"),   # strict: no coercion
    ({"order_by": "id"}, "options.order_by", "Input should be a valid list"),
    ({"order_by": ["-"]}, "options.order_by.0", "does not name a field"),
    ({"select": [["a"]]}, "options.select.0", "[field, new_name]"),
])
def test_malformed_options_are_validation_errors(options, attribute, message):
    with pytest.raises(ValidationErrors) as e:
        filter_list(TASKS, [], options)
    assert attribute in e.value
    assert message in str(e.value)


def test_known_options_are_accepted_and_extra_is_ignored_here():
    opts = validate_options({"extra": {"raw_result": True}, "force_sql_filters": True, "relationships": False})
    assert opts.extra == {"raw_result": True}
    assert ids(filter_list(TASKS, [], opts)) == [1, 2, 3]


rows_strategy = st.lists(
    st.fixed_dictionaries({"id": st.integers(0, 50), "v": st.none() | st.integers(-5, 5)}), max_size=30,
)


@given(rows_strategy, st.integers(-6, 6))
def test_property_filter_partitions_rows(rows, threshold):
    """`>` and `<=` split the non-null rows exactly; nulls fall in neither."""
    above = filter_list(rows, [["v", ">", threshold]], {})
    at_or_below = filter_list(rows, [["v", "<=", threshold]], {})
    assert len(above) + len(at_or_below) == sum(r["v"] is not None for r in rows)
    assert all(r["v"] > threshold for r in above)
    assert filter_list(rows, [["OR", [["v", ">", threshold], ["v", "<=", threshold]]]], {"count": True}) == \
        len(above) + len(at_or_below)


@given(rows_strategy, st.booleans(), st.booleans(), st.integers(0, 10), st.integers(0, 10))
def test_property_ordering_and_paging(rows, reverse, nulls_first, offset, limit):
    key = ("nulls_first:" if nulls_first else "nulls_last:") + ("-v" if reverse else "v")
    ordered = filter_list(rows, [], {"order_by": [key]})
    values = [r["v"] for r in ordered]
    nulls = [v for v in values if v is None]
    present = [v for v in values if v is not None]
    assert values == (nulls + present if nulls_first else present + nulls)
    assert present == sorted(present, reverse=reverse)
    page = filter_list(rows, [], {"order_by": [key], "offset": offset, "limit": limit})
    assert page == (ordered[offset:offset + limit] if limit else ordered[offset:])
