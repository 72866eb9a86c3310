"""zfs-fuse for tests and the demo: start the daemon robustly, make and remove pools on sparse files.

Quirks of zfs-fuse 0.7 (Debian), measured here:

* `zfs-fuse --pidfile F` forks, the parent returns in ~0.2 s and `zpool list` answers at once. The
  daemon talks to `zfs`/`zpool` through `/var/run/zfs/zfs_socket` and holds `/var/lock/zfs/zfs_lock`.
* If F already exists, zfs-fuse exits with status 1 and prints nothing, even when the pid in it is
  dead: a daemon that was killed leaves exactly such a file, so a stale one must be removed first.
* A killed daemon leaves its FUSE mounts behind ("Transport endpoint is not connected") and the next
  daemon neither mounts over nor cleans them; they are lazily unmounted (`umount -l`) before a start.
* Pools in the daemon's cache (`/var/lib/zfs/zpool.cache`) are imported again on start, unmounted.
  Our pools use `cachefile=none` so a crash cannot bring them back, and `cleanup_leftovers()` destroys
  any pool named `<prefix><pid>x...` whose creating process is gone (`zpool destroy -f` works even when
  the pool is FAULTED because its file was deleted).
* Without a daemon every `zfs`/`zpool` command fails with "connect: ..." and "Please make sure that the
  zfs-fuse daemon is running."
* `readonly` of a mounted file system reads `off` with source `temporary` (the rw mount wins), even
  when set or inherited `on`; user properties and e.g. `compression` inherit normally.
* Right after a `zfs receive`, `zpool destroy` may fail with "pool is busy" for ~1-2 s with nothing
  mounted; `destroy_pool()` retries.
* Pool creation takes ~30 ms; 64 MiB is the smallest size it accepts.

Several test sessions may share one daemon; pool names carry the creating pid so that a session only
removes leftovers of dead ones, and the start sequence is serialised by an flock.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from middlewared_plugin.errors import CallError
from middlewared_plugin.remote.runner import LocalRunner, Runner

logger = logging.getLogger(__name__)

PIDFILE = Path("/var/run/zfs-fuse.pid")
START_LOCK = Path("/var/run/middlewared-plugin-zfs-fuse.lock")
DEFAULT_PREFIX = "mwpt"
MIN_POOL_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class FilePool:
    name: str
    image: Path  # the sparse backing file
    mountpoint: Path


def _runner(runner: Runner | None) -> Runner:
    return runner or LocalRunner()


def _daemon_pids() -> list[int]:
    """Live (non-zombie) zfs-fuse processes, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            comm = text[text.index("(") + 1:text.rindex(")")]
            state = text[text.rindex(")") + 2:].split(" ", 1)[0]
            if comm == "zfs-fuse" and state not in ("Z", "X"):
                pids.append(int(stat.parent.name))
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_fuse_mounts() -> list[str]:
    """Mount points of zfs-fuse's file systems and its kstat mount, deepest first."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        source, point, fstype, *_ = line.split(" ")
        if fstype == "fuse.zfs" or (fstype == "fuse" and source == "kstat"):
            points.append(point.replace("\\040", " "))
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


async def _answers(runner: Runner) -> bool:
    result = await runner.run(["zpool", "list", "-H", "-o", "name"], check=False, timeout=30)
    return result.returncode == 0


async def _wait_until_answering(runner: Runner, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _answers(runner):
            return True
        await asyncio.sleep(0.05)
    return False


async def ensure_daemon(runner: Runner | None = None, *, timeout: float = 20.0) -> None:
    """Make sure a zfs-fuse daemon answers, starting one (after cleaning a killed one's debris) if needed."""
    runner = _runner(runner)
    if await _answers(runner):
        return
    fd = os.open(START_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        if await _answers(runner):
            return
        if _daemon_pids():
            # Someone's daemon is still starting (or hung): wait for it rather than fight over the socket.
            if await _wait_until_answering(runner, timeout):
                return
            raise CallError(f"zfs-fuse (pid {_daemon_pids()}) runs but does not answer", errno.ETIMEDOUT)
        await asyncio.to_thread(PIDFILE.unlink, missing_ok=True)
        for point in _stale_fuse_mounts():
            await runner.run(["umount", "-l", point], check=False, timeout=30)
        started = await runner.run(["zfs-fuse", "--pidfile", str(PIDFILE)], check=False, timeout=60)
        if not await _wait_until_answering(runner, timeout):
            raise CallError(
                f"zfs-fuse did not answer within {timeout}s (start exit status {started.returncode}: "
                f"{started.stderr.decode(errors='replace').strip()})",
                errno.ETIMEDOUT,
            )
    finally:
        os.close(fd)


def new_pool_name(prefix: str = DEFAULT_PREFIX) -> str:
    """A unique pool name that records the creating pid, so leftovers of dead processes can be found."""
    return f"{prefix}{os.getpid()}x{secrets.token_hex(3)}"


async def create_file_pool(
    name: str, directory: Path | str, size: int = 128 * 1024 * 1024, runner: Runner | None = None,
) -> FilePool:
    """Create pool `name` on a sparse file in `directory`, mounted at `directory/name`, never cached."""
    directory = Path(directory)
    size = max(size, MIN_POOL_SIZE)
    image = directory / f"{name}.img"
    mountpoint = directory / name
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    # A sparse file: truncate allocates nothing.
    await asyncio.to_thread(os.truncate, _touch(image), size)
    await _runner(runner).run([
        "zpool", "create", "-o", "cachefile=none", "-m", str(mountpoint), name, str(image),
    ], timeout=120)
    return FilePool(name, image, mountpoint)


def _touch(path: Path) -> Path:
    path.touch(exist_ok=True)
    return path


async def destroy_pool(
    name: str, runner: Runner | None = None, *, image: Path | None = None, busy_timeout: float = 15.0,
) -> None:
    """Destroy a pool (forcing unmounts); missing pools are fine. Removes the backing file if given.

    Right after a receive zfs-fuse may answer "pool is busy" for a second or two although nothing is
    mounted; that is retried until `busy_timeout`.
    """
    runner = _runner(runner)
    deadline = time.monotonic() + busy_timeout
    while True:
        result = await runner.run(["zpool", "destroy", "-f", name], check=False, timeout=120)
        stderr = result.stderr.decode(errors="replace")
        if result.returncode == 0 or "no such pool" in stderr:
            break
        if "busy" not in stderr or time.monotonic() > deadline:
            raise CallError(f"zpool destroy {name}: {stderr.strip()}")
        await asyncio.sleep(0.25)
    if image is not None:
        await asyncio.to_thread(image.unlink, missing_ok=True)


async def cleanup_leftovers(prefix: str = DEFAULT_PREFIX, runner: Runner | None = None) -> list[str]:
    """Destroy pools named `<prefix><pid>x...` whose creating process is gone; returns their names."""
    runner = _runner(runner)
    out = (await runner.run(["zpool", "list", "-H", "-o", "name"], timeout=60)).text
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)x")
    destroyed = []
    for name in out.split():
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                await destroy_pool(name, runner)
            except CallError as exc:
                # zfs-fuse can keep a pool "busy" for good after its user was killed mid-receive; only a
                # daemon restart frees it. It is harmless to the pools of this run, so go on.
                logger.warning("Leftover pool %s cannot be destroyed: %s", name, exc)
                continue
            destroyed.append(name)
    return destroyed
