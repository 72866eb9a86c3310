"""The listeners: WebSocket JSON-RPC on TCP and on a unix socket, plus plain HTTP on the same port.

`/api/current` (and `/api/<version>`) speak JSON-RPC 2.0; `/websocket` speaks the legacy DDP-like protocol.

HTTP serves the web page (`frontend_stub/`), `/api/versions`, `/api/boot_id` and job log downloads.
A unix-socket peer running as uid 0 is logged in as root automatically, as on TrueNAS.

On TCP, browsers are held to this server's own names: a request that carries `Origin` or `Sec-Fetch-Site`
(only browsers send them) must name a known Host (loopback names, the listen address, the address it reached,
this machine's host name, `--server-name`), or it is refused with 403: DNS rebinding. Its Origin must be this
server's own origin or an `--allowed-origin`: cross-site WebSocket hijacking. Clients without `Origin` (midclt,
scripts) and the unix socket are not browsers and are not checked.

With TLS on (`Settings.tls_enabled`), the TCP port speaks HTTPS/WSS, and a plain HTTP request on that same port
is answered with a redirect to https://: the first byte of a connection tells them apart (0x16 starts every TLS
handshake, a letter an HTTP request line).
"""
from __future__ import annotations

import asyncio
import functools
import importlib.resources
import ipaddress
import json
import logging
import mimetypes
import os
import re
import socket
import ssl
import struct
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from middlewared_plugin.auth.credentials import ROOT
from middlewared_plugin.auth.session import Session
from middlewared_plugin.protocol import tls
from middlewared_plugin.protocol.connection import Connection
from middlewared_plugin.protocol.legacy import LegacyConnection

if TYPE_CHECKING:
    from middlewared_plugin.app import App
    from middlewared_plugin.settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "v27.0.0"
