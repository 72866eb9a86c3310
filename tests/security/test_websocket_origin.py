"""Issue 11, WebSocket upgrade: cross-site WebSocket hijacking (Origin) and DNS rebinding (Host).

A browser request on TCP (one carrying `Origin` or `Sec-Fetch-Site`) must name one of the server's own Hosts
and come from the server's own origin or a configured one; anything else gets 403 before the upgrade. Clients
without `Origin` (midclt, scripts) and the unix socket keep working.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect, unix_connect
from websockets.exceptions import InvalidStatus

from middlewared_plugin.client import Client
from tests.fixtures.server import TestServer, running_server
from tests.security.raw_http import request

EVIL = "http://evil.example"


@asynccontextmanager
async def custom_server(**settings: Any) -> AsyncIterator[TestServer]:
    async with running_server(scheduler_enabled=False, **settings) as running:
        yield running


async def ping_with_origin(url: str, origin: str) -> str:
    async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "core.ping", "params": []}))
        return json.loads(await ws.recv())["result"]


@pytest.mark.parametrize("path", ["/api/current", "/websocket"])
async def test_a_cross_site_origin_gets_403_before_the_upgrade(server: TestServer, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{server.port}{path}", origin=EVIL):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    answer = await request(server.port, path, {"Origin": EVIL}, upgrade=True)
    assert answer.status == 403
    assert "upgrade" not in answer.headers


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:1",      # another port of the same host is another origin
    "https://127.0.0.1:{port}",  # another scheme too
    "null",                    # sandboxed frames and file:// pages
])
async def test_near_misses_of_the_own_origin_are_refused(server: TestServer, origin: str) -> None:
    answer = await request(server.port, "/api/current", {"Origin": origin.format(port=server.port)}, upgrade=True)
    assert answer.status == 403


async def test_the_servers_own_origin_is_accepted(server: TestServer) -> None:
    assert await ping_with_origin(server.url, f"http://127.0.0.1:{server.port}") == "pong"
    answer = await request(server.port, "/api/current", {"Origin": f"http://localhost:{server.port}"},
                           upgrade=True, host="127.0.0.1")
    assert answer.status == 403  # Origin localhost, Host 127.0.0.1: not the same origin
    answer = await request(server.port, "/api/current", {"Host": f"localhost:{server.port}",
                                                          "Origin": f"http://localhost:{server.port}"}, upgrade=True)
    assert answer.status == 101


async def test_a_configured_origin_is_accepted_and_only_that_one() -> None:
    async with custom_server(allowed_origins=("https://ui.example",)) as server:
        assert await ping_with_origin(server.url, "https://ui.example") == "pong"
        answer = await request(server.port, "/api/current", {"Origin": "https://ui.example:8443"}, upgrade=True)
        assert answer.status == 403


async def test_clients_without_origin_and_the_unix_socket_keep_working(server: TestServer) -> None:
    client = await server.client()
    assert await client.ping() == "pong"
    async with Client(server.socket_uri) as local:
        assert await local.call("auth.me") is not None
    # Browsers cannot reach a unix socket: whatever it claims, it is not checked.
    async with unix_connect(str(server.app.settings.unix_socket), "ws://localhost/api/current",
                            origin=EVIL) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "core.ping", "params": []}))
        assert json.loads(await ws.recv())["result"] == "pong"
    # A non-browser client that reached the server through another name (a tunnel, an alias) is not refused.
    answer = await request(server.port, "/api/current", {"Host": f"tunnel.example:{server.port}"}, upgrade=True)
    assert answer.status == 101


async def test_a_rebound_host_name_is_refused_for_browser_requests(server: TestServer) -> None:
    rebound = f"evil.example:{server.port}"
    # The attacker's page, its name now resolving to us: same "origin" as far as the browser knows.
    answer = await request(server.port, "/api/current", {"Host": rebound, "Origin": f"http://{rebound}"},
                           upgrade=True)
    assert answer.status == 403
    answer = await request(server.port, "/", {"Host": rebound, "Sec-Fetch-Site": "same-origin"})
    assert answer.status == 403
    answer = await request(server.port, "/", {"Host": f"localhost:{server.port}", "Sec-Fetch-Site": "none"})
    assert answer.status == 200


async def test_configured_server_names_and_the_listen_address_are_hosts_of_ours() -> None:
    async with custom_server(listen_host="127.0.0.2", server_names=("nas.example",)) as server:
        for host in ("nas.example", "NAS.example.", "127.0.0.2"):
            answer = await request(server.port, "/api/current",
                                   {"Host": f"{host}:{server.port}", "Origin": f"http://{host}:{server.port}"},
                                   upgrade=True, host="127.0.0.2")
            assert answer.status == 101, host
        answer = await request(server.port, "/api/current", {"Host": f"other.example:{server.port}",
                                                              "Origin": f"http://other.example:{server.port}"},
                               upgrade=True, host="127.0.0.2")
        assert answer.status == 403
