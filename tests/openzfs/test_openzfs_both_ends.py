"""OpenZFS on both ends: a server whose own ("local") ZFS is the VM's pool `tank` (`Settings.local_zfs_ssh`)
replicates over SSH to the VM's pool `backup`, so what only OpenZFS does is proven end to end:

- an encrypted source with properties is sent raw (PUSH and PULL): the copy stays encrypted, its key is
  the source's, and after load-key the data equals the source's;
- an interrupted transfer resumes from `receive_resume_token` (`zfs send -t`) and sends less than the whole
  stream; a token whose source snapshot is gone is discarded (`zfs receive -A`) and the run still succeeds;
- `zfs send -nvP` totals drive progress (exact, not estimates) and match the bytes that crossed the pipe;
- a zvol source replicates (and the copy is refused as a push destination);
- properties are excluded and overridden by `zfs receive -x` / `-o`.

The server, its SSH credentials and both pools are shared by the module; each test uses its own datasets.
"""
from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

import pytest

from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.services.replication import ZVOL_TARGET_MESSAGE
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer, running_server
from tests.openzfs.support import (
    PASSPHRASE,
    SCHEMA,
    JobWatch,
    connect_to_vm,
    create_encrypted,
    job_log,
    last_job_log,
    load_key,
    local_zfs_over_ssh,
    mountpoint,
    prop,
    props,
    run_task,
    sha256,
    snapshot_name,
    stream_size,
    task,
    write_random,
)

TANK, BACKUP = "tank", "backup"
#: What the stream of the whole file may carry beyond the data (headers, metadata), at most.
STREAM_OVERHEAD = 0.03


@pytest.fixture(scope="module")
async def pools(openzfs_vm: OpenZFSVM) -> AsyncIterator[None]:
    created: list[str] = []
    try:
        for name, disk in ((TANK, openzfs_vm.disks[0]), (BACKUP, openzfs_vm.disks[1])):
            await openzfs_vm.run(["zpool", "create", "-f", name, disk])
            created.append(name)
        yield
    finally:
        for name in created:
            await openzfs_vm.run(["zpool", "destroy", "-f", name], check=False)


@pytest.fixture(scope="module")
async def server(openzfs_vm: OpenZFSVM, pools: None) -> AsyncIterator[TestServer]:
    """A server whose own ZFS is the guest's."""
    async with running_server(local_zfs_ssh=local_zfs_over_ssh(openzfs_vm)) as running:
        yield running


@pytest.fixture(scope="module")
async def client(server: TestServer) -> Client:
    return await server.client()


@pytest.fixture(scope="module")
async def credentials(client: Client, openzfs_vm: OpenZFSVM) -> int:
    return await connect_to_vm(client, openzfs_vm)


async def make_source(vm: OpenZFSVM, dataset: str, megabytes: int, *, day: int = 1,
                      encrypted: bool = False) -> str:
    """`dataset` with one file of random data and a snapshot; returns the file's hash."""
    if encrypted:
        await create_encrypted(vm, dataset)
    else:
        await vm.run(["zfs", "create", dataset])
    digest = await write_random(vm, f"{await mountpoint(vm, dataset)}/data", megabytes)
    await vm.run(["zfs", "snapshot", f"{dataset}@{snapshot_name(day)}"])
    return digest


async def create_task(client: Client, source: str, target: str, credentials: int, **fields: Any) -> int:
    if fields.get("direction") == "PULL":
        fields = {"naming_schema": [SCHEMA], "also_include_naming_schema": [], **fields}
    return (await client.call("replication.create", task(source, target, credentials, **fields)))["id"]


async def snapshot_guids(vm: OpenZFSVM, dataset: str) -> list[tuple[str, str]]:
    out = await vm.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name,guid", "-s", "createtxg", dataset])
    return [(line.split("\t")[0].split("@")[1], line.split("\t")[1]) for line in out.text.splitlines()]


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
async def test_encrypted_source_is_sent_raw_and_stays_encrypted(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM, direction: str,
) -> None:
    source, target = f"{TANK}/secret-{direction.lower()}", f"{BACKUP}/secret-{direction.lower()}"
    digest = await make_source(openzfs_vm, source, 2, encrypted=True)
    task_id = await create_task(client, source, target, credentials, direction=direction)
    await run_task(client, task_id)

    log = await last_job_log(server, client, task_id)
    assert f"zfs send -p -w -L -c -- {source}@{snapshot_name(1)}" in log, log
    assert await props(openzfs_vm, target, "encryption", "keyformat", "encryptionroot", "keystatus") == {
        "encryption": "aes-256-gcm", "keyformat": "passphrase", "encryptionroot": target,
        # never decrypted on the way: the key is the source's and is not loaded
        "keystatus": "unavailable"}
    assert await snapshot_guids(openzfs_vm, target) == await snapshot_guids(openzfs_vm, source)
    await load_key(openzfs_vm, target, PASSPHRASE)
    await openzfs_vm.run(["zfs", "mount", target])
    assert await sha256(openzfs_vm, f"{await mountpoint(openzfs_vm, target)}/data") == digest


