"""Jobs over the wire (reference §1.6): event sequences in both job modes, failures, abort, locks,
progress throttling, logs, job_wait, get_jobs and who sees which job."""
from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from typing import Any

from middlewared_plugin.protocol.connection import MAX_EXECUTING_CALLS, MAX_INFLIGHT_CALLS
from tests.integration.protocol.conftest import Raw, Sampled

TERMINAL = ("SUCCESS", "FAILED", "ABORTED")


def job_events(peer: Raw, job_id: int) -> list[tuple[str, str]]:
    return [(e["msg"], e["fields"]["state"]) for e in peer.events("core.get_jobs", job_id)]


def index_of(peer: Raw, predicate: Any) -> int:
    return next(i for i, m in enumerate(peer.received) if predicate(m))


def is_response(id_: Any) -> Any:
    return lambda m: m.get("id") == id_ and "method" not in m


def is_job_event(job_id: int, state: str, msg: str | None = None) -> Any:
    return lambda m: (m.get("method") == "collection_update" and m["params"]["collection"] == "core.get_jobs"
                      and m["params"]["id"] == job_id and m["params"]["fields"]["state"] == state
                      and (msg is None or m["params"]["msg"] == msg))


async def start(peer: Raw, method: str, *params: Any, id_: str) -> int:
    """Send a job call; the job id from the ADDED event naming this request (works in both modes)."""
    await peer.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": list(params)})
    added = await peer.until(lambda m: m.get("method") == "collection_update"
                             and id_ in m["params"].get("fields", {}).get("message_ids", []))
    return added["params"]["id"]


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# The "Done when" --------------------------------------------------------------------------------

async def test_new_style_client_sees_the_whole_job_before_its_answer(raw, server) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    await peer.send({"jsonrpc": "2.0", "id": "r1", "method": "core.bulk", "params": ["core.ping", [[], []]]})
    response = await peer.response("r1")
    job_id = peer.events()[0]["id"]
    await peer.job_event(job_id, "SUCCESS")

    events = peer.events("core.get_jobs", job_id)
    assert events[0]["msg"] == "added" and events[0]["fields"]["state"] == "WAITING"
    assert events[0]["fields"]["message_ids"] == ["r1"]
    assert events[0]["fields"]["method"] == "core.bulk"
    assert events[0]["fields"]["arguments"] == ["core.ping", [[], []], None]
    assert events[0]["fields"]["progress"] == {"percent": 0, "description": "", "extra": None}
    assert [e["msg"] for e in events[1:]] == ["changed"] * (len(events) - 1)
    states = [e["fields"]["state"] for e in events]
    # Progress-only updates may sit between RUNNING and the end; the states themselves are exactly these.
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == ["WAITING", "RUNNING", "SUCCESS"]
    assert states[1] == "RUNNING"
    final = events[-1]["fields"]
    assert final["result"] == [{"job_id": None, "error": None, "result": "pong"}] * 2
    assert final["progress"]["percent"] == 100
    assert set(final["time_finished"]) == {"$date"}
    assert final["credentials"] == {"type": "LOGIN_PASSWORD", "data": {"username": "admin"}}
    assert index_of(peer, is_job_event(job_id, "WAITING", "added")) < index_of(peer, is_response("r1"))
    assert response["result"] == final["result"]


