"""One HTTP/1.1 request written byte for byte (any Host, any Origin), for the HTTP-level security tests."""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

#: RFC 6455's sample key: enough for the server to answer 101 to an upgrade it accepts.
WEBSOCKET_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes


async def request(port: int, path: str = "/", headers: dict[str, str] | None = None, *, upgrade: bool = False,
                  tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Answer:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        fields = {"Host": f"{host}:{port}", **(headers or {}), **(WEBSOCKET_UPGRADE if upgrade else {})}
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        status_line, *header_lines = head.rstrip("\r\n").split("\r\n")
        answer_headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(answer_headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        return Answer(int(status_line.split(" ")[1]), answer_headers, body)
    finally:
        writer.close()
