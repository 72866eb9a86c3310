"""The page's manual snapshot (issue 13, item 7): "Take snapshot now" on the Periodic Snapshot Tasks page takes
one through `pool.snapshot.create`, as TrueNAS's "Add snapshot" form does, in a real chromium against the
real server and a real zfs-fuse pool."""
from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from middlewared_plugin.devtools.zfs_fuse import FilePool
from middlewared_plugin.zfs import Zfs
from tests.browser.conftest import log_in, screenshots
from tests.fixtures.server import TestServer

pytestmark = pytest.mark.browser


async def test_take_snapshot_now_from_the_dataset_browser(
    page: Page, server: TestServer, pool: FilePool, local_zfs: Zfs,
) -> None:
    dataset = f"{pool.name}/data"
    await local_zfs.create_dataset(f"{dataset}/child", parents=True)
    await log_in(page, server)
    await page.get_by_test_id("nav-snapshot-tasks").click()
    await page.get_by_test_id("manual-snapshot-take").click()
    dialog = page.get_by_test_id("manual-snapshot-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Name", exact=True)).to_have_value(
        re.compile(r"^manual-\d{4}-\d\d-\d\d_\d\d-\d\d$"))

    await dialog.get_by_test_id("manual-snapshot-dataset-browse").click()
    await dialog.get_by_test_id(f"manual-snapshot-dataset-pick-{dataset}").check()
    await expect(dialog.get_by_label("Dataset", exact=True)).to_have_value(dataset)
    await dialog.get_by_label("Name", exact=True).fill("before-upgrade")
    await dialog.get_by_label("Recursive", exact=False).check()
    await screenshots(page, "manual-snapshot")
    await dialog.get_by_test_id("manual-snapshot-save").click()

    await expect(page.get_by_test_id("toast").last).to_have_text(f"Snapshot {dataset}@before-upgrade taken.")
    await expect(dialog).to_be_hidden()
    snapshots = sorted(s.full_name for s in await local_zfs.list_snapshots(dataset))
    assert snapshots == [f"{dataset}/child@before-upgrade", f"{dataset}@before-upgrade"]

    # The server's refusal is shown in the dialog, which stays open.
    await page.get_by_test_id("manual-snapshot-take").click()
    await dialog.get_by_label("Dataset", exact=True).fill(dataset)
    await dialog.get_by_label("Name", exact=True).fill("before-upgrade")
    await dialog.get_by_test_id("manual-snapshot-save").click()
    await expect(dialog.locator(".form-errors")).to_contain_text("before-upgrade already exists.")
    await dialog.get_by_label("Name", exact=True).fill("bad$name")
    await dialog.get_by_test_id("manual-snapshot-save").click()
    await expect(dialog.locator('[data-error-for="name"]')).to_have_text(
        'Invalid snapshot name: Character "$" is not allowed in a snapshot name')
