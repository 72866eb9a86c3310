"""Issue 11 item 6: the data dir (database and its WAL, secret key, job logs) is readable by its owner only.

A fresh data dir is created 0700 and every file in it 0600 from its first byte, whatever the umask; at start
looser modes are tightened (and logged), and a data dir owned by another user is refused with a clear message.
Root still reaches the server through the unix socket in it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from middlewared_plugin.client import Client
from tests.fixtures.server import TestServer
from tests.integration.protocol.sample_services import SampleService, install

NOBODY = 65534


@pytest.fixture
def parent() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mwp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: without care, new files would be world-readable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def private_entries(data_dir: Path) -> dict[str, int]:
    """Mode of every directory and regular file under data_dir (the socket is the dir's to guard)."""
    modes = {".": mode(data_dir)}
    for path in data_dir.rglob("*"):
        if path.is_dir() or path.is_file():
            modes[str(path.relative_to(data_dir))] = mode(path)
    return modes


async def run_logged_job(server: TestServer) -> int:
    await install(server.app, SampleService)
    client = await server.client()
    assert await client.call("sample.write_logs", 3, job=True) == 3
    [job] = await client.call("core.get_jobs", [["method", "=", "sample.write_logs"]])
    return job["id"]


async def test_new_data_dir_and_every_file_in_it_are_private(parent: Path, loose_umask: None) -> None:
    data_dir = parent / "data"
    server = await TestServer(data_dir).start()
    try:
        job_id = await run_logged_job(server)
        await asyncio.sleep(0.1)  # job history is written in the background
        modes = private_entries(data_dir)
        for name in ("middlewared.sqlite", "middlewared.sqlite-wal", "middlewared.sqlite-shm", "secret.key",
                     f"jobs/{job_id}.log"):
            assert modes.get(name) == 0o600, (name, modes)
        assert modes["."] == 0o700 and modes["jobs"] == 0o700, modes
        assert all(m & 0o077 == 0 for m in modes.values()), modes
        # Root still gets in through the unix socket inside the private dir.
        async with Client(server.socket_uri) as root:
            assert (await root.call("auth.me"))["pw_name"] == "root"
    finally:
        await server.stop()


async def test_loose_modes_are_tightened_at_start_and_logged(parent: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = parent / "data"
    server = await TestServer(data_dir).start()
    job_id = await run_logged_job(server)
    await server.stop()
    loosened = [data_dir / "middlewared.sqlite", data_dir / "secret.key", data_dir / "jobs" / f"{job_id}.log"]
    for path in loosened:
        path.chmod(0o644)
    for path in (data_dir, data_dir / "jobs"):
        path.chmod(0o755)

    with caplog.at_level(logging.WARNING):
        await server.start()
    try:
        modes = private_entries(data_dir)
        assert all(m & 0o077 == 0 for m in modes.values()), modes
        assert modes["."] == 0o700 and modes["middlewared.sqlite"] == 0o600, modes
        logged = caplog.text
        for path in [*loosened, data_dir, data_dir / "jobs"]:
            assert str(path) in logged, (path, logged)
        # The server works on with what it had.
        assert await (await server.client()).call("core.get_jobs", [["id", "=", job_id]], {"count": True}) == 1
    finally:
        await server.stop()


def test_data_dir_of_another_user_is_refused(parent: Path) -> None:
    data_dir = parent / "data"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, NOBODY, NOBODY)
    command = [sys.executable, "-m", "middlewared_plugin", "serve", "--data-dir", str(data_dir),
               "--listen", "127.0.0.1:0"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started on a data dir owned by another user")
    assert done.returncode != 0
    assert f"Data dir {data_dir} is owned by uid {NOBODY}" in done.stderr and "refusing" in done.stderr, done.stderr
    assert list(data_dir.iterdir()) == []  # nothing was written into it


async def test_files_in_the_data_dir_that_are_not_the_servers_keep_their_modes(parent: Path) -> None:
    # The demo keeps its pool images and their mounted filesystems below the data dir: users' data there is
    # not the server's to change.
    data_dir = parent / "data"
    data_dir.mkdir(mode=0o700)
    photos = data_dir / "pools" / "tank" / "photos"
    photos.mkdir(parents=True)
    picture = photos / "cat.jpg"
    picture.write_bytes(b"\xff\xd8")
    for path, mode in ((data_dir / "pools", 0o755), (photos, 0o755), (picture, 0o644)):
        path.chmod(mode)

    server = await TestServer(data_dir).start()
    try:
        assert stat.S_IMODE(picture.stat().st_mode) == 0o644
        assert stat.S_IMODE(photos.stat().st_mode) == 0o755
        assert stat.S_IMODE((data_dir / "middlewared.sqlite").stat().st_mode) == 0o600
    finally:
        await server.stop()
