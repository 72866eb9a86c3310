"""The SSH+NETCAT transport against real zfs-fuse pools and a real sshd on 127.0.0.1.

The "remote" is this same machine (same zfs-fuse daemon), so the remote helper and its zfs are visible in
/proc, and "remote" datasets live in the same pools as local ones.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.remote.ssh import SshConnectionPool, SshRunner, runner_for_credentials
from middlewared_plugin.replication.transports.base import PipeFailed
from middlewared_plugin.replication.transports.netcat import HELPER_SOURCE, NetcatTransport, accept, listen
from middlewared_plugin.zfs import Zfs
from middlewared_plugin.zfs.commands import recv_argv, send_argv
from tests.fixtures.sshd import SshdServer

# Only the helper's source has this line, so it finds helper processes in /proc.
HELPER_MARKER = b"The remote end of the SSH+NETCAT transport"


@pytest.fixture
async def remote(sshd: SshdServer, ssh_client_key: dict[str, str]) -> AsyncIterator[SshRunner]:
    pool = SshConnectionPool(idle_seconds=30)
    yield runner_for_credentials(sshd.credentials(ssh_client_key["private_key"]), pool=pool)
    await pool.close_all()


def make_transport(direction: str, active_side: str, local: LocalRunner, remote: SshRunner,
                   **options: object) -> NetcatTransport:
    source, target = (local, remote) if direction == "PUSH" else (remote, local)
    return NetcatTransport(source, target, remote_runner=remote, direction=direction, active_side=active_side,
                           **options)  # type: ignore[arg-type]


async def write_random(path: Path, size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    await asyncio.to_thread(path.write_bytes, data)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def stream_size(runner: LocalRunner, argv: list[str]) -> int:
    return len((await runner.run(argv)).stdout)


def processes(match: Callable[[bytes], bool]) -> list[int]:
    """Live processes on this machine (= the ssh server) whose NUL-separated cmdline matches."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and match(cmdline):
            found.append(int(entry.name))
    return found