API_PATHS = ("/api/current", f"/api/{API_VERSION}")
LEGACY_PATH = "/websocket"
#: The web page, frontend_stub/ in the repository, shipped as the package `middlewared_plugin.frontend` (setup.py).
FRONTEND_DIR = Path(str(importlib.resources.files("middlewared_plugin.frontend"))).resolve()
#: Above the 64 KiB authenticated limit so the connection can answer with TrueNAS's own close codes.
FRAME_LIMIT = 2 * 1024 * 1024
PING_INTERVAL = 30
#: How long a new TLS port connection may stay silent, or take for its TLS handshake, before it is dropped.
FIRST_BYTES_TIMEOUT = 10.0
TLS_HANDSHAKE = 0x16
#: The page's own files only: no inline script or style, no framing, WebSockets back to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Job log URLs carry a download token in their query string.
    "Referrer-Policy": "no-referrer",
}
#: Names that only ever resolve to this machine, whatever DNS says (RFC 6761).
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
#: A Host value a redirect may copy into its Location.
_HOST_SYNTAX = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), **SECURITY_HEADERS,
                       **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def _peer_uid(ws: ServerConnection) -> int | None:
    sock = ws.transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _split_host(value: str, default_port: int) -> tuple[str, int] | None:
    """`Host`-style `name[:port]` / `[v6][:port]` -> (lowercase name, port), None if malformed."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        return (parts.hostname or "").rstrip("."), parts.port or default_port
    except ValueError:
        return None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _machine_names(settings: Settings) -> set[str]:
    """What browsers may call this server (besides IP addresses). Blocking (getfqdn): call it in a thread."""
    short = socket.gethostname().lower()
    names = {*LOOPBACK_NAMES, short, f"{short}.local", socket.getfqdn().lower(),
             *(n.lower().rstrip(".") for n in settings.server_names)}
    if _ip(settings.listen_host.strip("[]")) is None and settings.listen_host:
        names.add(settings.listen_host.lower())
    return names


def _https_redirect(request: Request) -> Response:
    """A plain HTTP request on the TLS port: 307 to the same URL over https (307: not cached for good, so turning
    TLS off later does not strand browsers on a remembered redirect). The Location names the Host the client
    itself asked for, so it can send nobody elsewhere."""
    host = request.headers.get("Host", "")
    if not _HOST_SYNTAX.fullmatch(host) or not request.path.startswith("/"):
        return _response(HTTPStatus.BAD_REQUEST, b"Bad request: use https://\n", "text/plain")
    return _response(HTTPStatus.TEMPORARY_REDIRECT, b"", "text/plain", {"Location": f"https://{host}{request.path}"})


class _TlsOrPlainConnection(ServerConnection):
    """`serve`'s connection on the TLS port. Reading paused, it waits for the first byte: 0x16 starts a TLS
    handshake, so TLS is started on the transport; anything else is a plain HTTP request, which
    `ApiServer._process_request` answers with a redirect to https://. Only then is it a WebSocket connection."""

    def __init__(self, *args: Any, tls: ssl.SSLContext, sniffing: set[asyncio.Task[None]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tls = tls
        self._sniffing = sniffing
        self._started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._start(transport))
        self._sniffing.add(task)
        task.add_done_callback(self._sniffing.discard)

    async def _start(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
                first = await _peek(transport)
            if not first:
                raise ConnectionResetError("closed before a request")
            if first[0] == TLS_HANDSHAKE:
                tls_transport = await loop.start_tls(transport, self, self._tls, server_side=True,
                                                     ssl_handshake_timeout=FIRST_BYTES_TIMEOUT)
                if tls_transport is None:
                    raise ConnectionResetError("closed during the TLS handshake")
                transport = tls_transport
        except (OSError, TimeoutError, ssl.SSLError) as e:
            logger.debug("Dropped a connection before its first request: %r", e)
            transport.abort()
            return
        except asyncio.CancelledError:  # the server stops
            transport.abort()
            raise
        self._started = True
        super().connection_made(transport)
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._started:  # before, websockets has nothing to tear down
            super().connection_lost(exc)


async def _peek(transport: asyncio.Transport) -> bytes:
    """The first byte waiting on the transport's socket, left there for whoever reads next ("" at EOF)."""
    # A duplicate descriptor: the loop refuses readers on a descriptor that a transport owns.
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    try:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        return sock.recv(1, socket.MSG_PEEK)
    finally:
        sock.close()


class ApiServer:
    def __init__(self, app: App):
        self.app = app
        self.boot_id = str(uuid.uuid4())
        #: SHA-256 of the TLS certificate (`AB:CD:...`), None while the TCP listener is plain.
        self.tls_fingerprint: str | None = None
        self._servers: list[Server] = []
        self._names: set[str] = set()
        self._tls: ssl.SSLContext | None = None
        #: TLS port connections whose first byte has not arrived yet (Server.close() does not know them).
        self._sniffing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        settings = self.app.settings
        self._names = await asyncio.to_thread(_machine_names, settings)
        # No permessage-deflate: its zlib state is most of what an idle connection costs (about 50 of 62 KiB),
        # for small JSON messages, and compressing secrets next to what a client chose is a known TLS oracle.
        common = dict(process_request=self._process_request, max_size=FRAME_LIMIT, ping_interval=PING_INTERVAL,
                      compression=None)
        if settings.tls_enabled:
            self._tls = await asyncio.to_thread(self._tls_context, settings)
            tls_common = dict(common, create_connection=functools.partial(_TlsOrPlainConnection, tls=self._tls,
                                                                          sniffing=self._sniffing))
            tcp = await serve(self._handle, settings.listen_host, settings.listen_port, **tls_common)
        else:
            tcp = await serve(self._handle, settings.listen_host, settings.listen_port, **common)
        self._servers.append(tcp)
        sockets = list(tcp.sockets)
        if sockets:
            settings.listen_port = sockets[0].getsockname()[1]
        path = settings.unix_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._servers.append(await unix_serve(self._handle, str(path), **common))
        path.chmod(0o666)

    async def stop(self) -> None:
        for task in list(self._sniffing):
            task.cancel()
        await asyncio.gather(*self._sniffing, return_exceptions=True)
        for server in self._servers:
            server.close()
        await asyncio.gather(*(s.wait_closed() for s in self._servers), return_exceptions=True)
        self.app.settings.unix_socket.unlink(missing_ok=True)

    async def _handle(self, ws: ServerConnection) -> None:
        uid = _peer_uid(ws)
        address = "unix" if uid is not None else str(ws.remote_address[0])
        session = Session(address=address, credentials=ROOT if uid == 0 else None)
        legacy = ws.request is not None and urlsplit(ws.request.path).path == LEGACY_PATH
        await (LegacyConnection if legacy else Connection)(self.app, ws, session).serve()

    # TLS -----------------------------------------------------------------------------------------------

    def _tls_context(self, settings: Settings) -> ssl.SSLContext:
        if settings.tls_cert is not None and settings.tls_key is not None:
            cert, key = settings.tls_cert, settings.tls_key
        else:
            addresses = {"127.0.0.1", "::1"}
            if (listen_ip := _ip(settings.listen_host.strip("[]"))) is not None and not listen_ip.is_unspecified:
                addresses.add(str(listen_ip))
            cert, key = tls.ensure_self_signed(settings.data_dir, self._names, addresses)
        context = tls.server_context(cert, key)
        self.tls_fingerprint = tls.certificate_fingerprint(cert)
        logger.info("TLS certificate %s, SHA-256 fingerprint %s", cert, self.tls_fingerprint)
        return context

    # Browsers: Host and Origin -------------------------------------------------------------------------

    def _host_allowed(self, host_header: str, local_address: str) -> bool:
        """The Host a browser used is one of ours: a DNS-rebinding page's Host is the attacker's name."""
        split = _split_host(host_header, 0)
        if split is None or not split[0]:
            return False
        name = split[0]
        if name in self._names or name.endswith(".localhost"):
            return True
        address = _ip(name)
        if address is None:
            return False
        listen = _ip(self.app.settings.listen_host.strip("[]"))
        local = _ip(local_address.split("%")[0])
        return address.is_loopback or address in (listen, local) or (
            local is not None and local.version == 6 and local.ipv4_mapped == address)

    def _browser_refusal(self, ws: ServerConnection, request: Request) -> str | None:
        """Why a browser's request is refused, or None. Only TCP requests from browsers are checked."""
        origin = request.headers.get("Origin")
        if _peer_uid(ws) is not None or (origin is None and "Sec-Fetch-Site" not in request.headers):
            return None
        host = request.headers.get("Host", "")
        local = ws.transport.get_extra_info("sockname")
        if not self._host_allowed(host, str(local[0]) if local else ""):
            return "unknown host name"
        if origin is None:
            return None
        if origin.rstrip("/").lower() in (o.rstrip("/").lower() for o in self.app.settings.allowed_origins):
            return None
        scheme = "https" if self._tls is not None else "http"
        default_port = 443 if scheme == "https" else 80
        own = _split_host(host, default_port)
        try:
            parts = urlsplit(origin)
            theirs = (parts.scheme, (parts.hostname or "").rstrip("."), parts.port or default_port)
        except ValueError:
            return "origin not allowed"
        return None if own is not None and theirs == (scheme, *own) else "origin not allowed"

    # Plain HTTP -----------------------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if (refusal := self._browser_refusal(ws, request)) is not None:
            return _response(HTTPStatus.FORBIDDEN, f"Forbidden: {refusal}\n".encode(), "text/plain")
        if self._tls is not None and ws.transport.get_extra_info("sslcontext") is None and _peer_uid(ws) is None:
            return _https_redirect(request)
        url = urlsplit(request.path)
        path = url.path
        if path in API_PATHS or path == LEGACY_PATH:
            return None
        if path == "/api/versions":
            return _response(HTTPStatus.OK, json.dumps([API_VERSION]).encode(), "application/json")
        if path == "/api/boot_id":
            return _response(HTTPStatus.OK, json.dumps(self.boot_id).encode(), "application/json")
        if path.startswith("/_download/"):
            return await self._download(path.removeprefix("/_download/"), parse_qs(url.query))
        return await self._static(path)

    async def _static(self, path: str) -> Response:
        relative = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (FRONTEND_DIR / relative).resolve()
        # The directory is also a Python package: its __init__.py and bytecode are not part of the page.
        if not target.is_relative_to(FRONTEND_DIR) or not target.is_file() or target.suffix in (".py", ".pyc"):
            return _response(HTTPStatus.NOT_FOUND, b"Not found\n", "text/plain")
        body = await asyncio.to_thread(target.read_bytes)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            content_type = "text/javascript"
        return _response(HTTPStatus.OK, body, content_type, {"Cache-Control": "no-cache"})

    async def _download(self, job_id_text: str, query: dict[str, list[str]]) -> Response:
        token = (query.get("auth_token") or [""])[0]
        redeemed = self.app.accounts.redeem_token(token) if token else None
        job = self.app.jobs.get(int(job_id_text)) if job_id_text.isdigit() else None
        if redeemed is None or job is None or redeemed[1].get("job") != job.id or not job.visible_to(redeemed[0]):
            return _response(HTTPStatus.FORBIDDEN, b"Forbidden\n", "text/plain")
        text = await self.app.jobs.read_log(job) or ""
        filename = str(redeemed[1].get("filename") or "logs.txt").replace('"', "")
        return _response(HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8",
                         {"Content-Disposition": f'attachment; filename="{filename}"'})
