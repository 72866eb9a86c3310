"""Replication set up, run and watched in the browser, as TrueNAS's "remote replication" guide describes,
against the real server, real zfs-fuse pools and a real sshd on 127.0.0.1.

Screenshots of each wizard step (1280x800 and phone width) go to test-output/screenshots/.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket

import pytest
from playwright.async_api import Locator, Page, expect

from middlewared_plugin.client import Client
from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.errors import ValidationErrors
from middlewared_plugin.zfs import Zfs
from tests.browser.conftest import log_in, screenshot, screenshots
from tests.fixtures.server import ADMIN, TestServer
from tests.fixtures.sshd import SshdServer

pytestmark = pytest.mark.browser

SCHEMA = "auto-%Y-%m-%d_%H-%M"
#: A replication of a few MiB takes seconds; the page must show its end well within this.
RUN_TIMEOUT_MS = 60_000


async def make_source(zfs: Zfs, pool: FilePool, *, megabytes: int = 4) -> str:
    """`<pool>/data` holding some random data, so a run has bytes to count."""
    source = f"{pool.name}/data"
    await zfs.create_dataset(source)
    mountpoint = (await zfs.get_properties(source, ["mountpoint"]))["mountpoint"]
    await asyncio.to_thread(_write, f"{mountpoint}/file", megabytes)
    return source


def _write(path: str, megabytes: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(megabytes * 1024 * 1024))


async def snapshot_names(zfs: Zfs, dataset: str) -> list[str]:
    return sorted(s.name for s in await zfs.list_snapshots(dataset, recursive=False))


def task_row(page: Page, name: str) -> Locator:
    return page.get_by_test_id("replication-table").locator("tr", has=page.get_by_text(name, exact=True))


async def expect_run_finished(row: Locator) -> None:
    """The row's progress bar reaches 100% and, from the task's events, its state becomes FINISHED."""
    await expect(row.locator("progress")).to_have_js_property("value", 100, timeout=RUN_TIMEOUT_MS)
    await expect(row.locator(".progress")).to_have_attribute("data-state", "SUCCESS")
    await expect(row.locator("button.badge")).to_have_text("FINISHED", timeout=RUN_TIMEOUT_MS)


async def open_wizard(page: Page, server: TestServer) -> None:
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)
    await page.get_by_test_id("replication-add").click()
    await expect(page.get_by_test_id("replication-wizard")).to_be_visible()


async def add_source(page: Page, dataset: str) -> None:
    await page.get_by_test_id("wizard-source-input").fill(dataset)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("wizard-sources")).to_contain_text(dataset)


async def test_a_local_replication_from_nothing_runs_once_and_the_target_has_the_snapshot(
    page: Page, server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool)
    target = f"{dst_pool.name}/copy"
    await open_wizard(page, server)

    # What and Where: a local source without snapshots gets the offer of a snapshot task.
    await add_source(page, source)
    await expect(page.get_by_test_id("wizard-snapshot-count")).to_have_text("The sources have no snapshots yet.")
    offer = page.get_by_test_id("wizard-create-snapshot-task")
    await expect(offer).to_be_visible()
    await expect(offer).to_be_checked()
    await page.get_by_test_id("wizard-target").fill(target)
    await expect(page.get_by_test_id("wizard-target-hint")).to_have_text(
        f"{target} does not exist yet: the first run creates it under {dst_pool.name}.")
    await expect(page.get_by_test_id("wizard-name")).to_have_value(f"{source} - {target}")
    await expect(page.get_by_test_id("wizard-security-part")).to_be_hidden()  # local: no transport to choose
    await screenshots(page, "wizard-local-1-what-and-where")
    await page.get_by_test_id("wizard-next").click()

    # When: Run Once.
    await page.get_by_test_id("wizard-schedule-preset").select_option("once")
    await expect(page.get_by_test_id("wizard-schedule-description")).to_contain_text("Runs once")
    await screenshots(page, "wizard-local-2-when")
    await page.get_by_test_id("wizard-next").click()

    # Review: nothing to preview before the first snapshot exists, and the page says why.
    await expect(page.get_by_test_id("wizard-review")).to_contain_text("Run once, right after saving")
    await expect(page.get_by_test_id("wizard-plan-after-snapshot")).to_be_visible()
    await screenshots(page, "wizard-local-3-review")

    await page.get_by_test_id("wizard-start").click()

    await expect(page).to_have_url(re.compile(r"#/replication$"))
    row = task_row(page, f"{source} - {target}")
    await expect_run_finished(row)
    await expect(row).to_contain_text(f"{source} → {target}")
    await screenshots(page, "replication-list-after-run")

    await row.locator("button.badge").click()
    log = page.get_by_test_id("log-dialog")
    await expect(log.get_by_test_id("log-text")).to_contain_text("Finished: 1 snapshot(s) sent")
    await screenshot(page, "replication-log-1280x800")
    await log.get_by_test_id("log-close").click()

    taken = await snapshot_names(local_zfs, source)
    assert len(taken) == 1 and re.fullmatch(r"auto-\d{4}-\d\d-\d\d_\d\d-\d\d", taken[0]), taken
    assert await snapshot_names(local_zfs, target) == taken

    # The snapshot task the wizard created is listed with its schedule and next run.
    await page.get_by_test_id("nav-snapshot-tasks").click()
    snapshot_row = page.get_by_test_id("snapshot-task-table").locator("tr", has=page.get_by_text(source, exact=True))
    await expect(snapshot_row).to_contain_text("At 00:00")
    await expect(snapshot_row.locator('td[data-label="Next run"]')).to_have_text(re.compile(r"\d"))
    await expect(snapshot_row.locator('td[data-label="Last snapshot"]')).to_have_text(f"{source}@{taken[0]}")


def free_port_range(size: int = 20) -> tuple[int, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        low = s.getsockname()[1]
    return low, min(low + size, 65535)


async def test_a_remote_push_over_ssh_is_set_up_with_a_new_connection_then_switched_to_netcat(
    page: Page, server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs, sshd: SshdServer,
) -> None:
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool)
    await local_zfs.create_snapshots(source, "auto-2026-11-01_00-00")
    target = f"{dst_pool.name}/remote"
    name = "push to loopback"
    await open_wizard(page, server)

    await add_source(page, source)
    await page.get_by_test_id("wizard-naming-schema").fill(SCHEMA)
    await page.get_by_test_id("wizard-naming-schema").press("Tab")
    await expect(page.get_by_test_id("wizard-snapshot-count")).to_contain_text("1 of 1 snapshot(s) will replicate")
    await expect(page.get_by_test_id("wizard-create-snapshot-task")).to_be_hidden()

    # Destination on "another" system: a new SSH connection, set up manually from the wizard.
    await page.get_by_test_id("wizard-destination-location-remote").check()
    await page.get_by_test_id("wizard-destination-connection").select_option("__new__")
    dialog = page.get_by_test_id("ssh-dialog")
    await dialog.get_by_label("Name", exact=True).fill("loopback")
    await dialog.get_by_test_id("ssh-setup-manual").check()
    await dialog.get_by_label("Host", exact=True).fill(sshd.host)
    await dialog.get_by_label("Port", exact=True).fill(str(sshd.port))
    await dialog.get_by_test_id("ssh-discover").click()
    await expect(dialog.get_by_label("Remote host key")).to_have_value(re.compile(r"^(ssh-|ecdsa-)"))
    await screenshot(page, "wizard-remote-ssh-dialog-1280x800")
    await dialog.get_by_test_id("ssh-save").click()
    # The generated key must be authorized on the remote, as its administrator would do with what is shown.
    public_key = await dialog.get_by_test_id("ssh-public-key").input_value()
    assert public_key.startswith("ssh-rsa "), public_key
    sshd.add_authorized_key(public_key)
    await screenshot(page, "wizard-remote-ssh-authorize-1280x800")
    await dialog.get_by_test_id("ssh-done").click()
    await expect(dialog).to_have_count(0)
    chosen = page.get_by_test_id("wizard-destination-connection").locator("option:checked")
    await expect(chosen).to_have_text("loopback")

    # The destination's datasets are read over that connection (one command per pool on the host: slow-ish).
    await page.get_by_test_id("wizard-target").fill(target)
    await expect(page.get_by_test_id("wizard-target-hint")).to_have_text(
        f"{target} does not exist yet: the first run creates it under {dst_pool.name}.", timeout=RUN_TIMEOUT_MS)
    await page.get_by_test_id("wizard-name").fill(name)
    await expect(page.get_by_test_id("wizard-security-ssh")).to_be_checked()
    await screenshots(page, "wizard-remote-1-what-and-where")
    await page.get_by_test_id("wizard-next").click()
    await expect(page.get_by_test_id("wizard-schedule-description")).to_have_text("At 00:00")
    await page.get_by_test_id("wizard-retention-custom").check()
    await page.get_by_test_id("wizard-lifetime-value").fill("3")
    await screenshots(page, "wizard-remote-2-when")
    await page.get_by_test_id("wizard-next").click()
    await expect(page.get_by_test_id("plan-summary")).to_contain_text("1 snapshot(s) to send")
    await expect(page.get_by_test_id("plan-dataset")).to_contain_text(
        f"Send {source}@auto-2026-11-01_00-00 in full to {target}")
    await screenshots(page, "wizard-remote-3-review")
    await page.get_by_test_id("wizard-start").click()

    row = task_row(page, name)
    await expect(row.locator('td[data-label="Transport"]')).to_have_text("SSH")
    await expect(row.locator('td[data-label="Schedule"]')).to_have_text("At 00:00")
    await row.get_by_role("button", name=f"Run {name} now").click()
    await expect_run_finished(row)
    assert await snapshot_names(local_zfs, target) == ["auto-2026-11-01_00-00"]

    # Edit in the advanced screen: no encryption (SSH+NETCAT) on a port range, then run again.
    await row.get_by_role("button", name=f"Edit {name}").click()
    form = page.get_by_test_id("replication-form")
    await expect(form.get_by_test_id("form-name")).to_have_value(name)
    await form.get_by_test_id("form-transport").select_option("SSH+NETCAT")
    await expect(form.get_by_test_id("form-netcat_active_side")).to_have_value("LOCAL")
    low, high = free_port_range()
    await form.get_by_test_id("form-netcat_active_side_port_min").fill(str(low))
    await form.get_by_test_id("form-netcat_active_side_port_max").fill(str(high))
    await screenshot(page, "advanced-edit-netcat-1280x800")
    await form.get_by_test_id("form-save").click()

    row = task_row(page, name)
    await expect(row.locator('td[data-label="Transport"]')).to_have_text("SSH+NETCAT")
    await local_zfs.create_snapshots(source, "auto-2026-11-02_00-00")
    await row.get_by_role("button", name=f"Run {name} now").click()
    await expect(row.locator(".progress")).to_have_attribute("data-state", re.compile("WAITING|RUNNING|SUCCESS"))
    await expect_run_finished(row)
    await expect(row.locator('td[data-label="Last snapshot"]')).to_contain_text("auto-2026-11-02_00-00")
    assert await snapshot_names(local_zfs, target) == ["auto-2026-11-01_00-00", "auto-2026-11-02_00-00"]

    # The connection and its key pair are on the SSH page.
    await page.get_by_test_id("nav-ssh").click()
    await expect(page.get_by_test_id("ssh-table")).to_contain_text("loopback")
    await expect(page.get_by_test_id("keypair-table")).to_contain_text(public_key.split()[1][:40])


async def test_an_invalid_naming_schema_shows_the_servers_message_next_to_that_field(
    page: Page, server: TestServer,
) -> None:
    bad = "snap-%Y"
    client = await server.client()
    with pytest.raises(ValidationErrors) as refused:
        await client.call("replication.create", {
            "name": "x", "direction": "PUSH", "transport": "LOCAL", "source_datasets": ["tank/src"],
            "target_dataset": "backup/dst", "recursive": False, "auto": False, "retention_policy": "SOURCE",
            "also_include_naming_schema": [bad],
        })
    expected = refused.value.errors[0].errmsg
    await open_wizard(page, server)
    await add_source(page, "tank/src")
    await page.get_by_test_id("wizard-target").fill("backup/dst")
    await page.get_by_test_id("wizard-naming-schema").fill(bad)
    await page.get_by_test_id("wizard-next").click()
    await page.get_by_test_id("wizard-schedule-preset").select_option("once")
    await page.get_by_test_id("wizard-next").click()
    await expect(page.get_by_test_id("plan-error")).to_contain_text(expected)

    await page.get_by_test_id("wizard-start").click()

    schema_field = page.locator('[data-field="naming_schema"]')
    await expect(schema_field.locator(".field-error:visible")).to_have_text(expected)
    await expect(page.get_by_test_id("wizard-naming-schema")).to_be_focused()
    await expect(page.get_by_test_id("wizard-naming-schema")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_test_id("wizard-step-0")).to_be_visible()
    await screenshots(page, "wizard-field-error")


async def test_the_task_pages_add_run_edit_toggle_preview_and_delete(
    page: Page, server: TestServer, pool_pair: tuple[FilePool, FilePool], local_zfs: Zfs,
) -> None:
    src_pool, dst_pool = pool_pair
    source = await make_source(local_zfs, src_pool, megabytes=1)
    await log_in(page, server)
    await expect(page.get_by_test_id("current-user")).to_have_text(ADMIN)

    # Periodic snapshot task: add with the dataset browser, run it now, edit its lifetime.
    await page.get_by_test_id("nav-snapshot-tasks").click()
    await page.get_by_test_id("snapshot-task-add").click()
    dialog = page.get_by_test_id("snapshot-task-dialog")
    await dialog.get_by_test_id("snapshot-dataset-browse").click()
    await dialog.get_by_test_id(f"snapshot-dataset-pick-{source}").check()
    await expect(dialog.get_by_label("Dataset", exact=True)).to_have_value(source)
    await dialog.get_by_test_id("snapshot-schedule-preset").select_option("hourly")
    await expect(dialog.get_by_test_id("snapshot-schedule-description")).to_have_text("Every hour")
    await dialog.get_by_test_id("snapshot-task-save").click()
    row = page.get_by_test_id("snapshot-task-table").locator("tr", has=page.get_by_text(source, exact=True))
    await row.get_by_role("button", name=f"Run snapshot task {source} now").click()
    await expect(row.locator('td[data-label="State"] .badge')).to_have_text("FINISHED")
    taken = await snapshot_names(local_zfs, source)
    assert len(taken) == 1, taken
    await expect(row.locator('td[data-label="Last snapshot"]')).to_have_text(f"{source}@{taken[0]}")
    await row.get_by_role("button", name=f"Edit snapshot task {source}").click()
    await dialog.get_by_label("Snapshot lifetime").fill("5")
    await dialog.get_by_test_id("snapshot-task-save").click()
    await expect(row.locator('td[data-label="Keep for"]')).to_have_text("5 week(s)")
    await screenshots(page, "snapshot-tasks-with-a-task")

    # A replication bound to it: enabled toggle, plan preview, delete with confirmation.
    client = await server.client()
    [snapshot_task] = await client.call("pool.snapshottask.query")
    task = await client.call("replication.create", {
        "name": "bound", "direction": "PUSH", "transport": "LOCAL", "source_datasets": [source],
        "target_dataset": f"{dst_pool.name}/bound", "recursive": False, "auto": True,
        "periodic_snapshot_tasks": [snapshot_task["id"]], "retention_policy": "SOURCE",
    })
    await page.get_by_test_id("nav-replication").click()
    row = task_row(page, "bound")
    await expect(row.locator('td[data-label="Schedule"]')).to_have_text("After its periodic snapshot tasks")
    await row.get_by_role("checkbox", name="Enabled: bound").uncheck()
    await until_enabled_is(client, task["id"], False)
    await row.get_by_role("button", name="Show the plan of bound").click()
    plan = page.get_by_test_id("plan-dialog")
    await expect(plan.get_by_test_id("plan-summary")).to_contain_text("1 snapshot(s) to send")
    await expect(plan.get_by_test_id("plan-conflicts")).to_have_count(0)
    await screenshot(page, "replication-plan-dialog-1280x800")
    await plan.get_by_test_id("plan-close").click()
    await row.get_by_role("button", name="Delete bound").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("replication-empty")).to_be_visible()
    assert await client.call("replication.query") == []


async def until_enabled_is(client: Client, task_id: int, wanted: bool) -> None:
    """The toggle's update reaches the server (it is sent without waiting for anything else)."""
    for _ in range(50):
        if (await client.call("replication.get_instance", task_id))["enabled"] is wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"replication task {task_id} did not become enabled={wanted}")
