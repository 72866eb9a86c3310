"""`replication.run` reports live progress (reference §2.1.3, §3): the job's progress, the partial
`replication.query` CHANGED states in order, and `midclt call -j` drawing it to 100%."""
from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

import pytest

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.fixtures.sshd import SshdServer
from tests.integration.replication_sched.conftest import (
    MIB,
    StateEvents,
    job_log,
    push_task,
    snapshot,
    snapshot_names,
    ssh_credentials,
    write_file,
)

FIRST, SECOND, THIRD = "auto-2026-03-01_10-00", "auto-2026-03-02_10-00", "auto-2026-03-03_10-00"
SIZE = r"\d+(?:\.\d)? (?:B|KiB|MiB|GiB)"
#: `Sending 1 of 2: pool/src@auto-... (1.5 MiB / 4.0 MiB)`; ` / total` only once every size is known.
DESCRIPTION = re.compile(rf"^Sending (\d+) of (\d+): (\S+)@(\S+) \(({SIZE})(?: / ({SIZE}))?\)$")


@pytest.mark.parametrize("transport", ["LOCAL", "SSH"])
async def test_run_reports_progress_and_states_in_order(
    transport: str, server: TestServer, client: Client, states: StateEvents, pool_pair: tuple[FilePool, FilePool],
    local_zfs: Zfs, sshd: SshdServer, ssh_client_key: dict[str, str],
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/copy"
    await local_zfs.create_dataset(source)
    # The first stream is big enough to be seen on its way (job events come at most 10 times a second, and
    # a local pipe moves some 200 MB/s); SSH moves it slower, so it needs less.
    first_size = (40 if transport == "LOCAL" else 2) * MIB
    await snapshot(local_zfs, source, FIRST, size=first_size)
    await snapshot(local_zfs, source, SECOND, size=MIB // 2)
    fields: dict[str, Any] = {"transport": transport}
    if transport == "SSH":
        fields["ssh_credentials"] = await ssh_credentials(client, sshd, ssh_client_key)
    task = await client.call("replication.create", push_task(source, target, **fields))

    jobs: list[dict[str, Any]] = []
    assert await client.call("replication.run", task["id"], job=True, callback=jobs.append) is None

    # The job: a description per snapshot as §2.1.3 words it, bytes/rate/ETA in `extra`, percent rising to 100.
    descriptions = [m for j in jobs if (m := DESCRIPTION.match(j["progress"]["description"] or ""))]
    assert descriptions, [j["progress"] for j in jobs]
    assert {(m[1], m[2], m[3]) for m in descriptions} <= {("1", "2", source), ("2", "2", source)}
    assert ("1", "2", FIRST) in {(m[1], m[2], m[4]) for m in descriptions}
    numbers = [int(m[1]) for m in descriptions]
    assert numbers == sorted(numbers)
    sending = next(j["progress"] for j in jobs if DESCRIPTION.match(j["progress"]["description"] or ""))
    assert {"bytes_sent", "bytes_total", "rate", "eta", "snapshots_sent", "snapshots_total"} <= set(sending["extra"])
    percents = [j["progress"]["percent"] for j in jobs]
    assert percents == sorted(percents) and percents[-1] == 100
    assert jobs[-1]["state"] == "SUCCESS"
    assert jobs[-1]["progress"]["extra"]["bytes_sent"] >= first_size

    # The task's states, in order, with progress while RUNNING.
    await states.wait_for(task["id"], "FINISHED")
    assert states.names(task["id"]) == ["RUNNING", "FINISHED"]
    progressed = [s["progress"] for s in states.of(task["id"]) if "progress" in s]
    assert progressed and progressed[0]["snapshots_total"] == 2
    assert all(p["current"] == p["bytes_sent"] and p["total"] == p["bytes_total"] for p in progressed)
    finished = states.of(task["id"])[-1]
    assert finished["warnings"] == [] and finished["job"]["id"] == jobs[-1]["id"]

    entry = await client.call("replication.get_instance", task["id"])
    assert entry["state"]["state"] == "FINISHED"
    assert entry["state"]["last_snapshot"].endswith(f"@{SECOND}")
    assert entry["job"]["id"] == jobs[-1]["id"] and entry["job"]["state"] == "SUCCESS"
    assert {f"{target}@{FIRST}", f"{target}@{SECOND}"} <= await snapshot_names(local_zfs, target)


async def test_midclt_follows_a_recursive_ssh_run_to_100_percent_and_a_second_run_sends_only_new_snapshots(
    server: TestServer, client: Client, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
    sshd: SshdServer, ssh_client_key: dict[str, str],
) -> None:
    src_pool, dst_pool = pool_pair
    source, target = f"{src_pool.name}/src", f"{dst_pool.name}/backup"
    await local_zfs.create_dataset(f"{source}/child/grandchild", parents=True)
    await write_tree(local_zfs, source)
    await snapshot(local_zfs, source, FIRST)
    await write_tree(local_zfs, source)
    await snapshot(local_zfs, source, SECOND)
    task = await client.call("replication.create", push_task(
        source, target, transport="SSH", ssh_credentials=await ssh_credentials(client, sshd, ssh_client_key),
        recursive=True))

    returncode, stdout, stderr = await midclt(server, "call", "-j", "replication.run", str(task["id"]))

    assert returncode == 0, stderr
    assert stdout.strip() == "null"
    lines = stderr.splitlines()
    assert any("Sending 1 of 6" in line for line in lines), stderr
    assert "100%" in lines[-1], stderr
    expected = {f"{target}{suffix}@{name}" for suffix in ("", "/child", "/child/grandchild")
                for name in (FIRST, SECOND)}
    assert await snapshot_names(local_zfs, target) == expected

    # A second run sends only the snapshot that is new, for each dataset of the tree.
    await snapshot(local_zfs, source, THIRD)
    await client.call("replication.run", task["id"], job=True)
    log = await job_log(server, (await client.call("replication.get_instance", task["id"]))["job"]["id"])
    sent = re.findall(r"^Sent (\S+) to (\S+)$", log, re.MULTILINE)
    assert sorted(sent) == sorted([(f"{source}{suffix}@{THIRD}", f"{target}{suffix}")
                                   for suffix in ("", "/child", "/child/grandchild")]), log
    for suffix in ("", "/child", "/child/grandchild"):  # incremental from the last common snapshot
        assert f"zfs send -p -i {source}{suffix}@{SECOND} -- {source}{suffix}@{THIRD} |" in log, log
    assert await snapshot_names(local_zfs, target) == expected | {
        f"{target}{suffix}@{THIRD}" for suffix in ("", "/child", "/child/grandchild")}


async def write_tree(zfs: Zfs, source: str) -> None:
    """A new file in every dataset of the tree."""
    for dataset in (source, f"{source}/child", f"{source}/child/grandchild"):
        await write_file(zfs, dataset, f"data-{len(await zfs.list_snapshots(dataset))}", MIB // 4)


async def midclt(server: TestServer, *args: str) -> tuple[int, str, str]:
    """Run the midclt console client against the server, as an administrator would."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "middlewared_plugin.midclt", "--uri", server.url, "-U", ADMIN, "-P", ADMIN_PASSWORD,
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()
