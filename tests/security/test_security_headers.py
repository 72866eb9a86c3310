"""Issue 12: the web page and every other HTTP answer carry security headers.

A Content-Security-Policy that allows the page's own files only (no inline script or style, so an injected
`<script>` or `onerror=` does not run), no framing (clickjacking), no MIME sniffing, and no Referer leaking job
log download tokens. That the page still works under this policy is tests/browser/test_first_contact.py.
"""
from __future__ import annotations

import pytest

from tests.fixtures.server import TestServer
from tests.security.raw_http import request


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for item in filter(None, (d.strip() for d in policy.split(";"))):
        name, *values = item.split()
        parsed[name] = values
    return parsed


@pytest.mark.parametrize("path", ["/", "/js/app.js", "/css/app.css", "/api/versions", "/no-such-file"])
async def test_every_http_answer_carries_the_security_headers(server: TestServer, path: str) -> None:
    answer = await request(server.port, path)
    assert answer.status in (200, 404)
    policy = directives(answer.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert not any("unsafe" in v for values in policy.values() for v in values)
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


async def test_the_page_has_no_inline_script_style_or_event_handler(server: TestServer) -> None:
    """The policy would block them: the page must not need them."""
    page = (await request(server.port, "/")).body.decode()
    assert "<style" not in page and " style=" not in page
    for tag in page.split("<script")[1:]:
        assert ' src="' in tag.split(">")[0] and tag.split(">", 1)[1].startswith("</script>")
    assert not [word for word in page.replace(">", " ").split() if word.startswith("on") and "=" in word]