async def test_send_estimates_drive_progress_and_match_the_bytes_sent(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM,
) -> None:
    source, target = f"{TANK}/estimated", f"{BACKUP}/estimated"
    await make_source(openzfs_vm, source, 4, day=1)
    await write_random(openzfs_vm, f"{await mountpoint(openzfs_vm, source)}/more", 4)
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(2)}"])
    first, second = (f"{source}@{snapshot_name(d)}" for d in (1, 2))
    expected = (stream_size((await openzfs_vm.run(["zfs", "send", "-nvP", "-p", "-L", "-c", first])).text)
                + stream_size((await openzfs_vm.run(
                    ["zfs", "send", "-nvP", "-p", "-i", first, "-L", "-c", second])).text))
    task_id = await create_task(client, source, target, credentials)

    watch = await run_task(client, task_id)

    counted = [e for e in watch.extras() if e.get("bytes_total") is not None]
    assert counted, watch.states
    # Every total shown is the sum of the `zfs send -nvP` sizes, and it is marked exact, not an estimate.
    assert {(e["bytes_total"], e["bytes_total_exact"]) for e in counted if e["bytes_sent"] == 0} == {
        (expected, True)}
    assert all(e["bytes_total_exact"] for e in counted)
    final = counted[-1]
    assert final["snapshots_sent"] == 2
    assert abs(final["bytes_sent"] - expected) <= STREAM_OVERHEAD * expected, (final, expected)
    assert final["bytes_total"] == final["bytes_sent"] or abs(final["bytes_total"] - expected) <= (
        STREAM_OVERHEAD * expected)
    assert "zfs send -n -v -P" in await last_job_log(server, client, task_id)


async def interrupted_run(client: Client, vm: OpenZFSVM, task_id: int, after_bytes: int) -> JobWatch:
    """Start a run, abort its job once `after_bytes` crossed the pipe, wait for the guest's receive to end."""
    watch = JobWatch()
    aborts: list[asyncio.Task[Any]] = []

    def on_event(job: dict[str, Any]) -> None:
        watch(job)
        extra = (job.get("progress") or {}).get("extra") or {}
        if not aborts and (extra.get("bytes_sent") or 0) >= after_bytes:
            aborts.append(asyncio.ensure_future(client.call("core.job_abort", job["id"])))

    with pytest.raises(ClientException) as raised:
        await client.call("replication.run", task_id, job=True, callback=on_event)
    assert aborts, "the transfer finished before it could be interrupted"
    await aborts[0]
    assert "abort" in str(raised.value).lower(), raised.value
    await receives_ended(vm)
    return watch


async def receives_ended(vm: OpenZFSVM) -> None:
    """Wait until no `zfs receive` runs in the guest: a killed stream's receive first saves its state."""
    for _ in range(120):
        if (await vm.run(["pgrep", "-f", "^zfs receive"], check=False)).returncode != 0:
            return
        await asyncio.sleep(0.5)
    raise AssertionError("a zfs receive is still running a minute after its job ended")


async def test_interrupted_transfer_resumes_from_the_receive_resume_token(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM,
) -> None:
    source, target = f"{TANK}/big", f"{BACKUP}/big"
    digest = await make_source(openzfs_vm, source, 40)
    snapshot = f"{source}@{snapshot_name(1)}"
    whole = stream_size((await openzfs_vm.run(["zfs", "send", "-nvP", "-p", "-L", "-c", snapshot])).text)
    task_id = await create_task(client, source, target, credentials)

    interrupted = await interrupted_run(client, openzfs_vm, task_id, after_bytes=4 * 1024 * 1024)
    assert "zfs receive -s" in await job_log(server, interrupted.id)
    token = await prop(openzfs_vm, target, "receive_resume_token")
    assert token not in ("-", ""), "the partial receive left no resume token"
    plan = await client.call("replication.plan", task_id)
    assert [step["kind"] for d in plan["datasets"] for step in d["steps"]] == ["resume", "mount"], plan

    resumed = await run_task(client, task_id)

    log = await last_job_log(server, client, task_id)
    assert f"zfs send -t {token}" in log, log
    final = resumed.extras()[-1]
    assert final["bytes_total_exact"] is True
    # Only the rest of the stream crossed the pipe the second time.
    assert 0 < final["bytes_sent"] < whole - 2 * 1024 * 1024, (final, whole)
    assert await prop(openzfs_vm, target, "receive_resume_token") == "-"
    assert [name for name, _ in await snapshot_guids(openzfs_vm, target)] == [snapshot_name(1)]
    assert await sha256(openzfs_vm, f"{await mountpoint(openzfs_vm, target)}/data") == digest


