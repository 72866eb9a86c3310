"""The data dir: database, secret key, job logs. Only the server's own user may read anything in it.

`prepare` runs before anything is written there: it creates the dir 0700, refuses a dir another user owns
(whoever owns it could swap the database or the key under us), and tightens looser modes it finds on the
server's own files, saying so in the log (other people's files there, such as the demo's pools, are left as
they are). Files the server creates there are private from their first byte (`open_private`), whatever
the process umask.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from middlewared_plugin.errors import CallError

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
#: The directories below the data dir whose files are the server's. Anything else there (a demo's pool images,
#: the filesystems mounted from them, an administrator's notes) is not ours to change: only the server's own
#: top-level files (database, key, certificate) and these trees are tightened.
OWN_DIRS = ("jobs",)


def prepare(data_dir: Path) -> None:
    """Create or check the data dir and everything in it (see the module docstring); raise CallError to refuse."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = data_dir.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise CallError(f"Data dir {data_dir} is not a directory", errno.ENOTDIR)
    if info.st_uid != os.geteuid():
        raise CallError(
            f"Data dir {data_dir} is owned by uid {info.st_uid}, not by this server's user (uid {os.geteuid()}): "
            "refusing to use it. Give it to this user (chown) or choose another --data-dir.", errno.EPERM,
        )
    _tighten(data_dir, DIR_MODE)
    for entry in data_dir.iterdir():
        if entry.name in OWN_DIRS:
            _tighten_tree(entry)
        elif stat.S_ISREG(entry.lstat().st_mode):
            _tighten(entry, FILE_MODE)


def _tighten_tree(top: Path) -> None:
    """A directory of the server's own files; never one with another filesystem mounted on it or under it."""
    if top.is_symlink() or not top.is_dir() or os.path.ismount(top):
        return
    _tighten(top, DIR_MODE)
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not os.path.ismount(Path(root, d))]
        for name in dirs:
            _tighten(Path(root, name), DIR_MODE)
        for name in files:
            _tighten(Path(root, name), FILE_MODE)


def _tighten(path: Path, allowed: int) -> None:
    info = path.lstat()
    # A symbolic link's target is not ours to change; a socket is the protocol layer's (the dir guards it).
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~allowed:
        os.chmod(path, mode & allowed)
        logger.warning("%s was readable by other users (mode %o): changed to %o", path, mode, mode & allowed)


def open_private(path: Path, flags: int) -> int:
    """`os.open` that creates `path` with mode 0600 (the umask can only narrow it)."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
