"""Issue 11 items 9 and 10, the pure parts: argument decoding never lets an internal exception out, and the log
budget bounds what clients can make the server log."""
from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from pydantic import field_validator

from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.protocol import ejson
from middlewared_plugin.protocol.connection import LogBudget
from middlewared_plugin.services.base import ApiModel, MethodSpec


class Lookup(ApiModel):
    key: str

    @field_validator("key")
    @classmethod
    def _known(cls, value: str) -> str:
        return {"a": "A"}[value]  # a KeyError for anything else: a validator bug pydantic passes on


async def _noop(*_: object) -> None: ...


def test_a_validator_that_raises_something_unplanned_gives_invalid_params() -> None:
    spec = MethodSpec("sample.lookup", _noop, Lookup, no_auth=True)
    assert spec.parse_params(["a"]) == ["A"]
    with pytest.raises(ValidationErrors) as raised:
        spec.parse_params(["b"])
    assert raised.value.triples() == [["", "Invalid value", 22]]
    assert isinstance(raised.value.__cause__, KeyError)  # kept for the logged-in caller's trace


def test_extended_json_is_decoded_with_a_path_to_what_is_wrong() -> None:
    assert ejson.decode([{"when": {"$date": 0}}]) == [{"when": datetime(1970, 1, 1, tzinfo=UTC)}]
    assert ejson.decode({"$set": [1, 1, "a"]}) == {1, "a"}
    with pytest.raises(ejson.DecodeError) as raised:
        ejson.decode({"a": [0, {"$set": [[1]]}]})
    assert raised.value.path == ["a", 1]
    with pytest.raises(ejson.DecodeError):
        ejson.decode(ejson.parse("[" * (ejson.MAX_DEPTH + 1) + "]" * (ejson.MAX_DEPTH + 1)))
    assert ejson.decode(ejson.parse("[" * ejson.MAX_DEPTH + "]" * ejson.MAX_DEPTH)) is not None
    # Too many digits for Python: still parses (so a request keeps its id), refused when decoded.
    huge = ejson.parse('{"id": 1, "params": [' + "9" * 5000 + "]}")
    assert huge["id"] == 1
    with pytest.raises(ejson.DecodeError, match="digits"):
        ejson.decode(huge["params"])


def test_the_log_budget_logs_at_most_its_lines_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="middlewared_plugin.protocol.connection")
    budget = LogBudget(lines=3, window=0.2)
    for i in range(50):
        budget.log(logging.WARNING, "bad message %d", i)
    assert [r.getMessage() for r in caplog.records] == ["bad message 0", "bad message 1", "bad message 2"]
    time.sleep(0.25)
    budget.log(logging.WARNING, "bad message %d", 50)
    assert [r.getMessage() for r in caplog.records[3:]] == [
        "47 more such messages were not logged (at most 3 every 0.2 s)", "bad message 50"]


def test_what_the_server_sends_may_nest_arguments_a_little_deeper() -> None:
    # A job record holds its (at most MAX_DEPTH deep) arguments inside a few levels of its own.
    record = {"fields": {"arguments": [ejson.parse("[" * ejson.MAX_DEPTH + "]" * ejson.MAX_DEPTH)]}}
    assert ejson.loads(ejson.dumps(record)) == record
