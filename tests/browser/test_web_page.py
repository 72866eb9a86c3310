"""The web page (frontend_stub/) in a real chromium against the real server.

Logging in (password or API key), keeping the session across a reload, logging out, the pages, and server
validation errors next to their fields. The replication workflows are in test_replication_wizard.py.
"""
from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Page, expect

from tests.browser.conftest import base_url, log_in, screenshot, screenshots
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer
from tests.fixtures.sshd import SshdServer

pytestmark = pytest.mark.browser


async def test_the_login_form_is_shown_first_and_a_password_login_opens_the_replication_page(
    page: Page, server: TestServer,
) -> None:
    await page.goto(base_url(server))
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await expect(page.get_by_test_id("topbar")).to_be_hidden()
    await screenshot(page, "login-1280x800")

    await log_in(page, server)

    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    await expect(page).to_have_url(re.compile(r"#/replication$"))
    await expect(page.get_by_role("heading", name="Replication Tasks")).to_be_visible()


async def test_the_login_form_works_with_the_keyboard_alone(page: Page, server: TestServer) -> None:
    await page.goto(base_url(server))
    await expect(page.get_by_label("Username", exact=True)).to_be_focused()
    await page.keyboard.type(ADMIN)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password", exact=True)).to_be_focused()
    await page.keyboard.type(ADMIN_PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)


async def test_a_wrong_password_keeps_the_login_form_with_a_message(page: Page, server: TestServer) -> None:
    await log_in(page, server, password="not-the-password")
    await expect(page.get_by_test_id("login-error")).to_have_text("Wrong username or password.")
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await expect(page.get_by_test_id("topbar")).to_be_hidden()


async def test_an_api_key_logs_in(page: Page, server: TestServer) -> None:
    key = await server.app.accounts.create_api_key("browser-test", ADMIN)
    await page.goto(base_url(server))
    await page.get_by_test_id("login-mode-api_key").check()
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)


async def test_a_reload_keeps_the_session_through_a_token(page: Page, server: TestServer) -> None:
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    token = await page.evaluate("sessionStorage.getItem('mwp.session-token')")
    assert token, "no session token was stored after login"

    await page.reload()

    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    await expect(page.get_by_test_id("login-form")).to_have_count(0)
    await expect(page.get_by_role("heading", name="Replication Tasks")).to_be_visible()
    # The page fetched a fresh token after logging in with the stored one.
    assert await page.evaluate("sessionStorage.getItem('mwp.session-token')") not in (None, token)


async def test_a_token_the_server_no_longer_knows_leads_back_to_the_login_form(page: Page, server: TestServer) -> None:
    await page.goto(base_url(server))
    await page.evaluate("sessionStorage.setItem('mwp.session-token', 'forged-token')")
    await page.reload()
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('mwp.session-token')") is None


async def test_logout_returns_to_the_login_form_and_a_reload_stays_logged_out(page: Page, server: TestServer) -> None:
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)

    await page.get_by_test_id("logout").click()

    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await expect(page.get_by_test_id("topbar")).to_be_hidden()
    await page.reload()
    await expect(page.get_by_test_id("login-form")).to_be_visible()


# (navigation link, what the page shows once loaded, screenshot name)
PAGES = [
    ("nav-replication", "replication-list", "replication-list"),
    ("nav-snapshot-tasks", "snapshot-task-list", "snapshot-tasks"),
    ("nav-ssh", "ssh-page", "ssh-connections"),
]


@pytest.mark.parametrize(("nav", "content", "name"), PAGES)
async def test_each_page_opens_from_the_navigation(page: Page, server: TestServer, nav: str, content: str,
                                                  name: str) -> None:
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    await page.get_by_test_id(nav).click()
    await expect(page.get_by_test_id(nav)).to_have_attribute("aria-current", "page")
    await expect(page.get_by_test_id(content)).to_be_visible()
    await expect(page.get_by_test_id("page-error")).to_have_count(0)
    await screenshots(page, name)


async def test_the_wizard_choices_carry_over_to_the_advanced_form(page: Page, server: TestServer) -> None:
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    await page.get_by_test_id("replication-add").click()
    await expect(page.get_by_test_id("replication-wizard")).to_be_visible()
    # Typed sources become chips and suggest the task name once a destination is typed.
    await page.get_by_test_id("wizard-source-input").fill("tank/src")
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("wizard-sources")).to_contain_text("tank/src")
    await page.get_by_test_id("wizard-target").fill("backup/dst")
    await expect(page.get_by_test_id("wizard-name")).to_have_value("tank/src - backup/dst")
    await page.get_by_test_id("wizard-naming-schema").fill("manual-%Y-%m-%d_%H-%M")

    await page.get_by_test_id("wizard-advanced").click()

    await expect(page.get_by_test_id("replication-form")).to_be_visible()
    await expect(page.get_by_test_id("form-from-wizard")).to_be_visible()
    await expect(page.get_by_test_id("form-source_datasets")).to_have_value("tank/src")
    await expect(page.get_by_test_id("form-target_dataset")).to_have_value("backup/dst")
    await expect(page.get_by_test_id("form-transport")).to_have_value("LOCAL")
    await expect(page.get_by_test_id("form-also_include_naming_schema")).to_have_value("manual-%Y-%m-%d_%H-%M")
    # Fields of another transport are not offered.
    await expect(page.get_by_test_id("form-section-ssh-netcat")).to_be_hidden()
    await screenshots(page, "advanced-form")


async def test_a_server_validation_error_appears_next_to_the_field_it_names(
    page: Page, server: TestServer, sshd: SshdServer,
) -> None:
    # An ed25519 key: short enough for any string limit, so the test is only about where errors appear.
    private_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption(),
    ).decode()
    client = await server.client()
    await client.call("keychaincredential.create",
                      {"name": "taken", "type": "SSH_KEY_PAIR", "attributes": {"private_key": private_key}})
    await log_in(page, server)
    await page.get_by_test_id("nav-ssh").click()
    await page.get_by_test_id("ssh-add").click()
    dialog = page.get_by_test_id("ssh-dialog")
    await dialog.get_by_label("Name", exact=True).fill("taken")
    await dialog.get_by_test_id("ssh-setup-manual").check()
    await dialog.get_by_label("Host", exact=True).fill(sshd.host)
    await dialog.get_by_label("Remote host key").fill(sshd.remote_host_key)
    await dialog.get_by_label("Name of the new key pair").fill("taken")

    await dialog.get_by_test_id("ssh-save").click()

    name_row = dialog.locator('[data-field="connection_name"]')
    await expect(name_row.locator(".field-error")).to_have_text("Is already in use by another Keychain Credential")
    await expect(name_row.get_by_role("textbox")).to_have_attribute("aria-invalid", "true")
    key_row = dialog.locator('[data-field="private_key.name"]')
    await expect(key_row.locator(".field-error")).to_have_text("Is already in use by another SSH Key pair")