async def test_legacy_client_gets_the_job_id_first(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    await peer.send({"jsonrpc": "2.0", "id": "r1", "method": "sample.gated", "params": ["legacy"]})
    response = await peer.response("r1")
    job_id = response["result"]
    assert isinstance(job_id, int)
    added = await peer.job_event(job_id, "WAITING")
    assert added["message_ids"] == ["r1"]
    assert index_of(peer, is_job_event(job_id, "WAITING", "added")) < index_of(peer, is_response("r1"))
    await peer.job_event(job_id, "RUNNING")
    sampled.svc.gate.set()
    assert (await peer.job_event(job_id, "SUCCESS"))["result"] == "legacy"
    assert job_events(peer, job_id) == [("added", "WAITING"), ("changed", "RUNNING"), ("changed", "SUCCESS")]


async def test_core_bulk_in_legacy_mode(raw, server) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("core.bulk", "core.ping", [[], ["extra"]])
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["result"][0] == {"job_id": None, "error": None, "result": "pong"}
    assert "Too many arguments" in final["result"][1]["error"]
    assert ("added", "WAITING") == job_events(peer, job_id)[0]


async def test_new_style_answer_is_held_until_the_job_ends(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.gated", "held", id_="h1")
    await peer.job_event(job_id, "RUNNING")
    assert await peer.nothing_within(0.3)
    sampled.svc.gate.set()
    assert (await peer.response("h1"))["result"] == "held"


async def test_held_back_job_calls_occupy_call_slots(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    for i in range(MAX_INFLIGHT_CALLS + 1):
        await peer.send({"jsonrpc": "2.0", "id": i, "method": "sample.gated", "params": [str(i)]})
    refused = await peer.response(MAX_INFLIGHT_CALLS)
    assert refused["error"]["code"] == -32000
    await peer.until(lambda m: len(peer.events()) == 2 * MAX_EXECUTING_CALLS)
    assert await peer.nothing_within(0.3)
    # ADDED + RUNNING of the first ten only: the other ten calls wait for a slot before starting a job.
    assert len({e["id"] for e in peer.events()}) == MAX_EXECUTING_CALLS
    assert sampled.svc.executing == MAX_EXECUTING_CALLS
    sampled.svc.gate.set()
    answers = [await peer.response(i) for i in range(MAX_INFLIGHT_CALLS)]
    assert [a["result"] for a in answers] == [str(i) for i in range(MAX_INFLIGHT_CALLS)]


# Failures -----------------------------------------------------------------------------------------------

async def test_a_failing_job_reports_its_error_then_answers_with_it(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.fail", 13, id_="f1")
    response = await peer.response("f1")
    failed = await peer.job_event(job_id, "FAILED")
    assert index_of(peer, is_job_event(job_id, "FAILED")) < index_of(peer, is_response("f1"))
    assert job_events(peer, job_id) == [("added", "WAITING"), ("changed", "RUNNING"), ("changed", "FAILED")]
    assert failed["error"] == "[EACCES] Sample job failure"
    assert failed["exception"].startswith("Traceback") and "Sample job failure" in failed["exception"]
    assert failed["exc_info"]["type"] == "CallError"
    assert failed["exc_info"]["errno"] == 13
    assert failed["exc_info"]["extra"] is None
    assert "Sample job failure" in failed["exc_info"]["repr"]
    assert failed["result"] is None
    assert response["error"]["code"] == -32001
    assert response["error"]["data"]["error"] == 13
    assert response["error"]["data"]["reason"] == "[EACCES] Sample job failure"
    stored = await peer.result("core.get_jobs", [["id", "=", job_id]], {"get": True})
    assert stored["exc_info"]["errno"] == 13 and stored["state"] == "FAILED"


async def test_a_job_failing_validation_reports_the_triples(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.fail_validation", 5, id_="v1")
    response = await peer.response("v1")
    failed = await peer.job_event(job_id, "FAILED")
    triples = [["sample_fail.value", "5 is not acceptable", 22], ["sample_fail.other", "Also wrong", 2]]
    assert failed["exc_info"]["type"] == "VALIDATION"
    assert failed["exc_info"]["errno"] is None
    assert failed["exc_info"]["extra"] == triples
    assert failed["error"] == "[EINVAL] sample_fail.value: 5 is not acceptable\n[ENOENT] sample_fail.other: Also wrong"
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["extra"] == triples


async def test_invalid_job_arguments_fail_before_any_job_exists(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    answer = await peer.call("sample.fail", "13")
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["extra"] == [["code", "Input should be a valid integer", 22]]
    assert peer.events() == []
    assert await peer.result("core.get_jobs") == []


# Abort ---------------------------------------------------------------------------------------------------

def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie has already died
    except FileNotFoundError:
        return True


async def test_abort_kills_the_job_and_its_child_process(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.sleep", 60, id_="s1")
    await wait_until(lambda: sampled.svc.pids)
    [pid] = sampled.svc.pids
    assert not process_gone(pid)
    other = await (await raw()).setup()
    assert await other.result("core.job_abort", job_id) is None
    aborted = await peer.job_event(job_id, "ABORTED")
    assert aborted["error"] and "abort" in aborted["error"].lower()
    assert aborted["time_finished"] is not None
    response = await peer.response("s1")
    assert response["error"]["code"] == -32001
    await wait_until(lambda: process_gone(pid))
    assert [s for _, s in job_events(peer, job_id)] == ["WAITING", "RUNNING", "ABORTED"]


async def test_a_waiting_job_can_be_aborted_before_it_runs(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    running = await peer.result("sample.queued", "first")
    await peer.job_event(running, "RUNNING")
    waiting = await peer.result("sample.queued", "second")
    await peer.job_event(waiting, "WAITING")
    assert await peer.result("core.job_abort", waiting) is None
    await peer.job_event(waiting, "ABORTED")
    sampled.svc.gate.set()
    await peer.job_event(running, "SUCCESS")
    assert job_events(peer, waiting) == [("added", "WAITING"), ("changed", "ABORTED")]
    assert sampled.svc.lock_order == ["first"]


# Locks ---------------------------------------------------------------------------------------------------

async def test_a_full_lock_queue_joins_the_last_queued_job(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    running = await peer.result("sample.queued", "a")
    await peer.job_event(running, "RUNNING")
    second = await peer.result("sample.queued", "b")
    third = await peer.result("sample.queued", "c")
    await peer.send({"jsonrpc": "2.0", "id": "join", "method": "sample.queued", "params": ["d"]})
    joined = (await peer.response("join"))["result"]
    assert joined == third  # queue size 2 is full: the call joins the last queued job
    changed = await peer.until(lambda m: m.get("method") == "collection_update" and m["params"]["id"] == third
                               and "join" in m["params"]["fields"]["message_ids"])
    assert changed["params"]["msg"] == "changed"
    assert len(changed["params"]["fields"]["message_ids"]) == 2
    assert changed["params"]["fields"]["state"] == "WAITING"
    sampled.svc.gate.set()
    for job_id, tag in ((running, "a"), (second, "b"), (third, "c")):
        assert (await peer.job_event(job_id, "SUCCESS"))["result"] == tag
    # One at a time, in submission order; "d" never ran on its own.
    assert sampled.svc.lock_order == ["a", "b", "c"]
    assert sampled.svc.max_executing == 1


async def test_a_new_style_caller_that_joined_gets_the_joined_jobs_result(raw, sampled: Sampled) -> None:
    legacy = await (await raw()).setup(legacy_jobs=True)
    running = await legacy.result("sample.queued", "a")
    await legacy.job_event(running, "RUNNING")
    await legacy.result("sample.queued", "b")
    third = await legacy.result("sample.queued", "c")
    peer = await (await raw()).setup(legacy_jobs=False)
    await peer.send({"jsonrpc": "2.0", "id": "late", "method": "sample.queued", "params": ["d"]})
    changed = await peer.until(lambda m: m.get("method") == "collection_update"
                               and "late" in m["params"]["fields"]["message_ids"])
    assert changed["params"]["id"] == third
    sampled.svc.gate.set()
    assert (await peer.response("late"))["result"] == "c"


async def test_lock_queue_size_zero_refuses_a_second_run(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    first = await peer.result("sample.exclusive", "one")
    await peer.job_event(first, "RUNNING")
    refused = await peer.call("sample.exclusive", "two")
    assert refused["error"]["code"] == -32001
    assert refused["error"]["data"]["error"] == 16
    assert refused["error"]["data"]["reason"] == "[EBUSY] This job is already being performed"
    sampled.svc.gate.set()
    await peer.job_event(first, "SUCCESS")
    again = await peer.result("sample.exclusive", "three")
    assert (await peer.job_event(again, "SUCCESS"))["result"] == "three"


# Progress -----------------------------------------------------------------------------------------------

def progress_events(peer: Raw, job_id: int) -> list[dict[str, Any]]:
    return [e["fields"]["progress"] for e in peer.events("core.get_jobs", job_id)[2:]
            if e["fields"]["state"] == "RUNNING"]


async def test_progress_events_are_throttled_and_the_last_one_arrives(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    began = time.monotonic()
    job_id = await start(peer, "sample.progress_storm", 1000, 0.5, 0.3, id_="p1")
    await peer.response("p1")
    elapsed = time.monotonic() - began
    progress = progress_events(peer, job_id)
    assert 2 <= len(progress) <= elapsed * 10 + 2
    assert progress[-1] == {"percent": 90, "description": "step 1000", "extra": None}
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["progress"] == {"percent": 100, "description": "step 1000", "extra": None}


async def test_a_tight_progress_loop_yields_few_events(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.progress_storm", 1000, 0, 0.3, id_="p2")
    await peer.response("p2")
    progress = progress_events(peer, job_id)
    assert [p["description"] for p in progress] == ["step 1", "step 1000"]


async def test_unchanged_progress_sends_no_event(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=False)
    job_id = await start(peer, "sample.repeat_progress", id_="p3")
    await peer.response("p3")
    assert progress_events(peer, job_id) == [{"percent": 10, "description": "same", "extra": None}]


async def test_job_update_sets_progress_from_outside(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("sample.gated", "x")
    await peer.job_event(job_id, "RUNNING")
    await peer.result("core.job_update", job_id, {"progress": {"percent": 42.9, "description": "outside"}})
    changed = await peer.until(lambda m: m.get("method") == "collection_update"
                               and m["params"]["fields"]["progress"]["description"] == "outside")
    assert changed["params"]["fields"]["progress"]["percent"] == 42


# Logs -----------------------------------------------------------------------------------------------------

def http_get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def test_a_short_log_is_its_own_excerpt(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("sample.write_logs", 20)
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["logs_excerpt"] == "".join(f"line {i}\n" for i in range(1, 21))
    assert final["logs_path"].endswith(f"{job_id}.log")


async def test_a_long_log_excerpt_and_download(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("sample.write_logs", 25)
    final = await peer.job_event(job_id, "SUCCESS")
    lines = [f"line {i}\n" for i in range(1, 26)]
    assert final["logs_excerpt"] == "".join(lines[:10]) + "... 5 more lines ...\n" + "".join(lines[-10:])

    path = await peer.result("core.job_download_logs", job_id, "logs.txt")
    assert path.startswith(f"/_download/{job_id}?auth_token=")
    url = f"http://127.0.0.1:{sampled.server.port}{path}"
    status, headers, body = await asyncio.to_thread(http_get, url)
    assert status == 200
    assert headers["Content-Disposition"] == 'attachment; filename="logs.txt"'
    assert body == "".join(lines)
    # The download token is spent.
    assert (await asyncio.to_thread(http_get, url))[0] == 403


async def test_a_job_without_logs_has_none_to_download(raw, server) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("core.bulk", "core.ping", [])
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["logs_path"] is None and final["logs_excerpt"] is None
    answer = await peer.call("core.job_download_logs", job_id, "logs.txt")
    assert answer["error"]["data"]["reason"] == "[ENOENT] This job has no logs"


# job_wait and get_jobs -------------------------------------------------------------------------------------

async def test_job_wait_returns_the_target_result(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    target = await peer.result("sample.gated", "waited-for")
    waiter = await (await raw()).setup(legacy_jobs=False)
    await waiter.send({"jsonrpc": "2.0", "id": "w1", "method": "core.job_wait", "params": [target]})
    await waiter.nothing_within(0.3)  # events may flow meanwhile; the answer must not
    assert not any(m.get("id") == "w1" for m in waiter.received)
    sampled.svc.gate.set()
    assert (await waiter.response("w1"))["result"] == "waited-for"
    # A finished job can be waited for too.
    assert (await waiter.call("core.job_wait", target))["result"] == "waited-for"


async def test_job_wait_raises_the_target_error(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    target = await peer.result("sample.fail", 13)
    await peer.job_event(target, "FAILED")
    answer = await peer.call("core.job_wait", target)
    waiter_id = answer["result"]
    failed = await peer.job_event(waiter_id, "FAILED")
    assert failed["exc_info"]["errno"] == 13
    missing = await (await (await raw()).setup(legacy_jobs=False)).call("core.job_wait", 9999)
    assert missing["error"]["data"]["error"] == 2


async def test_get_jobs_filters_and_options(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    ping_job = await peer.result("core.bulk", "core.ping", [])
    failed_job = await peer.result("sample.fail", 1)
    secret_job = await peer.result("sample.with_secret", "alice", "hunter2")
    for job_id, state in ((ping_job, "SUCCESS"), (failed_job, "FAILED"), (secret_job, "SUCCESS")):
        await peer.job_event(job_id, state)

    jobs = await peer.result("core.get_jobs")
    assert [j["id"] for j in jobs] == [ping_job, failed_job, secret_job]
    assert await peer.result("core.get_jobs", [["state", "=", "FAILED"]]) == [jobs[1]]
    assert [j["id"] for j in await peer.result("core.get_jobs", [["method", "^", "sample."]])] == [
        failed_job, secret_job]
    assert await peer.result("core.get_jobs", [], {"count": True}) == 3
    assert [j["id"] for j in await peer.result("core.get_jobs", [], {"order_by": ["-id"], "limit": 2})] == [
        secret_job, failed_job]
    assert await peer.result("core.get_jobs", [["id", "=", ping_job]], {"select": ["id", "state"]}) == [
        {"id": ping_job, "state": "SUCCESS"}]
    assert (await peer.result("core.get_jobs", [["progress.percent", "=", 100]], {"count": True})) == 2
    assert (await peer.result("core.get_jobs", [["id", "=", secret_job]], {"get": True}))["id"] == secret_job
    missing = await peer.call("core.get_jobs", [["id", "=", 999]], {"get": True})
    assert missing["error"]["code"] == -32001 and missing["error"]["data"]["error"] == 22
    bad = await peer.call("core.get_jobs", [["id", "===", 1]])
    assert bad["error"]["code"] == -32602


async def test_private_arguments_are_redacted_in_jobs(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("sample.with_secret", "alice", "hunter2")
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["arguments"] == ["alice", "********"]
    assert all(e["fields"]["arguments"] == ["alice", "********"] for e in peer.events("core.get_jobs", job_id))
    assert (await peer.result("core.get_jobs", [["id", "=", job_id]], {"get": True}))["arguments"] == [
        "alice", "********"]
    await asyncio.sleep(0.1)  # job history is written in the background
    stored = await sampled.server.app.store.get("jobs", job_id)
    assert stored is not None and "hunter2" not in repr(stored)


async def test_bulk_redacts_each_inner_call_by_the_inner_methods_model(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(legacy_jobs=True)
    job_id = await peer.result("core.bulk", "auth.login", [["admin", "bulk-secret"]])
    final = await peer.job_event(job_id, "SUCCESS")
    assert final["arguments"][1] == [["admin", "********"]]
    await asyncio.sleep(0.1)  # job history is written in the background
    stored = await sampled.server.app.store.get("jobs", job_id)
    assert stored is not None and "bulk-secret" not in repr(stored)


# Visibility -----------------------------------------------------------------------------------------------

async def test_unprivileged_users_see_only_their_own_jobs(raw, sampled: Sampled) -> None:
    server = sampled.server
    await server.add_user("reader", "reader-pw", ["READONLY_ADMIN"])
    await server.add_user("other", "other-pw", ["READONLY_ADMIN"])
    admin = await (await raw()).setup(legacy_jobs=True)
    reader = await (await raw()).setup(legacy_jobs=True, username="reader", password="reader-pw")
    other = await (await raw()).setup(legacy_jobs=True, username="other", password="other-pw")

    admin_job = await admin.result("core.bulk", "core.ping", [])
    reader_job = await reader.result("core.bulk", "core.ping", [])
    other_job = await other.result("core.bulk", "core.ping", [])
    for job_id in (admin_job, reader_job, other_job):
        await admin.job_event(job_id, "SUCCESS")
    await reader.job_event(reader_job, "SUCCESS")
    await other.job_event(other_job, "SUCCESS")
    await asyncio.sleep(0.1)

    assert {e["id"] for e in reader.events()} == {reader_job}
    assert {e["id"] for e in other.events()} == {other_job}
    assert [j["id"] for j in await reader.result("core.get_jobs")] == [reader_job]
    assert [j["id"] for j in await admin.result("core.get_jobs")] == [admin_job, reader_job, other_job]
    # Someone else's job exists but may not be touched (EPERM); a job that does not exist is ENOENT.
    await reader.result("core.set_options", {"legacy_jobs": False})  # job_wait answers with its outcome
    for method, params in (("core.job_abort", [admin_job]), ("core.job_download_logs", [other_job, "logs.txt"]),
                           ("core.job_wait", [other_job])):
        answer = await reader.call(method, *params)
        assert answer["error"]["code"] == -32001
        assert answer["error"]["data"]["error"] == 1
        assert answer["error"]["data"]["errname"] == "EPERM"
    assert (await reader.call("core.job_abort", 999))["error"]["data"]["error"] == 2


async def test_internal_job_logs_are_for_full_admins_only(raw, sampled: Sampled) -> None:
    await sampled.server.add_user("reader", "reader-pw", ["READONLY_ADMIN"])
    assert await sampled.server.app.call("sample.write_logs", 3) == 3
    [job] = await (await (await raw()).setup()).result("core.get_jobs", [["method", "=", "sample.write_logs"]])
    assert job["credentials"] is None
    reader = await (await raw()).setup(username="reader", password="reader-pw")
    assert await reader.result("core.get_jobs") == []
    answer = await reader.call("core.job_download_logs", job["id"], "logs.txt")
    assert answer["error"]["data"]["error"] == 1
    admin = await (await raw()).setup()
    assert (await admin.result("core.job_download_logs", job["id"], "logs.txt")).startswith("/_download/")


async def test_a_user_may_abort_their_own_job(raw, sampled: Sampled) -> None:
    await sampled.server.add_user("reader", "reader-pw", ["READONLY_ADMIN"])
    reader = await (await raw()).setup(legacy_jobs=True, username="reader", password="reader-pw")
    job_id = await reader.result("sample.sleep", 60)
    await wait_until(lambda: sampled.svc.pids)
    assert await reader.result("core.job_abort", job_id) is None
    await reader.job_event(job_id, "ABORTED")
    await wait_until(lambda: process_gone(sampled.svc.pids[0]))


def test_process_gone_sees_a_live_process() -> None:
    assert process_gone(os.getpid()) is False
