"""Issue 11 item 5: job records never hold secrets in clear, whatever method wraps them.

The jobs table, `core.get_jobs` and its events show secret arguments and secret results (a method's
`secret_result`) as "********"; `core.bulk` and `core.job_wait` records are redacted as the calls they ran.
Only the job's own user (or a full admin) gets the raw result: in the call's answer and its events, and from
`core.get_jobs` with `extra.raw_result`. Nothing of it reaches the database files.
"""
from __future__ import annotations

import asyncio
from typing import Any

from middlewared_plugin.client import Client
from middlewared_plugin.services.base import CallContext, Private, Service, api_method
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.integration.protocol.sample_services import install

REDACTED = "********"
TOKEN = "made-up-secret-token-4711"


class SecretJobs(Service):
    """A job readers may follow (read_roles) whose whole result is secret."""

    namespace = "secretjobs"

    @api_method(roles=("KEYCHAIN_CREDENTIAL_WRITE",), job=True, read_roles=("KEYCHAIN_CREDENTIAL_READ",),
                secret_result=Private)
    async def issue(self, ctx: CallContext) -> str:
        return TOKEN


def stored_bytes(server: TestServer) -> bytes:
    return b"".join(p.read_bytes() for p in server.data_dir.glob("middlewared.sqlite*"))


def job_events(events: list[dict[str, Any]], job_id: int) -> list[dict[str, Any]]:
    return [e["fields"] for e in events if e["id"] == job_id and e.get("fields")]


async def job_record(client: Client, job_id: int, **extra: Any) -> dict[str, Any]:
    return await client.call("core.get_jobs", [["id", "=", job_id]], {"get": True, "extra": extra})


async def test_bulk_login_ex_password_is_redacted_in_every_record(server: TestServer) -> None:
    client = await server.client()
    events: list[dict[str, Any]] = []
    await client.subscribe("core.get_jobs", events.append)
    login = {"mechanism": "PASSWORD_PLAIN", "username": ADMIN, "password": ADMIN_PASSWORD}
    [entry] = await client.call("core.bulk", "auth.login_ex", [[login]], job=True)
    assert entry["error"] is None and entry["result"]["response_type"] == "SUCCESS"
    await client.ping()

    [job] = await client.call("core.get_jobs", [["method", "=", "core.bulk"]])
    expected = [[{**login, "password": REDACTED}]]
    assert job["arguments"][:2] == ["auth.login_ex", expected]
    fields = job_events(events, job["id"])
    assert fields and all(f["arguments"][1] == expected for f in fields)
    # The password cannot be probed through a filter either.
    assert await client.call("core.get_jobs", [["arguments.1.0.0.password", "=", ADMIN_PASSWORD]]) == []

    await server.stop()
    try:
        assert ADMIN_PASSWORD.encode() not in stored_bytes(server)
    finally:
        await server.start()


async def test_bulk_key_pair_secrets_are_redacted_but_reach_their_owner(server: TestServer) -> None:
    client = await server.client()
    pair = await client.call("keychaincredential.generate_ssh_key_pair")
    secret_lines = pair["private_key"].splitlines()[1:-1]

    # The owner gets the results raw: they are what it asked for.
    [created] = (await client.call("core.bulk", "keychaincredential.create",
                                   [[{"name": "key", "type": "SSH_KEY_PAIR", "attributes": pair}]], job=True))
    assert created["result"]["attributes"]["private_key"].strip() == pair["private_key"].strip()
    [generated] = await client.call("core.bulk", "keychaincredential.generate_ssh_key_pair", [[]], job=True)
    generated_key = generated["result"]["private_key"]
    assert generated_key.startswith("-----BEGIN")
    secret_lines += generated_key.splitlines()[1:-1]
    bulk_create, bulk_generate = (j["id"] for j in await client.call("core.get_jobs", [["method", "=", "core.bulk"]]))
    waited = await client.call("core.job_wait", bulk_generate, job=True)
    assert waited[0]["result"]["private_key"] == generated_key
    [wait_job] = await client.call("core.get_jobs", [["method", "=", "core.job_wait"]])

    create_record = await job_record(client, bulk_create)
    assert create_record["arguments"][1][0][0]["attributes"] == {"private_key": REDACTED,
                                                                  "public_key": pair["public_key"]}
    assert create_record["result"][0]["result"]["attributes"] == REDACTED
    for job_id in (bulk_generate, wait_job["id"]):
        assert (await job_record(client, job_id))["result"][0]["result"] == {
            "private_key": REDACTED, "public_key": generated["result"]["public_key"]}
    # extra.raw_result: the owner (a full admin here) may see the result as returned.
    assert (await job_record(client, bulk_generate, raw_result=True))["result"] == [generated]

    await server.stop()
    try:
        stored = stored_bytes(server)
        for line in secret_lines:
            assert line.encode() not in stored
    finally:
        await server.start()
    client = await server.client()
    # The restarted server knows only the stored records: redacted, even with raw_result.
    assert (await job_record(client, bulk_generate, raw_result=True))["result"][0]["result"]["private_key"] == REDACTED


async def test_readers_of_a_job_never_see_its_secret_result(server: TestServer) -> None:
    await install(server.app, SecretJobs)
    await server.add_user("reader", "reader-password", ["READONLY_ADMIN"])
    reader = await server.client("reader", "reader-password")
    admin = await server.client()
    reader_events: list[dict[str, Any]] = []
    admin_events: list[dict[str, Any]] = []
    await reader.subscribe("core.get_jobs", reader_events.append)
    await admin.subscribe("core.get_jobs", admin_events.append)

    assert await admin.call("secretjobs.issue", job=True) == TOKEN
    await reader.ping()
    await admin.ping()
    [job] = await admin.call("core.get_jobs", [["method", "=", "secretjobs.issue"]])
    assert job["result"] == REDACTED
    assert (await job_record(admin, job["id"], raw_result=True))["result"] == TOKEN

    [final] = [f for f in job_events(reader_events, job["id"]) if f["state"] == "SUCCESS"]
    assert final["result"] == REDACTED
    assert [f["result"] for f in job_events(admin_events, job["id"]) if f["state"] == "SUCCESS"] == [TOKEN]
    # raw_result is for the job's owner and full admins, not for whoever may read the job.
    assert (await job_record(reader, job["id"], raw_result=True))["result"] == REDACTED
    assert await reader.call("core.get_jobs", [["result", "=", TOKEN]]) == []
    await asyncio.sleep(0.1)  # job history is written in the background
    assert TOKEN not in repr(await server.app.store.get("jobs", job["id"]))
