"""Issue 12 §5 first contact, and the page under its Content-Security-Policy, in chromium without extra flags.

The demo's URL must open as printed: no browser-blocked port (6000 is X11's: ERR_UNSAFE_PORT). The page must
work with the policy the server sends (no inline script, style or handler), which chromium enforces for real.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from middlewared_plugin.devtools.demo import build_parser, demo_settings
from middlewared_plugin.settings import DEFAULT_PORT
from tests.browser.conftest import CHROMIUM_ARGS, base_url, log_in
from tests.fixtures.server import ADMIN, TestServer

pytestmark = pytest.mark.browser


async def test_the_url_the_demo_prints_opens_in_chromium(page: Page) -> None:
    assert not any("allowed-ports" in arg for arg in CHROMIUM_ARGS)  # the browser as people run it
    data_dir = Path(tempfile.mkdtemp(prefix="mwp-"))
    settings = demo_settings(build_parser().parse_args(["--data-dir", str(data_dir)]))
    assert settings.listen_port == DEFAULT_PORT
    demo = await TestServer(data_dir, scheduler_enabled=False, listen_port=settings.listen_port).start()
    try:
        assert settings.page_url == f"http://127.0.0.1:{DEFAULT_PORT}/"
        await page.goto(settings.page_url)
        await expect(page.get_by_test_id("login-form")).to_be_visible()
    finally:
        await demo.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_the_page_works_under_its_content_security_policy(page: Page, server: TestServer) -> None:
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => console.error("
        "'Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))")
    response = await page.goto(base_url(server))
    assert response is not None
    assert "script-src 'self'" in (await response.header_value("content-security-policy") or "")
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    for nav, content in (("nav-snapshot-tasks", "snapshot-task-list"), ("nav-ssh", "ssh-page"),
                         ("nav-replication", "replication-list")):
        await page.get_by_test_id(nav).click()
        await expect(page.get_by_test_id(content)).to_be_visible()
    assert violations == []
    # An injected inline script is refused: the policy is really in force.
    async with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        await page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.inlineRan = true'; document.head.append(s); }""")
    assert await page.evaluate("window.inlineRan === undefined")
