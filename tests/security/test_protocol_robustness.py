"""Issue 11 items 9 and 10: odd messages get JSON-RPC answers (never a 1011 close), with the caller's id when it
has a valid one; nobody who has not logged in sees a traceback; bad messages cost one budgeted log line each.

Raw frames over a real WebSocket to the in-process server, before and after login, on `/api/current` and on the
legacy `/websocket`.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect

from middlewared_plugin.protocol import connection
from tests.fixtures.server import TestServer
from tests.integration.protocol.conftest import Raw

#: Extended-JSON values no datetime/set/date can be made of, and the reason's start.
BAD_VALUES = [
    pytest.param({"$set": [[1]]}, "$set members", id="set-of-lists"),
    pytest.param({"$set": [{"a": 1}]}, "$set members", id="set-of-objects"),
    pytest.param({"$date": 1e300}, "$date", id="date-out-of-range"),
    pytest.param({"$date": -(10 ** 30)}, "$date", id="date-before-year-1"),
    pytest.param({"$time": "25:99"}, "$time", id="time-out-of-range"),
    pytest.param({"$type": "date", "$value": 5}, "$value", id="date-not-a-string"),
    pytest.param({"$type": "date", "$value": "2020-13-45"}, "$value", id="date-out-of-range"),
]
DEEP = 100


async def open_raw(server: TestServer, *, login: bool) -> Raw:
    peer = Raw(await connect(server.url, max_size=None))
    if login:
        await peer.login()
    return peer


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def answer_to(peer: Raw, text: str) -> dict[str, Any]:
    await peer.send(text)
    return await peer.recv()


async def assert_still_serving(peer: Raw) -> None:
    assert (await peer.call("core.ping"))["result"] == "pong"


@pytest.mark.parametrize("login", [False, True], ids=["anonymous", "logged-in"])
@pytest.mark.parametrize("value, reason", BAD_VALUES)
async def test_item9_a_bad_extended_json_argument_is_invalid_params_with_the_callers_id(
    server: TestServer, login: bool, value: Any, reason: str,
) -> None:
    peer = await open_raw(server, login=login)
    answer = await peer.call("core.set_options", {"legacy_jobs": value}, id="mine")
    assert answer["id"] == "mine"
    assert answer["error"]["code"] == -32602
    [[attribute, message, errno_]] = answer["error"]["data"]["extra"]
    assert (attribute, errno_) == ("options.legacy_jobs", 22)
    assert message.startswith(reason)
    await assert_still_serving(peer)


@pytest.mark.parametrize("login", [False, True], ids=["anonymous", "logged-in"])
async def test_item9_deep_nesting_and_huge_integers_in_arguments_are_invalid_params(
    server: TestServer, login: bool,
) -> None:
    peer = await open_raw(server, login=login)
    deep = await peer.call("core.set_options", {"x": nested(DEEP)}, id=1)
    assert deep["id"] == 1 and deep["error"]["code"] == -32602
    assert "nested too deeply" in deep["error"]["data"]["reason"]
    # 5000 digits: more than Python converts, so json.loads alone refuses the whole message.
    huge = await answer_to(peer, '{"jsonrpc": "2.0", "id": 2, "method": "core.set_options", "params": [{"x": '
                                 + "9" * 5000 + "}]}")
    assert huge["id"] == 2 and huge["error"]["code"] == -32602
    assert huge["error"]["data"]["extra"][0][0] == "options.x"
    await assert_still_serving(peer)


@pytest.mark.parametrize("login", [False, True], ids=["anonymous", "logged-in"])
@pytest.mark.parametrize("frame", [
    pytest.param('{"$set": [[1]]}', id="set-of-lists"),
    pytest.param('{"$date": 1e300}', id="date-out-of-range"),
    pytest.param('{"$type": "date", "$value": 5}', id="date-not-a-string"),
    pytest.param("[" * 1000 + "]" * 1000, id="1000-levels"),
    pytest.param("[" * 4000 + "]" * 4000, id="4000-levels"),
    pytest.param('{"jsonrpc": "2.0", "method": "core.ping", "x": ' + "[" * 800 + "]" * 800 + "}", id="deep-member"),
])
async def test_item9_odd_whole_messages_never_close_the_connection(server: TestServer, login: bool, frame: str) -> None:
    peer = await open_raw(server, login=login)
    await peer.send(frame)
    # An object without an id is a notification (no answer); anything else is answered with id null.
    if frame.startswith("["):
        answer = await peer.recv()
        assert answer["id"] is None and answer["error"]["code"] in (-32700, -32600)
    await assert_still_serving(peer)


@pytest.mark.parametrize("frame", ["1", '"x"', "null", "true", "[]", "3.5"])
async def test_item9_a_message_that_is_not_an_object_gets_32600_with_null_id(server: TestServer, frame: str) -> None:
    peer = await open_raw(server, login=False)
    answer = await answer_to(peer, frame)
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    await assert_still_serving(peer)


@pytest.mark.parametrize("id_", [True, False, 1.5, {}, [1], {"$date": 0}])
async def test_item9_an_invalid_id_is_not_echoed(server: TestServer, id_: Any) -> None:
    peer = await open_raw(server, login=False)
    answer = await answer_to(peer, json.dumps({"jsonrpc": "2.0", "id": id_, "method": "core.ping"}))
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    await assert_still_serving(peer)


async def test_item9_a_5000_digit_id_is_invalid_not_a_parse_error(server: TestServer) -> None:
    peer = await open_raw(server, login=False)
    answer = await answer_to(peer, '{"jsonrpc": "2.0", "id": ' + "1" * 5000 + ', "method": "core.ping"}')
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    await assert_still_serving(peer)


async def test_item9_legacy_websocket_bad_values_are_validation_errors(server: TestServer) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/websocket", max_size=None) as ws:
        async def exchange(message: dict[str, Any] | str) -> dict[str, Any]:
            await ws.send(message if isinstance(message, str) else json.dumps(message))
            return json.loads(await ws.recv())

        assert (await exchange('{"$set": [[1]]}'))["msg"] == "failed"  # not connected yet
        assert (await exchange({"msg": "connect", "version": "1", "support": ["1"]}))["msg"] == "connected"
        assert (await exchange('{"$date": 1e300}'))["msg"] == "error"
        assert (await exchange("[" * 2000 + "]" * 2000))["msg"] == "error"
        assert (await exchange('"x"'))["reason"] == "Bad request"
        # Echoed as offendingMessage: nests as deep as JSON parses, and still gets an answer.
        assert (await exchange("[" * 900 + "]" * 900))["msg"] == "error"
        for param in BAD_VALUES:
            answer = await exchange({"msg": "method", "id": "v", "method": "core.set_options",
                                     "params": [{"legacy_jobs": param.values[0]}]})
            assert answer["id"] == "v" and answer["error"]["type"] == "VALIDATION", answer
            assert answer["error"]["trace"] is None  # not logged in
        assert (await exchange({"msg": "ping", "id": "p"})) == {"msg": "pong", "id": "p"}


# Item 10 -------------------------------------------------------------------------------------------------

async def test_item10_no_error_before_login_carries_a_traceback(server: TestServer) -> None:
    peer = await open_raw(server, login=False)
    errors = [
        (await peer.call("core.get_jobs"))["error"],  # not authenticated
        (await peer.call("core.set_options", "not an object"))["error"],  # invalid params
        (await peer.call("core.set_options", {"legacy_jobs": {"$date": 1e300}}))["error"],
        (await peer.call("auth.login_ex", {"mechanism": "NO_SUCH_MECHANISM"}))["error"],
    ]
    for error in errors:
        data = error["data"]
        assert data.get("trace") is None, error
        assert "py_exception" not in data
    # Once logged in, method errors carry TrueNAS's trace object again; logged out, they do not.
    await peer.login()
    traced = (await peer.call("core.set_options", "not an object"))["error"]["data"]["trace"]
    assert traced["class"] == "ValidationErrors" and traced["formatted"].startswith("Traceback")
    assert (await peer.call("auth.logout"))["result"] is True
    assert (await peer.call("core.get_jobs"))["error"]["data"]["trace"] is None


async def test_item10_bad_messages_log_one_budgeted_line_each_and_no_traceback(
    server: TestServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    frames = ['{"$set": [[1]]}', '{"$date": 1e300}', "[" * 1200 + "]" * 1200, "1", "{", '{"jsonrpc": "1.0", "id": 1}']
    peers = [await open_raw(server, login=False) for _ in range(3)]
    for _ in range(40):
        for peer in peers:
            for frame in frames:
                await peer.send(frame)
    for peer in peers:
        await assert_still_serving(peer)
    records = [r for r in caplog.records if r.name.startswith(("middlewared_plugin", "websockets"))
               and r.levelno >= logging.WARNING]
    budget = connection.bad_messages
    # 720 bad messages: the budget's lines at most (two windows' worth, the test may straddle one), each one
    # line without a traceback, and nothing at all from the websockets library (its 1011 tracebacks).
    assert len(records) <= 2 * (budget.lines + 1), [r.getMessage() for r in records]
    for record in records:
        assert record.name == "middlewared_plugin.protocol.connection", record.getMessage()
        assert record.exc_info is None
        assert "\n" not in record.getMessage()
