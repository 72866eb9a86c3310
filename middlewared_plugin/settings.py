"""Server configuration, from the command line and the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MIDDLEWARED_PLUGIN_DATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "./data")).absolute()


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    listen_host: str = "127.0.0.1"
    listen_port: int = 6000
    socket_path: Path | None = None
    #: What this server's `ssh_pair` announces: the SSH port and host keys of this machine.
    ssh_port: int = 22
    ssh_host_key_files: tuple[Path, ...] = field(
        default_factory=lambda: tuple(sorted(Path("/etc/ssh").glob("ssh_host_*_key.pub")))
    )
    #: Run the minute scheduler (periodic snapshots, scheduled replication).
    scheduler_enabled: bool = True
    #: Where this server's own ("local") ZFS lives: None for this machine, or SSH_CREDENTIALS-like attributes
    #: (host, port, username, private_key text, remote_host_key) of another host whose zfs we manage.
    local_zfs_ssh: dict[str, Any] | None = None
    #: Where `pool.import_find` / `pool.import_pool` look for exported pools (`zpool import -d`), on the host of
    #: the local ZFS; empty: ZFS's own search of the system's devices. Pools on files need their directory.
    pool_import_dirs: tuple[str, ...] = ()

    @property
    def unix_socket(self) -> Path:
        return self.socket_path or self.data_dir / "middlewared.sock"