async def until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed the connection (EOF, or a reset when it had unread data)."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports nobody listens on right now."""
    while True:
        first = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET6)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                socks.append(s)
                s.bind(("::", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
@pytest.mark.parametrize("active_side", ["LOCAL", "REMOTE"])
async def test_full_then_incremental(pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner,
                                     local_zfs: Zfs, remote: SshRunner, direction: str, active_side: str) -> None:
    src, dst = pool_pair
    await local_zfs.create_dataset(f"{src.name}/data")
    await write_random(src.mountpoint / "data" / "one", 3_000_000, 1)
    await local_zfs.create_snapshots(f"{src.name}/data", "s1")
    transport = make_transport(direction, active_side, local_runner, remote)
    counted: list[int] = []

    full = send_argv(f"{src.name}/data@s1")
    result = await transport.pipe(full, recv_argv(f"{dst.name}/data"), on_bytes=counted.append)
    assert result.bytes == sum(counted) == await stream_size(local_runner, full)

    await write_random(src.mountpoint / "data" / "two", 2_000_000, 2)
    await local_zfs.create_snapshots(f"{src.name}/data", "s2")
    counted.clear()
    incremental = send_argv(f"{src.name}/data@s2", base="s1")
    result = await transport.pipe(incremental, recv_argv(f"{dst.name}/data"), on_bytes=counted.append)
    assert result.bytes == sum(counted) == await stream_size(local_runner, incremental)

    source = {s.name: s.guid for s in await local_zfs.list_snapshots(f"{src.name}/data")}
    target = {s.name: s.guid for s in await local_zfs.list_snapshots(f"{dst.name}/data")}
    assert target == source and set(target) == {"s1", "s2"}
    for name in ("one", "two"):
        assert digest(dst.mountpoint / "data" / name) == digest(src.mountpoint / "data" / name)


@pytest.mark.parametrize("active_side", ["LOCAL", "REMOTE"])
async def test_receive_refusal_fails_the_receive_stage_with_zfs_stderr(
        pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner, local_zfs: Zfs, remote: SshRunner,
        active_side: str) -> None:
    src, dst = pool_pair
    await local_zfs.create_dataset(f"{src.name}/data")
    await local_zfs.create_snapshots(f"{src.name}/data", "s1")
    await local_zfs.create_dataset(f"{dst.name}/data")  # exists already: a full receive without -F is refused
    transport = make_transport("PUSH", active_side, local_runner, remote)
    with pytest.raises(PipeFailed) as caught:
        await transport.pipe(send_argv(f"{src.name}/data@s1"), recv_argv(f"{dst.name}/data"), on_bytes=lambda n: None)
    side = "Active side" if active_side == "REMOTE" else "Passive side"
    assert caught.value.stage == "receive" and not caught.value.transient
    assert f"{side} (zfs receive on {remote.name}): " in caught.value.errmsg
    assert "exists" in caught.value.errmsg


async def test_send_failure_fails_the_send_stage(pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner,
                                                 remote: SshRunner) -> None:
    src, dst = pool_pair
    transport = make_transport("PULL", "REMOTE", local_runner, remote)
    with pytest.raises(PipeFailed) as caught:
        await transport.pipe(send_argv(f"{src.name}@nosuch"), recv_argv(f"{dst.name}/data"), on_bytes=lambda n: None)
    assert caught.value.stage == "send" and not caught.value.transient
    assert f"Active side (zfs send on {remote.name}): " in caught.value.errmsg
    assert "nosuch" in caught.value.errmsg


async def test_local_listener_rejects_a_wrong_token_and_keeps_waiting() -> None:
    loop = asyncio.get_running_loop()
    token = os.urandom(32).hex().encode()
    with listen("127.0.0.1", 1024, 65535) as server:
        port = server.getsockname()[1]
        accepting = asyncio.ensure_future(accept(server, token, timeout=10))

        intruder = socket.create_connection(("127.0.0.1", port))
        intruder.sendall(b"x" * len(token))
        assert await asyncio.to_thread(closed_by_peer, intruder)
        intruder.close()
        assert not accepting.done()

        peer = socket.create_connection(("127.0.0.1", port))
        peer.sendall(token + b"data")
        conn = await asyncio.wait_for(accepting, 5)
        assert await loop.sock_recv(conn, 4) == b"data"
        conn.close()
        peer.close()


async def test_local_listener_gives_up_after_its_timeout() -> None:
    with listen("127.0.0.1", 1024, 65535) as server, pytest.raises(TimeoutError):
        await accept(server, b"t" * 64, timeout=0.3)


async def test_remote_helper_rejects_a_wrong_token_and_keeps_waiting(
        pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner, local_zfs: Zfs, remote: SshRunner) -> None:
    src, dst = pool_pair
    await local_zfs.create_dataset(f"{src.name}/data")
    await local_zfs.create_snapshots(f"{src.name}/data", "s1")
    token = os.urandom(32).hex()
    helper = await remote.start(["python3", "-u", "-c", HELPER_SOURCE], stdin=True, stdout=True)
    config = {"argv": recv_argv(f"{dst.name}/data"), "role": "receive", "token": token, "timeout": 20,
              "listen": ["127.0.0.1", 1024, 65535]}
    await helper.write(json.dumps(config).encode() + b"\n")
    lines = bytearray()
    while lines.count(b"\n") < 1:
        lines += await helper.read(4096)
    port = json.loads(lines.split(b"\n")[0])["listening"]

    intruder = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
    intruder.sendall(b"0" * len(token) + b"junk stream")
    assert await asyncio.to_thread(closed_by_peer, intruder)
    intruder.close()

    stream = (await local_runner.run(send_argv(f"{src.name}/data@s1"))).stdout
    peer = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
    await asyncio.to_thread(peer.sendall, token.encode() + stream)
    peer.shutdown(socket.SHUT_WR)
    while lines.count(b"\n") < 2:
        chunk = await helper.read(4096)
        assert chunk, "helper ended without a report"
        lines += chunk
    peer.close()
    assert json.loads(lines.split(b"\n")[1]) == {"exit": 0, "stderr": ""}
    assert await helper.wait() == 0
    assert await local_zfs.exists(f"{dst.name}/data@s1")


@pytest.mark.parametrize("active_side", ["LOCAL", "REMOTE"])
async def test_listener_takes_the_first_free_port_of_the_range(
        pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner, local_zfs: Zfs, remote: SshRunner,
        active_side: str, caplog: pytest.LogCaptureFixture) -> None:
    src, dst = pool_pair
    await local_zfs.create_dataset(f"{src.name}/data")
    await local_zfs.create_snapshots(f"{src.name}/data", "s1")
    first = free_ports(3)
    busy = socket.socket()
    busy.bind(("0.0.0.0", first))
    busy.listen()
    try:
        transport = make_transport("PUSH", active_side, local_runner, remote, port_min=first, port_max=first + 2)
        with caplog.at_level(logging.INFO, logger="middlewared_plugin.replication.transports.netcat"):
            await transport.pipe(send_argv(f"{src.name}/data@s1"), recv_argv(f"{dst.name}/data"),
                                 on_bytes=lambda n: None)
    finally:
        busy.close()
    assert f"port {first + 1}" in caplog.text and f"port {first}," not in caplog.text
    assert await local_zfs.exists(f"{dst.name}/data@s1")


@pytest.mark.parametrize("active_side", ["LOCAL", "REMOTE"])
async def test_no_free_port_in_the_range_is_a_transport_error(
        pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner, remote: SshRunner, active_side: str) -> None:
    src, dst = pool_pair
    port = free_ports(1)
    busy = socket.socket()
    busy.bind(("0.0.0.0", port))
    busy.listen()
    try:
        transport = make_transport("PUSH", active_side, local_runner, remote, port_min=port, port_max=port)
        with pytest.raises(PipeFailed) as caught:
            await transport.pipe(send_argv(f"{src.name}@x"), recv_argv(f"{dst.name}/data"), on_bytes=lambda n: None)
    finally:
        busy.close()
    assert caught.value.stage == "transport"
    assert f"no free port in {port}-{port}" in caught.value.errmsg


def _stage_process(pools: tuple[str, ...]) -> Callable[[bytes], bool]:
    def match(cmdline: bytes) -> bool:
        if HELPER_MARKER in cmdline:
            return True
        argv = cmdline.split(b"\0")
        return argv[0].endswith(b"zfs") and argv[1:2] in ([b"send"], [b"receive"]) and any(
            p.encode() in cmdline for p in pools)
    return match


@pytest.mark.parametrize(("direction", "active_side"), [("PUSH", "REMOTE"), ("PULL", "LOCAL")])
async def test_abort_kills_both_ends_and_the_next_run_succeeds(
        pool_pair: tuple[FilePool, FilePool], local_runner: LocalRunner, local_zfs: Zfs, remote: SshRunner,
        direction: str, active_side: str) -> None:
    src, dst = pool_pair
    await local_zfs.create_dataset(f"{src.name}/data")
    await write_random(src.mountpoint / "data" / "big", 40_000_000, 3)
    await local_zfs.create_snapshots(f"{src.name}/data", "s1")
    transport = make_transport(direction, active_side, local_runner, remote)
    started = asyncio.Event()
    argv = (send_argv(f"{src.name}/data@s1"), recv_argv(f"{dst.name}/data"))
    task = asyncio.ensure_future(transport.pipe(*argv, on_bytes=lambda n: started.set()))
    await asyncio.wait_for(started.wait(), 30)
    matcher = _stage_process((src.name, dst.name))
    assert len(processes(matcher)) >= 3  # helper, zfs send, zfs receive: the transfer is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(lambda: not processes(matcher)), "helper or zfs survived the abort"

    result = await transport.pipe(*argv, on_bytes=lambda n: None)
    assert result.bytes > 40_000_000
    assert await local_zfs.exists(f"{dst.name}/data@s1")


@pytest.mark.parametrize("direction", ["PUSH", "PULL"])
async def test_a_stalled_stream_is_killed_as_a_transient_failure(local_runner: LocalRunner, remote: SshRunner,
                                                                 direction: str) -> None:
    # A sender that never writes stands in for a hung `zfs send`; the transport runs whatever argv it gets.
    silent = ["sleep", "37.5"]
    transport = make_transport(direction, "LOCAL", local_runner, remote)
    started = time.monotonic()
    with pytest.raises(PipeFailed) as caught:
        await transport.pipe(silent, ["cat"], on_bytes=lambda n: None, stall_timeout=1.0)
    assert time.monotonic() - started < 10
    assert caught.value.stage == "transport" and caught.value.transient
    assert "no data for 1s" in caught.value.errmsg
    assert await until(lambda: not processes(lambda cmdline: cmdline == b"sleep\0" + b"37.5\0"))
