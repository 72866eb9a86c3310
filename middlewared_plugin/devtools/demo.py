"""The demo: file-backed zfs-fuse pools `tank` and `backup`, an `admin` user, the server, the page URL.

Run by `scripts/demo.sh`. Pools live on sparse files under the data dir and are imported again on the
next run; the admin password is printed each run (a new one is set every time).
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
from pathlib import Path

from middlewared_plugin.app import App
from middlewared_plugin.cli import serve
from middlewared_plugin.devtools.zfs_fuse import create_file_pool, ensure_daemon
from middlewared_plugin.remote.runner import LocalRunner
from middlewared_plugin.settings import DEFAULT_PORT, Settings

DEMO_POOLS = ("tank", "backup")
POOL_SIZE = 1024 * 1024 * 1024


async def prepare_pools(directory: Path) -> None:
    runner = LocalRunner()
    await ensure_daemon(runner)
    for name in DEMO_POOLS:
        if (await runner.run(["zpool", "list", name], check=False)).returncode == 0:
            continue
        image = directory / f"{name}.img"
        if image.exists():
            await runner.run(["zpool", "import", "-d", str(directory), name])
            continue
        await create_file_pool(name, directory, POOL_SIZE, runner)
        if name == "tank":
            for dataset in ("tank/documents", "tank/photos", "tank/photos/2026"):
                await runner.run(["zfs", "create", dataset])
            await asyncio.to_thread((directory / "tank" / "documents" / "README.txt").write_text,
                                    "Demo data replicated by middlewared_plugin.\n")


async def set_admin_password(settings: Settings) -> str:
    password = secrets.token_urlsafe(12)
    app = App(settings, service_classes=[])
    await app.store.open()
    try:
        await app.accounts.set_password("admin", password)
    finally:
        await app.store.close()
    return password


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/middlewared-plugin"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    return parser


def demo_settings(args: argparse.Namespace) -> Settings:
    settings = Settings(data_dir=args.data_dir.absolute(), listen_port=args.port)
    # The demo's pools are files: export and import find them here.
    settings.pool_import_dirs = (str(settings.data_dir / "pools"),)
    return settings


def main() -> None:
    settings = demo_settings(build_parser().parse_args())
    pools_dir = Path(settings.pool_import_dirs[0])
    pools_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(prepare_pools(pools_dir))
    password = asyncio.run(set_admin_password(settings))
    print(f"\nPools: {', '.join(DEMO_POOLS)} (zfs-fuse, files in {pools_dir})")
    print(f"Log in as admin with password: {password}")
    print(f"Web page: {settings.page_url}")
    print(f"midclt: MIDDLEWARED_PLUGIN_DATA={settings.data_dir} .venv/bin/midclt call core.ping\n", flush=True)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
