"""Browser fixtures: Debian's chromium driven by Playwright (async API, since the server fixture shares the
test's event loop), one browser per session and a fresh context per test so sessionStorage starts empty."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_PRESENT = Path(CHROMIUM).exists()
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    # One chromium for the session (about a second per launch); each test gets a fresh context.
    if not CHROMIUM_PRESENT:
        # Never a silent pass: scripts/setup.sh installs Debian's chromium.
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/setup.sh")
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def page(browser: Browser, server: TestServer) -> AsyncIterator[Page]:
    # Depends on `server` so the page closes before the server stops (no spurious connection errors).
    context = await browser.new_context(viewport=DESKTOP)
    new_page = await context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        await context.close()
    # An uncaught exception in the page's scripts is a bug even if the test's assertions passed.
    assert not errors, f"JavaScript errors on the page: {errors}"


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def screenshots(page: Page, name: str) -> None:
    """`<name>-1280x800.png` and `<name>-390x844.png` (phone width), leaving the page at desktop size."""
    await screenshot(page, f"{name}-1280x800")
    await page.set_viewport_size(PHONE)
    await screenshot(page, f"{name}-390x844")
    await page.set_viewport_size(DESKTOP)


def base_url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}/"


async def log_in(page: Page, server: TestServer, password: str = ADMIN_PASSWORD) -> None:
    """Open the page and submit the login form as the admin (the caller checks the outcome)."""
    await page.goto(base_url(server))
    await page.get_by_label("Username", exact=True).fill(ADMIN)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_test_id("login-submit").click()
