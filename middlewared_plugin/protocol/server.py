"""The listeners: WebSocket JSON-RPC on TCP and on a unix socket, plus plain HTTP on the same port.

`/api/current` (and `/api/<version>`) speak JSON-RPC 2.0; `/websocket` speaks the legacy DDP-like protocol.

HTTP serves the web page (`frontend_stub/`), `/api/versions`, `/api/boot_id` and job log downloads.
A unix-socket peer running as uid 0 is logged in as root automatically, as on TrueNAS.
"""
from __future__ import annotations

import asyncio
import json
import mimetypes
import socket
import struct
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from middlewared_plugin.auth.credentials import ROOT
from middlewared_plugin.auth.session import Session
from middlewared_plugin.protocol.connection import Connection
from middlewared_plugin.protocol.legacy import LegacyConnection

if TYPE_CHECKING:
    from middlewared_plugin.app import App

API_VERSION = "v27.0.0"
API_PATHS = ("/api/current", f"/api/{API_VERSION}")
LEGACY_PATH = "/websocket"
FRONTEND_DIR = Path(__file__).resolve().parent.parent.parent / "frontend_stub"
#: Above the 64 KiB authenticated limit so the connection can answer with TrueNAS's own close codes.
FRAME_LIMIT = 2 * 1024 * 1024


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def _peer_uid(ws: ServerConnection) -> int | None:
    sock = ws.transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ApiServer:
    def __init__(self, app: App):
        self.app = app
        self.boot_id = str(uuid.uuid4())
        self._servers: list[Server] = []

    async def start(self) -> None:
        settings = self.app.settings
        common = dict(process_request=self._process_request, max_size=FRAME_LIMIT, ping_interval=30)
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

    # Plain HTTP -----------------------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
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
        if not target.is_relative_to(FRONTEND_DIR) or not target.is_file():
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
