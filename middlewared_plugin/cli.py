"""`middlewared-plugin`: serve the API, manage local users and API keys."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from middlewared_plugin.app import App
from middlewared_plugin.errors import CallError
from middlewared_plugin.protocol.server import ApiServer
from middlewared_plugin.settings import DEFAULT_PORT, TLS_MODES, Settings, default_data_dir


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="middlewared-plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", type=Path, default=None,
                       help="data directory (default: $MIDDLEWARED_PLUGIN_DATA or ./data)")
        return p

    serve = with_data_dir(sub.add_parser("serve", help="run the API server"))
    serve.add_argument("--listen", type=_listen, default=("127.0.0.1", DEFAULT_PORT),
                       help=f"HOST:PORT (default 127.0.0.1:{DEFAULT_PORT})")
    serve.add_argument("--tls", choices=TLS_MODES, default="auto",
                       help="HTTPS/WSS on HOST:PORT (plain HTTP there is redirected); auto: on unless HOST is loopback")
    serve.add_argument("--tls-cert", type=Path, default=None,
                       help="PEM certificate (chain) for TLS (default: a self-signed one, DATA_DIR/tls.crt)")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--allowed-origin", action="append", default=None,
                       help="a browser origin (https://host:port) allowed to use the API besides the server's own "
                            "(repeatable)")
    serve.add_argument("--server-name", action="append", default=None,
                       help="a host name browsers reach this server by, besides localhost, the listen address and "
                            "this machine's host name (repeatable; other names are refused: DNS rebinding)")
    serve.add_argument("--socket", type=Path, default=None, help="unix socket path (default DATA_DIR/middlewared.sock)")
    serve.add_argument("--ssh-port", type=int, default=22, help="SSH port announced by keychaincredential.ssh_pair")
    serve.add_argument("--ssh-host-key", type=Path, action="append", default=None,
                       help="host public key file announced by ssh_pair (repeatable)")
    serve.add_argument("--pool-import-dir", action="append", default=None,
                       help="directory where pool.import_find looks for pools on files (zpool import -d; repeatable)")
    serve.add_argument("--log-level", default="INFO")

    passwd = with_data_dir(sub.add_parser("passwd", help="create a user or set its password (read from stdin)"))
    passwd.add_argument("user")
    passwd.add_argument("--role", action="append", default=None,
                        help="roles of the user (repeatable; default: FULL_ADMIN for the first user)")

    api_key = sub.add_parser("api-key", help="manage API keys")
    api_key_sub = api_key.add_subparsers(dest="api_key_command", required=True)
    create = with_data_dir(api_key_sub.add_parser("create", help="create an API key and print it once"))
    create.add_argument("name")
    create.add_argument("--user", required=True)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings(data_dir=(args.data_dir or default_data_dir()).absolute())
    if args.command == "serve":
        settings.listen_host, settings.listen_port = args.listen
        settings.socket_path = args.socket
        if (args.tls_cert is None) != (args.tls_key is None):
            raise SystemExit("middlewared-plugin: --tls-cert and --tls-key go together")
        settings.tls, settings.tls_cert, settings.tls_key = args.tls, args.tls_cert, args.tls_key
        settings.allowed_origins = tuple(args.allowed_origin or ())
        settings.server_names = tuple(args.server_name or ())
        settings.ssh_port = args.ssh_port
        if args.ssh_host_key:
            settings.ssh_host_key_files = tuple(args.ssh_host_key)
        settings.pool_import_dirs = tuple(args.pool_import_dir or ())
    return settings


async def serve(settings: Settings) -> None:
    app = App(settings)
    await app.start()
    server = ApiServer(app)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"middlewared-plugin listening on {settings.page_url} (API: {settings.page_url.replace('http', 'ws', 1)}"
          f"api/current) and ws+unix://{settings.unix_socket}", flush=True)
    if server.tls_fingerprint is not None:
        print(f"TLS certificate SHA-256 fingerprint: {server.tls_fingerprint}", flush=True)
    await stop.wait()
    await server.stop()
    await app.stop()


async def _with_app(settings: Settings, action: str, args: argparse.Namespace) -> None:
    app = App(settings, service_classes=[])
    await app.store.open()
    try:
        if action == "passwd":
            password = sys.stdin.readline().rstrip("\n")
            created = await app.accounts.set_password(args.user, password, args.role)
            print(f"{'Created user' if created else 'Password changed for'} {args.user}")
        else:
            print(await app.accounts.create_api_key(args.name, args.user))
    finally:
        await app.store.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    try:
        if args.command == "serve":
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            asyncio.run(serve(settings))
        else:
            asyncio.run(_with_app(settings, args.command, args))
    except CallError as exc:
        print(f"middlewared-plugin: {exc.errmsg}", file=sys.stderr)
        return 1
    return 0
