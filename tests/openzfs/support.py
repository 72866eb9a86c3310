"""Helpers of the OpenZFS tier: reaching the VM through the API, running replication jobs, data in the guest.

The VM is reached as a client would: its host key comes from `keychaincredential.remote_ssh_host_key_scan`,
its credentials from `keychaincredential.setup_ssh_connection` (MANUAL, with an SSH key pair made from the
guest root's private key). Tests compare data by SHA-256 of files (or zvol bytes) on both ends.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from middlewared_plugin.client import Client
from tests.fixtures.openzfs_vm import OpenZFSVM
from tests.fixtures.server import TestServer

SCHEMA = "auto-%Y-%m-%d_%H-%M"
#: The passphrase of encrypted datasets the tests create in the guest; minimal PBKDF2 work under emulation.
PASSPHRASE = "openzfs-tier-passphrase"
PBKDF2_ITERS = "100000"


def snapshot_name(day: int) -> str:
    """A snapshot name matching SCHEMA."""
    return f"auto-2026-11-{day:02d}_00-00"


async def connect_to_vm(client: Client, vm: OpenZFSVM, name: str = "openzfs-vm") -> int:
    """SSH_CREDENTIALS for the guest's root, made through the API; returns their id."""
    scanned = await client.call("keychaincredential.remote_ssh_host_key_scan", {"host": vm.host, "port": vm.port})
    assert vm.host_key in scanned.splitlines(), scanned
    key = await client.call("keychaincredential.create", {
        "name": f"{name}-key", "type": "SSH_KEY_PAIR", "attributes": {"private_key": vm.private_key}})
    credentials = await client.call("keychaincredential.setup_ssh_connection", {
        "setup_type": "MANUAL",
        "connection_name": name,
        "private_key": {"generate_key": False, "existing_key_id": key["id"]},
        "manual_setup": {"host": vm.host, "port": vm.port, "username": vm.username,
                         "remote_host_key": scanned},
    })
    return credentials["id"]


def local_zfs_over_ssh(vm: OpenZFSVM) -> dict[str, Any]:
    """`Settings.local_zfs_ssh` making a server's own ZFS the guest's."""
    return {"host": vm.host, "port": vm.port, "username": vm.username, "private_key": vm.private_key,
            "remote_host_key": vm.host_key}


def task(source: str, target: str, credentials: int | None, **fields: Any) -> dict[str, Any]:
    """A PUSH over SSH (unless `fields` say otherwise) of SCHEMA snapshots, run by hand."""
    return {
        "name": f"{source} -> {target}",
        "direction": "PUSH",
        "transport": "SSH" if credentials is not None else "LOCAL",
        "ssh_credentials": credentials,
        "source_datasets": [source],
        "target_dataset": target,
        "recursive": False,
        "also_include_naming_schema": [SCHEMA],
        "auto": False,
        "retention_policy": "NONE",
        "readonly": "IGNORE",
        **fields,
    }


class JobWatch:
    """Every state of one job as its events arrive (the client's job callback)."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.started = asyncio.Event()

    def __call__(self, job: dict[str, Any]) -> None:
        self.states.append(job)
        self.started.set()

    @property
    def id(self) -> int:
        return self.states[-1]["id"]

    def extras(self) -> list[dict[str, Any]]:
        """The progress `extra` of every event that had one."""
        return [s["progress"]["extra"] for s in self.states if (s.get("progress") or {}).get("extra")]


async def run_task(client: Client, task_id: int) -> JobWatch:
    """`replication.run` to its end (raises the job's error); the watch has its progress events."""
    watch = JobWatch()
    await client.call("replication.run", task_id, job=True, callback=watch)
    return watch


async def job_log(server: TestServer, job_id: int) -> str:
    job = server.app.jobs.get(job_id)
    assert job is not None
    return await server.app.jobs.read_log(job) or ""


async def last_job_log(server: TestServer, client: Client, task_id: int) -> str:
    job = (await client.call("replication.get_instance", task_id))["job"]
    return await job_log(server, job["id"])


# --- the guest ----------------------------------------------------------------------------------------


async def prop(vm: OpenZFSVM, dataset: str, name: str) -> str:
    return (await vm.run(["zfs", "get", "-H", "-o", "value", name, dataset])).text.strip()


async def props(vm: OpenZFSVM, dataset: str, *names: str) -> dict[str, str]:
    out = await vm.run(["zfs", "get", "-H", "-o", "property,value", ",".join(names), dataset])
    return dict(line.split("\t", 1) for line in out.text.splitlines())


async def create_encrypted(vm: OpenZFSVM, dataset: str, *options: str) -> None:
    """An encryption root with PASSPHRASE (read from stdin: keylocation=prompt)."""
    await vm.run(["zfs", "create", "-o", "encryption=on", "-o", "keyformat=passphrase",
                  "-o", f"pbkdf2iters={PBKDF2_ITERS}", *options, dataset], input=f"{PASSPHRASE}\n".encode())


async def write_random(vm: OpenZFSVM, path: str, megabytes: int) -> str:
    """`megabytes` of incompressible data at `path` in the guest; returns its SHA-256."""
    await vm.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={megabytes}", "status=none"])
    return await sha256(vm, path)


async def sha256(vm: OpenZFSVM, path: str) -> str:
    return (await vm.run(["sha256sum", path])).text.split()[0]


async def mountpoint(vm: OpenZFSVM, dataset: str) -> str:
    return await prop(vm, dataset, "mountpoint")


async def load_key(vm: OpenZFSVM, dataset: str, key: str | None = None) -> None:
    """`zfs load-key` of an encryption root: from its keylocation, or `key` typed at the prompt."""
    argv = ["zfs", "load-key", *(["-L", "prompt"] if key is not None else []), dataset]
    await vm.run(argv, input=f"{key}\n".encode() if key is not None else None)


async def unload_key(vm: OpenZFSVM, dataset: str) -> None:
    """Unmount the encryption root's tree, then drop its key: only what `load-key` loads can mount again."""
    await vm.run(["zfs", "unmount", dataset], check=False)
    await vm.run(["zfs", "unload-key", "-r", dataset])


def stream_size(nvp_output: str) -> int:
    match = re.search(r"^size\s+(\d+)$", nvp_output, re.MULTILINE)
    assert match, nvp_output
    return int(match.group(1))


# --- this machine (zfs-fuse) --------------------------------------------------------------------------


def write_local_random(path: Path, megabytes: int) -> str:
    """Incompressible data in a local file (blocking: call in a thread); returns its SHA-256."""
    data = os.urandom(megabytes * 1024 * 1024)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
