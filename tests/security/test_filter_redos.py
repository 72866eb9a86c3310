"""Issue 11 item 8: a `~` query filter cannot freeze the server (ReDoS).

`(a+)+$` against "a" * N + "!" makes a backtracking engine (Python's `re`) take time doubling with every
character; with N = 26 it froze the whole server for seconds. Filters run on RE2 (linear time): the
filter answers at once and a concurrent `core.ping` on another connection is answered meanwhile. The bound
the test allows is a quarter of what the backtracking engine itself needs for that input on this machine.
"""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.errors import ValidationErrors
from tests.fixtures.server import TestServer

PATTERN = "(a+)+$"
N = 26
SUBJECT = "a" * N + "!"


def backtracking_cost() -> float:
    """Seconds Python's `re` needs for SUBJECT, from a shorter run: each further character doubles it."""
    shorter = 18
    started = time.monotonic()
    assert re.match(PATTERN, "a" * shorter + "!") is None
    return (time.monotonic() - started) * 2 ** (N - shorter)


async def timed(call: asyncio.Future[object] | asyncio.Task[object], started: float) -> float:
    await call
    return time.monotonic() - started


async def test_pathological_filter_answers_fast_and_the_server_keeps_serving(server: TestServer) -> None:
    client = await server.client()
    other = await server.client()
    # A job whose own arguments hold the subject (core.bulk's description).
    await client.call("core.bulk", "core.ping", [], SUBJECT, job=True)
    bound = backtracking_cost() / 4

    started = time.monotonic()
    query = asyncio.create_task(client.call("core.get_jobs", [["arguments.2", "~", PATTERN]]))
    ping = asyncio.create_task(other.ping())
    query_took, ping_took = await asyncio.gather(timed(query, started), timed(ping, started))
    assert query.result() == []
    assert ping.result() == "pong"
    assert query_took < bound, f"the filter took {query_took:.2f}s (backtracking needs {4 * bound:.2f}s)"
    assert ping_took < bound, f"core.ping waited {ping_took:.2f}s behind the filter"
    # What the pattern can match, it still matches.
    [job] = await client.call("core.get_jobs", [["arguments.2", "~", "(a+)+!$"]])
    assert job["arguments"][2] == SUBJECT


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)a", "(?<!b)a"])
async def test_patterns_re2_cannot_run_are_validation_errors(server: TestServer, pattern: str) -> None:
    client: Client = await server.client()
    await client.call("core.bulk", "core.ping", [], SUBJECT, job=True)
    for op in ("~", "C~"):
        with pytest.raises(ValidationErrors) as raised:
            await client.call("core.get_jobs", [["arguments.2", op, pattern]])
        [(attribute, message, _)] = raised.value.triples()
        assert attribute == "filters.0.2" and message.startswith("Invalid regular expression"), message
    assert await client.ping() == "pong"