async def test_stale_resume_token_is_discarded_and_the_run_succeeds(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM,
) -> None:
    source, target = f"{TANK}/stale", f"{BACKUP}/stale"
    await make_source(openzfs_vm, source, 1, day=1)
    task_id = await create_task(client, source, target, credentials)
    await run_task(client, task_id)
    # An incremental stream is interrupted: the target keeps day 1 and a token for day 2.
    big = f"{await mountpoint(openzfs_vm, source)}/big"
    await write_random(openzfs_vm, big, 24)
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(2)}"])
    await interrupted_run(client, openzfs_vm, task_id, after_bytes=2 * 1024 * 1024)
    assert await prop(openzfs_vm, target, "receive_resume_token") not in ("-", "")
    # The snapshot the token continues is gone; a new one (without the big file) comes instead.
    await openzfs_vm.run(["zfs", "destroy", f"{source}@{snapshot_name(2)}"])
    await openzfs_vm.run(["rm", big])
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(3)}"])

    await run_task(client, task_id)

    log = await last_job_log(server, client, task_id)
    assert f"zfs receive -A -- {target}" in log, log
    assert "no longer exists on the source" in log, log
    assert await prop(openzfs_vm, target, "receive_resume_token") == "-"
    assert await snapshot_guids(openzfs_vm, target) == await snapshot_guids(openzfs_vm, source)
    assert [name for name, _ in await snapshot_guids(openzfs_vm, target)] == [snapshot_name(1), snapshot_name(3)]
    state = (await client.call("replication.get_instance", task_id))["state"]
    assert state["state"] == "FINISHED"


async def zvol_bytes(vm: OpenZFSVM, volume: str) -> str:
    """SHA-256 of a zvol's device, once udev has made the node."""
    device = f"/dev/zvol/{volume}"
    await vm.run(["udevadm", "settle", "--timeout=60"], check=False)
    for _ in range(60):
        if (await vm.run(["test", "-e", device], check=False)).returncode == 0:
            return await sha256(vm, device)
        await asyncio.sleep(0.5)
    raise AssertionError(f"{device} did not appear")


async def test_zvol_source_replicates(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM,
) -> None:
    source, target = f"{TANK}/vol", f"{BACKUP}/vol"
    await openzfs_vm.run(["zfs", "create", "-V", "8M", source])
    await zvol_bytes(openzfs_vm, source)  # the device exists
    await openzfs_vm.run(["dd", "if=/dev/urandom", f"of=/dev/zvol/{source}", "bs=1M", "count=4", "conv=fsync",
                          "status=none"])
    digest = await zvol_bytes(openzfs_vm, source)
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(1)}"])
    task_id = await create_task(client, source, target, credentials)

    await run_task(client, task_id)

    assert await props(openzfs_vm, target, "type", "volsize") == {"type": "volume", "volsize": "8M"}
    assert await zvol_bytes(openzfs_vm, target) == digest
    # The copy, a zvol, cannot in turn be the remote destination of a push.
    with pytest.raises(ValidationErrors) as raised:
        await client.call("replication.create", task(f"{TANK}/other", target, credentials, name="into a zvol"))
    assert raised.value.triples() == [["replication_create.target_dataset", ZVOL_TARGET_MESSAGE, errno.EINVAL]]


async def test_properties_are_excluded_and_overridden_on_receive(
    server: TestServer, client: Client, credentials: int, openzfs_vm: OpenZFSVM,
) -> None:
    source, target = f"{TANK}/props", f"{BACKUP}/props"
    await openzfs_vm.run(["zfs", "create", "-o", "compression=gzip", "-o", "atime=off", "-o", "recordsize=64K",
                          "-o", "org.test:note=keep-out", source])
    await openzfs_vm.run(["zfs", "snapshot", f"{source}@{snapshot_name(1)}"])
    task_id = await create_task(client, source, target, credentials, properties_exclude=["atime", "org.test:note"],
                                properties_override={"compression": "lz4"})

    await run_task(client, task_id)

    log = await last_job_log(server, client, task_id)
    assert "-x atime -x org.test:note -o compression=lz4" in log, log
    got = await openzfs_vm.run(["zfs", "get", "-H", "-o", "property,value,source",
                                "compression,atime,recordsize,org.test:note", target])
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in got.text.splitlines()}
    assert rows["compression"] == ["lz4", "local"]  # overridden
    assert rows["atime"] == ["on", "default"]  # excluded: the target's own default
    assert rows["org.test:note"] == ["-", "-"]  # excluded
    assert rows["recordsize"] == ["64K", "received"]  # everything else arrives
