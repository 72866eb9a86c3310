"""The SSH runner against a real OpenSSH sshd on 127.0.0.1 (tests/fixtures/sshd.py).

The server runs on this machine, so what happens "remotely" is checked directly in /proc.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import CommandFailed
from middlewared_plugin.remote.ssh import (
    SshConnectionPool,
    SshParams,
    SshRunner,
    runner_for_credentials,
    scan_host_keys,
)
from tests.fixtures.sshd import SshdServer, generate_client_key

HOST_KEY_MESSAGE = "the host key does not match the stored one"


@pytest.fixture
async def pool() -> AsyncIterator[SshConnectionPool]:
    pool = SshConnectionPool(idle_seconds=30)
    yield pool
    await pool.close_all()


@pytest.fixture
def client_key() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        private_key, public_key = generate_client_key(Path(tmp))
    return {"private_key": private_key, "public_key": public_key}


def runner(server: SshdServer, private_key: str, pool: SshConnectionPool, **overrides: object) -> SshRunner:
    return runner_for_credentials(server.credentials(private_key, **overrides), pool=pool)


def pids_running(*argv: str) -> list[int]:
    """Processes on this machine (= the ssh server) whose command line is exactly `argv`."""
    wanted = ("\0".join(argv) + "\0").encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry.name}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cmdline == wanted and state != "Z":
                found.append(int(entry.name))
    return found


async def until(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def ecdsa_p384_public_key(directory: Path) -> str:
    path = directory / "p384"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text()


def unique_sleep() -> list[str]:
    """A `sleep` whose command line no other test uses, so /proc can tell it apart."""
    return ["sleep", f"{random.randint(300, 900)}.{random.randint(100000, 999999)}"]


# -- running commands --------------------------------------------------------------------------------------

async def test_runs_commands_as_the_credential_user(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    assert r.name == f"root@127.0.0.1:{sshd.port}"
    assert (await r.run(["echo", "hello"])).text == "hello\n"
    assert (await r.run(["id", "-u"])).text.strip() == "0"


async def test_arguments_reach_the_remote_program_unchanged(sshd, ssh_client_key, pool, tmp_path) -> None:
    marker = tmp_path / "pwned"
    args = [
        "two words", "; rm -rf x", f"$(touch {marker})", f"`touch {marker}`", "'single'", '"double"',
        "back\\slash", "*", "", "new\nline", "&& echo hi | cat >", "$HOME", "~", "a\tb", "é ü",
    ]
    r = runner(sshd, ssh_client_key["private_key"], pool)
    result = await r.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args])
    assert json.loads(result.text) == args
    assert not marker.exists()


async def test_nonzero_exit_raises_command_failed_with_stderr(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    with pytest.raises(CommandFailed) as e:
        await r.run(["ls", "/no/such/dir"])
    assert e.value.returncode == 2
    assert "No such file or directory" in e.value.stderr
    assert e.value.errno == errno.EFAULT
    result = await r.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


async def test_remote_commands_use_the_c_locale(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    assert (await r.run(["printenv", "LC_ALL"])).text == "C\n"


async def test_run_feeds_input(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    data = os.urandom(3 * 1024 * 1024)
    result = await r.run(["sha256sum"], input=data)
    assert result.text.split()[0] == hashlib.sha256(data).hexdigest()
    # A command that ignores its input is not an error.
    assert (await r.run(["true"], input=data)).returncode == 0


async def test_streaming_both_ways_through_cat(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    data = os.urandom(8 * 1024 * 1024 + 123)
    proc = await r.start(["cat"], stdin=True, stdout=True)
    received = bytearray()

    async def send() -> None:
        for i in range(0, len(data), 100_000):
            await proc.write(data[i:i + 100_000])
        await proc.close_stdin()

    async def receive() -> None:
        while chunk := await proc.read(65536):
            received.extend(chunk)

    await asyncio.gather(send(), receive())
    assert await proc.wait() == 0
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_streaming_download_and_upload(sshd, ssh_client_key, pool, tmp_path) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    size = 5 * 1024 * 1024
    down = await r.start(["head", "-c", str(size), "/dev/urandom"], stdout=True)
    count = 0
    while chunk := await down.read(1 << 20):
        count += len(chunk)
    assert await down.wait() == 0
    assert count == size

    target = tmp_path / "uploaded"
    data = os.urandom(size)
    up = await r.start(["dd", f"of={target}", "bs=1M", "status=none"], stdin=True)
    await up.write(data)
    await up.close_stdin()
    assert await up.wait() == 0
    assert target.read_bytes() == data


async def test_stderr_of_a_started_command_is_collected(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    for _ in range(10):  # the output races the exit status; every run must keep it
        proc = await r.start(["sh", "-c", "echo failing >&2; exit 7"])
        assert await proc.wait() == 7
        assert proc.stderr_text() == "failing\n"


# -- connection pooling ------------------------------------------------------------------------------------

async def test_calls_share_one_connection(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    first = (await r.run(["printenv", "SSH_CONNECTION"])).text
    # A second runner for the same credential, and concurrent calls, ride on the same TCP connection.
    other = runner(sshd, ssh_client_key["private_key"], pool)
    results = await asyncio.gather(*(x.run(["printenv", "SSH_CONNECTION"]) for x in (r, other, r, other)))
    assert {res.text for res in results} == {first}
    assert pool.connects == 1


async def test_concurrent_first_calls_make_one_connection(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    results = await asyncio.gather(*(r.run(["printenv", "SSH_CONNECTION"]) for _ in range(6)))
    assert len({res.text for res in results}) == 1
    assert pool.connects == 1


async def test_idle_connection_is_closed_and_replaced(sshd, ssh_client_key) -> None:
    pool = SshConnectionPool(idle_seconds=0.3)
    try:
        r = runner(sshd, ssh_client_key["private_key"], pool)
        first = (await r.run(["printenv", "SSH_CONNECTION"])).text
        client_port = first.split()[1]
        # The server sees that connection end once the pool closes it.
        goodbye = f"Disconnected from user root 127.0.0.1 port {client_port}"
        assert await until(lambda: goodbye in sshd.log_path.read_text())
        second = (await r.run(["printenv", "SSH_CONNECTION"])).text
        assert second != first
        assert pool.connects == 2
    finally:
        await pool.close_all()


async def test_connection_stays_open_while_a_command_runs_longer_than_idle_time(sshd, ssh_client_key) -> None:
    pool = SshConnectionPool(idle_seconds=0.2)
    try:
        r = runner(sshd, ssh_client_key["private_key"], pool)
        assert (await r.run(["sh", "-c", "sleep 0.8; echo done"])).text == "done\n"
        assert pool.connects == 1
    finally:
        await pool.close_all()


async def test_pooled_connection_survives_server_restart(sshd_fresh, client_key, pool) -> None:
    sshd_fresh.add_authorized_key(client_key["public_key"])
    r = runner(sshd_fresh, client_key["private_key"], pool)
    first = (await r.run(["printenv", "SSH_CONNECTION"])).text
    sshd_fresh.restart()
    # The dead pooled connection is replaced transparently: the command had not started on it.
    second = (await r.run(["printenv", "SSH_CONNECTION"])).text
    assert second != first
    assert pool.connects == 2


# -- refusals ----------------------------------------------------------------------------------------------

async def test_unknown_pinned_host_key_refuses_to_connect(sshd, ssh_client_key, pool, tmp_path) -> None:
    _, stranger = generate_client_key(tmp_path, "stranger")
    r = runner(sshd, ssh_client_key["private_key"], pool, remote_host_key=stranger)
    with pytest.raises(CallError) as e:
        await r.run(["true"])
    assert HOST_KEY_MESSAGE in e.value.errmsg
    assert f"127.0.0.1:{sshd.port}" in e.value.errmsg
    assert e.value.errno == errno.EPERM
    assert pool.connects == 0


async def test_pinned_key_of_a_type_the_server_lacks_refuses_with_the_same_message(
        sshd, ssh_client_key, pool, tmp_path) -> None:
    # sshd's ECDSA host key is nistp256; a stored nistp384 key can never be presented.
    p384 = ecdsa_p384_public_key(tmp_path)
    r = runner(sshd, ssh_client_key["private_key"], pool, remote_host_key=p384)
    with pytest.raises(CallError) as e:
        await r.run(["true"])
    assert HOST_KEY_MESSAGE in e.value.errmsg


async def test_changed_server_host_key_refuses_to_connect(sshd_fresh, client_key, pool) -> None:
    sshd_fresh.add_authorized_key(client_key["public_key"])
    stored = sshd_fresh.credentials(client_key["private_key"])
    r = runner_for_credentials(stored, pool=pool)
    assert (await r.run(["echo", "ok"])).text == "ok\n"
    sshd_fresh.swap_host_keys()
    with pytest.raises(CallError) as e:
        await r.run(["echo", "ok"])
    assert HOST_KEY_MESSAGE in e.value.errmsg
    # Re-scanned keys make a new credential identity that connects again.
    rescanned = runner_for_credentials({**stored, "remote_host_key": sshd_fresh.remote_host_key}, pool=pool)
    assert (await rescanned.run(["echo", "ok"])).text == "ok\n"


async def test_stored_host_key_with_hostname_column_is_accepted(sshd, ssh_client_key, pool) -> None:
    stored = "".join(f"truenas.local {line}\n" for line in sshd.host_key_lines)
    r = runner(sshd, ssh_client_key["private_key"], pool, remote_host_key=stored)
    assert (await r.run(["echo", "ok"])).text == "ok\n"


async def test_closed_port_is_connection_refused(ssh_client_key, pool, sshd) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool, port=_closed_port())
    with pytest.raises(CallError) as e:
        await r.run(["true"])
    assert e.value.errno == errno.ECONNREFUSED
    assert "refused" in e.value.errmsg


async def test_unresponsive_server_times_out(ssh_client_key, pool, sshd) -> None:
    # A listening socket that never answers the SSH banner.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        r = runner(sshd, ssh_client_key["private_key"], pool, port=silent.getsockname()[1], connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(CallError) as e:
            await r.run(["true"])
    assert e.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 5


async def test_unauthorized_key_fails_authentication(sshd, client_key, pool) -> None:
    r = runner(sshd, client_key["private_key"], pool)  # never added to authorized_keys
    with pytest.raises(CallError) as e:
        await r.run(["true"])
    assert e.value.errno == errno.EACCES
    assert "authentication failed" in e.value.errmsg


async def test_key_rotation(sshd_fresh, pool, tmp_path) -> None:
    old_private, old_public = generate_client_key(tmp_path, "old")
    new_private, new_public = generate_client_key(tmp_path, "new")
    sshd_fresh.add_authorized_key(old_public)
    old = runner(sshd_fresh, old_private, pool)
    assert (await old.run(["echo", "old"])).text == "old\n"

    sshd_fresh.add_authorized_key(new_public)
    sshd_fresh.remove_authorized_key(old_public)
    new = runner(sshd_fresh, new_private, pool)
    assert (await new.run(["echo", "new"])).text == "new\n"
    assert pool.connects == 2  # new key material, new connection

    await old.close()  # drop the connection that was authenticated before the rotation
    with pytest.raises(CallError) as e:
        await old.run(["true"])
    assert e.value.errno == errno.EACCES


# -- host key scan -----------------------------------------------------------------------------------------

async def test_scan_returns_every_host_key_of_the_server(sshd) -> None:
    scanned = await scan_host_keys(sshd.host, sshd.port, 5)
    assert scanned.endswith("\n")
    assert sorted(scanned.splitlines()) == sorted(sshd.host_key_lines)


async def test_scanned_keys_are_accepted_as_pinned_keys(sshd, ssh_client_key, pool) -> None:
    scanned = await scan_host_keys(sshd.host, sshd.port, 5)
    r = runner(sshd, ssh_client_key["private_key"], pool, remote_host_key=scanned)
    assert (await r.run(["echo", "ok"])).text == "ok\n"


async def test_scan_of_closed_port_is_refused() -> None:
    with pytest.raises(CallError) as e:
        await scan_host_keys("127.0.0.1", _closed_port(), 5)
    assert e.value.errno == errno.ECONNREFUSED
    assert e.value.errmsg.startswith("ssh-keyscan failed")


async def test_scan_of_silent_server_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(CallError) as e:
            await scan_host_keys("127.0.0.1", silent.getsockname()[1], 0.5)
    assert (e.value.errno, e.value.errmsg) == (errno.ETIMEDOUT, "SSH timeout")


# -- cancelling and killing --------------------------------------------------------------------------------

async def test_cancelling_run_kills_the_remote_command(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    argv = unique_sleep()
    task = asyncio.ensure_future(r.run(argv))
    assert await until(lambda: pids_running(*argv))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(lambda: not pids_running(*argv), timeout=3)


async def test_killing_a_started_process_kills_its_whole_process_group(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    argv = unique_sleep()
    # The sleep is a child of a shell that waits for it: the kill must reach both.
    proc = await r.start(["sh", "-c", f"{' '.join(argv)}; echo after"], stdin=True, stdout=True)
    assert await until(lambda: pids_running(*argv))
    proc.kill()
    assert await until(lambda: not pids_running(*argv), timeout=3)
    assert await proc.read(100) == b""


async def test_killing_cat_that_waits_for_input(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    marker = f"/tmp/ssh-test-{random.randint(0, 1 << 30)}"
    proc = await r.start(["cat", "-", marker], stdin=True, stdout=True)
    await proc.write(b"hello\n")
    assert await proc.read(100) == b"hello\n"
    assert pids_running("cat", "-", marker)
    proc.kill()
    assert await until(lambda: not pids_running("cat", "-", marker), timeout=3)


async def test_cancelling_wait_kills_the_remote_command(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    argv = unique_sleep()
    proc = await r.start(argv)
    assert await until(lambda: pids_running(*argv))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(proc.wait(), 0.2)
    assert await until(lambda: not pids_running(*argv), timeout=3)


async def test_run_timeout_kills_the_remote_command(sshd, ssh_client_key, pool) -> None:
    r = runner(sshd, ssh_client_key["private_key"], pool)
    argv = unique_sleep()
    seen = asyncio.ensure_future(until(lambda: pids_running(*argv)))
    with pytest.raises(CallError) as e:
        await r.run(argv, timeout=1.5)
    assert e.value.errno == errno.ETIMEDOUT
    assert await seen  # it did run, so its disappearance below means something
    assert await until(lambda: not pids_running(*argv), timeout=3)
    # The connection is still good for the next command.
    assert (await r.run(["echo", "still here"])).text == "still here\n"
    assert pool.connects == 1


async def test_server_killed_mid_transfer_is_a_connection_error(sshd_fresh, client_key, pool) -> None:
    sshd_fresh.add_authorized_key(client_key["public_key"])
    r = runner(sshd_fresh, client_key["private_key"], pool)
    proc = await r.start(["cat"], stdin=True, stdout=True)
    await proc.write(b"x" * 100_000)
    assert len(await proc.read(100_000)) > 0
    sshd_fresh.kill()
    with pytest.raises(CallError) as e:
        while await proc.read(65536):
            pass
        await proc.wait()
    assert e.value.errno == errno.ECONNRESET
    assert "connection lost" in e.value.errmsg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_params_identity_changes_with_key_material(ssh_client_key, sshd, tmp_path) -> None:
    base = SshParams.from_credentials(sshd.credentials(ssh_client_key["private_key"]))
    other_key, _ = generate_client_key(tmp_path)
    assert base.pool_key == SshParams.from_credentials(sshd.credentials(ssh_client_key["private_key"])).pool_key
    assert base.pool_key != SshParams.from_credentials(sshd.credentials(other_key)).pool_key
    assert base.pool_key != SshParams.from_credentials(
        sshd.credentials(ssh_client_key["private_key"], remote_host_key=sshd.host_key_lines[0])).pool_key
    assert ssh_client_key["private_key"] not in repr(base)
