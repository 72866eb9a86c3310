"""Server configuration, from the command line and the environment."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MIDDLEWARED_PLUGIN_DATA"
#: No browser blocks it (6000, TrueNAS's own middleware port, is X11's and on every browser's unsafe-port list).
DEFAULT_PORT = 8600
TLS_MODES = ("auto", "on", "off")


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "./data")).absolute()


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    socket_path: Path | None = None
    #: HTTPS/WSS on the TCP listener: "auto" = on unless the listen address is loopback (the unix socket is
    #: always plain). Without tls_cert/tls_key a self-signed certificate is made in the data dir on first start.
    tls: str = "auto"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Browser origins allowed to open the API besides the server's own (`https://ui.example:443`).
    allowed_origins: tuple[str, ...] = ()
    #: Host names browsers may reach this server by besides loopback names, the listen address and this
    #: machine's host name (anything else is refused: DNS rebinding).
    server_names: tuple[str, ...] = ()
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
    #: How long `pool.dataset.delete` keeps retrying a dataset ZFS reports busy before answering EBUSY
    #: (zfs-fuse reports it for a moment after a receive or an unmount with nothing using the dataset).
    dataset_busy_timeout: float = 10.0

    @property
    def unix_socket(self) -> Path:
        return self.socket_path or self.data_dir / "middlewared.sock"

    @property
    def tls_enabled(self) -> bool:
        return self.tls == "on" or (self.tls == "auto" and not is_loopback(self.listen_host))

    @property
    def page_url(self) -> str:
        """The web page's URL as printed for people to open (`http(s)://HOST:PORT/`)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{'https' if self.tls_enabled else 'http'}://{host}:{self.listen_port}/"


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); "" and 0.0.0.0 (every interface) are not."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
