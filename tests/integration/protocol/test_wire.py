"""The wire protocol (reference §1.2, §1.5): message validation, error objects, size limits, concurrency."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from middlewared_plugin.protocol.connection import MAX_EXECUTING_CALLS, MAX_INFLIGHT_CALLS
from tests.integration.protocol.conftest import Raw, Sampled

PING = {"jsonrpc": "2.0", "method": "core.ping", "params": []}


async def assert_still_serving(peer: Raw) -> None:
    assert (await peer.call("core.ping"))["result"] == "pong"


async def test_malformed_json_is_a_parse_error_with_null_id(raw, server) -> None:
    peer, other = await raw(), await raw()
    await peer.send('{"jsonrpc": "2.0", "id": 1, "method": ')
    answer = await peer.recv()
    assert answer["id"] is None
    assert answer["error"]["code"] == -32700
    await assert_still_serving(peer)
    await assert_still_serving(other)


@pytest.mark.parametrize("request_, reason", [
    ({"jsonrpc": "1.0", "id": 7, "method": "core.ping"}, "jsonrpc"),
    ({"id": 7, "method": "core.ping"}, "jsonrpc"),
    ({"jsonrpc": "2.0", "id": 7}, "method"),
    ({"jsonrpc": "2.0", "id": 7, "method": ""}, "method"),
    ({"jsonrpc": "2.0", "id": 7, "method": 5}, "method"),
    ({"jsonrpc": "2.0", "id": 7, "method": "core.ping", "params": {"a": 1}}, "params"),
    ({"jsonrpc": "2.0", "id": "seven", "method": "core.ping", "params": "x"}, "params"),
])
async def test_invalid_requests_answer_32600_with_the_request_id(raw, request_, reason) -> None:
    peer = await raw()
    await peer.send(request_)
    answer = await peer.recv()
    assert answer["id"] == request_["id"]
    assert answer["error"]["code"] == -32600
    assert reason in answer["error"]["message"]
    await assert_still_serving(peer)


async def test_an_id_that_is_a_list_is_rejected(raw) -> None:
    peer = await raw()
    await peer.send({"jsonrpc": "2.0", "id": [1], "method": "core.ping"})
    answer = await peer.recv()
    assert answer["error"]["code"] == -32600
    assert "id" in answer["error"]["message"]
    await assert_still_serving(peer)


@pytest.mark.parametrize("id_", [None, 0, 12, "abc"])
async def test_null_int_and_string_ids_are_accepted(raw, id_) -> None:
    peer = await raw()
    await peer.send({**PING, "id": id_})
    answer = await peer.recv()
    assert answer == {"jsonrpc": "2.0", "id": id_, "result": "pong"}


async def test_params_may_be_absent(raw) -> None:
    peer = await raw()
    await peer.send({"jsonrpc": "2.0", "id": 1, "method": "core.ping"})
    assert (await peer.recv())["result"] == "pong"


async def test_a_batch_is_rejected(raw) -> None:
    peer = await raw()
    await peer.send([{**PING, "id": 1}, {**PING, "id": 2}])
    answer = await peer.recv()
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    assert answer["error"]["message"] == "Batch messages are not supported at this time"
    await assert_still_serving(peer)


async def test_an_invalid_request_without_id_gets_no_answer(raw) -> None:
    peer = await raw()
    await peer.send({"jsonrpc": "1.0", "method": "core.ping"})
    await peer.send({"jsonrpc": "2.0", "method": ""})
    assert await peer.nothing_within(0.3)
    await assert_still_serving(peer)


async def test_unknown_method(raw) -> None:
    peer = await raw()
    answer = await peer.call("nothing.here", id="u1")
    assert answer["id"] == "u1"
    assert answer["error"]["code"] == -32601
    assert answer["error"]["message"] == "Method does not exist"
    await assert_still_serving(peer)


async def test_a_notification_is_executed_but_not_answered(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    await peer.send({"jsonrpc": "2.0", "method": "sample.record", "params": ["from-notification"]})
    assert await peer.nothing_within(0.3)
    assert sampled.svc.recorded == ["from-notification"]
    # A failing notification is not answered either.
    await peer.send({"jsonrpc": "2.0", "method": "sample.record", "params": [5]})
    await peer.send({"jsonrpc": "2.0", "method": "nothing.here", "params": []})
    assert await peer.nothing_within(0.3)
    await assert_still_serving(peer)


async def test_wrong_argument_types_give_32602_with_triples_and_paths(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    answer = await peer.call("sample.nested", {"count": "3", "labels": ["a", 2], "bogus": 1}, "yes")
    error = answer["error"]
    assert error["code"] == -32602
    assert error["message"] == "Invalid params"
    assert error["data"]["error"] == 22
    assert error["data"]["errname"] == "EINVAL"
    triples = {t[0]: t for t in error["data"]["extra"]}
    assert triples["data.count"] == ["data.count", "Input should be a valid integer", 22]
    assert triples["data.labels.1"] == ["data.labels.1", "Input should be a valid string", 22]
    assert triples["data.bogus"][1] == "Extra inputs are not permitted"
    assert triples["flag"][1] == "Input should be a valid boolean"
    assert "[EINVAL] data.count: Input should be a valid integer" in error["data"]["reason"].split("\n")
    missing = await peer.call("sample.nested")
    assert missing["error"]["data"]["extra"] == [["data", "Field required", 22]]
    await assert_still_serving(peer)


async def test_too_many_arguments(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    answer = await peer.call("sample.double", 1, 2)
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["reason"] == "[EINVAL] ALL: Too many arguments (expected 1, found 2)"
    assert answer["error"]["data"]["extra"] == [["", "Too many arguments (expected 1, found 2)", 22]]
    assert (await peer.call("sample.double", 21))["result"] == 42


async def test_call_error_data_shape(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    error = (await peer.call("sample.fail_plain", 13))["error"]
    assert error["code"] == -32001
    assert error["message"] == "Method call error"
    data = error["data"]
    assert data["error"] == 13
    assert data["errname"] == "EACCES"
    assert data["reason"] == "[EACCES] Sample failure"
    assert set(data["trace"]) == {"class", "formatted", "repr"}
    assert data["trace"]["class"] == "CallError"
    assert data["trace"]["formatted"].startswith("Traceback")
    assert "Sample failure" in data["trace"]["repr"]
    assert "extra" in data and data["extra"] is None


async def test_other_exceptions_are_einval_call_errors(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    error = (await peer.call("sample.crash"))["error"]
    assert error["code"] == -32001
    assert error["data"]["error"] == 22
    assert error["data"]["errname"] == "EINVAL"
    assert error["data"]["reason"] == "not a CallError"
    assert error["data"]["trace"]["class"] == "RuntimeError"


async def test_an_unserializable_result_is_32603(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    answer = await peer.call("sample.unserializable", id="bad-result")
    assert answer["id"] == "bad-result"
    assert answer["error"]["code"] == -32603
    assert answer["error"]["message"] == "Failed to JSON serialize server message"
    await assert_still_serving(peer)


async def test_custom_errno_names(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    data = (await peer.call("sample.fail_plain", 207))["error"]["data"]
    assert data["errname"] == "ENOTAUTHENTICATED"
    data = (await peer.call("sample.fail_plain", 9999))["error"]["data"]
    assert data["errname"] == "EUNKNOWN"


# Size limits and frame types ----------------------------------------------------------------------------

async def test_more_than_8_kib_before_login_closes_1007(raw) -> None:
    peer, other = await raw(), await raw()
    await peer.send({**PING, "id": 1, "pad": "x" * 8 * 1024})
    code, reason = await peer.closed()
    assert code == 1007
    assert reason == "Anonymous connection max message length is 8 kB"
    await assert_still_serving(other)


async def test_just_under_8_kib_before_login_is_served(raw) -> None:
    peer = await raw()
    message = json.dumps({**PING, "id": 1, "pad": ""})
    await peer.send(json.dumps({**PING, "id": 1, "pad": "x" * (8 * 1024 - len(message))}))
    assert (await peer.recv())["result"] == "pong"


async def test_after_login_64_kib_are_allowed_and_more_closes_1009(raw) -> None:
    peer, other = await raw(), await raw()
    await peer.login()
    await peer.send({**PING, "id": 1, "pad": "x" * 32 * 1024})
    assert (await peer.recv())["result"] == "pong"
    await peer.send({**PING, "id": 2, "pad": "x" * 64 * 1024})
    code, _ = await peer.closed()
    assert code == 1009
    await assert_still_serving(other)


async def test_a_binary_frame_closes_1003(raw) -> None:
    peer, other = await raw(), await raw()
    await peer.send(json.dumps({**PING, "id": 1}).encode())
    code, _ = await peer.closed()
    assert code == 1003
    await assert_still_serving(other)


# Concurrency --------------------------------------------------------------------------------------------

async def test_ten_calls_execute_twenty_in_flight_and_the_21st_is_refused(raw, sampled: Sampled) -> None:
    peer = await raw()
    await peer.login()
    for i in range(MAX_INFLIGHT_CALLS + 1):
        await peer.send({"jsonrpc": "2.0", "id": i, "method": "sample.block", "params": []})
    refused = await peer.recv()
    assert refused["id"] == MAX_INFLIGHT_CALLS
    assert refused["error"]["code"] == -32000
    assert refused["error"]["message"] == "Maximum number of concurrent calls (20) has exceeded"
    for _ in range(250):
        if sampled.svc.executing == MAX_EXECUTING_CALLS:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and no more start
    assert sampled.svc.executing == MAX_EXECUTING_CALLS
    # While 20 are in flight even a ping is refused; other clients are served.
    assert (await peer.call("core.ping", id="p"))["error"]["code"] == -32000
    await assert_still_serving(await raw())
    sampled.svc.gate.set()
    answers = [await peer.recv() for _ in range(MAX_INFLIGHT_CALLS)]
    assert sorted(a["id"] for a in answers) == list(range(MAX_INFLIGHT_CALLS))
    assert all(a["result"] == "released" for a in answers)
    assert sampled.svc.max_executing == MAX_EXECUTING_CALLS
    await assert_still_serving(peer)


async def test_ejson_dates_for_job_times(raw, server) -> None:
    peer = await raw()
    await peer.login()
    await peer.result("core.set_options", {"legacy_jobs": True})
    job_id = await peer.result("core.bulk", "core.ping", [[]])
    for _ in range(50):
        job = (await peer.result("core.get_jobs", [["id", "=", job_id]], {"get": True}))
        if job["state"] == "SUCCESS":
            break
        await asyncio.sleep(0.05)
    assert set(job["time_started"]) == {"$date"} and isinstance(job["time_started"]["$date"], int)
    assert set(job["time_finished"]) == {"$date"}
    assert job["time_finished"]["$date"] >= job["time_started"]["$date"]
    assert abs(time.time() * 1000 - job["time_started"]["$date"]) < 60_000
