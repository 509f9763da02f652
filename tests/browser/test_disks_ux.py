"""Snapshots and backups on the dashboard, in Chromium against the real portal, worker and
QEMU guests: take a snapshot, revert it (confirmed), back up with a progress bar, restore
as a new desktop; the owner sees a help-desk revert's notice live. Screenshots (desktop
and phone) go to docs/screenshots/."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import logged_in_page
from tests.browser.test_dashboard_ux import PHONE, live, off_the_loop, shot, visible_actions
from tests.fixtures import wait_for_status
from vms.models import Desktop, Quota, Snapshot
from vms.services.disks.snapshots import snapshot_revert

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def panel_of(page: Page, desktop: Desktop):
    panel = page.locator(f'[data-disks="{desktop.pk}"]')
    if panel.get_attribute("open") is None:
        panel.locator("summary").click()
    return panel


def running_desktop(client, template) -> Desktop:
    """A desktop launched through the API, once it runs (off Playwright's event loop)."""
    answer = off_the_loop(
        lambda: client.post("/api/desktops/", {"template": template.pk}, format="json")
    )
    return off_the_loop(lambda: wait_for_status(answer.json()["id"], "running"))


def test_snapshot_revert_backup_restore_from_the_dashboard(
    browser: Browser, portal_url: str, employee, helpdesk_user, demo_template, api_for
) -> None:
    Quota.objects.create(user=employee, max_desktops=3)
    client = api_for(employee)
    desktop = running_desktop(client, demo_template)
    page = logged_in_page(browser, portal_url, employee.username)
    live(page)
    page.on("dialog", lambda dialog: dialog.accept())
    panel = panel_of(page, desktop)
    expect(panel.locator("[data-field=snapshots]")).to_have_text("No snapshots.")

    panel.get_by_label("Snapshot name").fill("before the update")
    panel.get_by_role("button", name="Take snapshot").click()
    row = panel.locator("[data-field=snapshots] li").first
    expect(row).to_contain_text("before the update", timeout=60_000)
    expect(row.get_by_role("button", name="Revert")).to_be_visible(timeout=60_000)
    expect(row).to_contain_text("with memory")

    panel.get_by_role("button", name="Back up now").click()
    backups = panel.locator("[data-field=backups] li").first
    expect(backups).to_contain_text("full", timeout=60_000)
    expect(backups.get_by_role("button", name="Restore as new")).to_be_visible(timeout=90_000)
    status = page.locator(f'tr[data-desktop="{desktop.pk}"] [data-field=status]')
    expect(status).to_have_text("Running", timeout=30_000)  # the busy label went
    shot(page, "dash-snapshots-backups")

    # A help-desk revert with its reason: the owner is told on this page, live.
    snapshot = Snapshot.objects.get(desktop=desktop)
    off_the_loop(
        lambda: snapshot_revert(
            actor=helpdesk_user,
            desktop=desktop,
            snapshot_id=snapshot.pk,
            reason="ticket 12: display driver",
        )
    )
    notice = page.locator("[data-notice]")
    expect(notice).to_contain_text("ticket 12: display driver", timeout=30_000)
    expect(status).to_have_text("Running", timeout=60_000)

    # The owner's own revert (confirmed in the dialog), then a restore as a new desktop.
    expect(row.get_by_role("button", name="Revert")).to_be_visible(timeout=60_000)
    row.get_by_role("button", name="Revert").click()
    expect(row).to_contain_text("reverting")
    expect(row.get_by_role("button", name="Revert")).to_be_visible(timeout=60_000)
    expect(status).to_have_text("Running", timeout=60_000)
    backups.get_by_role("button", name="Restore as new").click()
    page.locator("tr[data-desktop]").nth(1).wait_for(timeout=60_000)
    restored = Desktop.objects.exclude(pk=desktop.pk).get(owner=employee)
    assert restored.restored_from is not None
    off_the_loop(lambda: wait_for_status(restored.pk, "running"))

    phone = logged_in_page(browser, portal_url, employee.username, viewport=PHONE)
    panel_of(phone, desktop)
    expect(
        phone.locator(f'[data-disks="{desktop.pk}"] [data-field=backups] li').first
    ).to_contain_text("full")
    shot(phone, "dash-snapshots-backups-phone")


def test_helpdesk_reverts_from_the_help_desk_page_with_a_reason(
    browser: Browser, portal_url: str, employee, helpdesk_user, demo_template, api_for
) -> None:
    client = api_for(employee)
    desktop = running_desktop(client, demo_template)
    taken = off_the_loop(
        lambda: client.post(
            f"/api/desktops/{desktop.pk}/snapshots/", {"name": "morning"}, format="json"
        )
    )
    assert taken.status_code == 202

    def ready() -> bool:
        return Snapshot.objects.get(pk=taken.json()["id"]).status == "ready"

    deadline = time.monotonic() + 60
    while not off_the_loop(ready) and time.monotonic() < deadline:
        time.sleep(0.2)
    page = logged_in_page(browser, portal_url, helpdesk_user.username)
    page.goto(f"{portal_url}/helpdesk/?q={employee.username}")
    page.on("dialog", lambda dialog: dialog.accept())
    row = page.locator(f'tr[data-desktop="{desktop.pk}"]')
    assert off_the_loop(ready), "the snapshot was not taken"
    row.get_by_text("Revert to a snapshot").click()
    row.get_by_label("Reason").fill("ticket 77: broken profile")
    shot(page, "helpdesk-revert")
    row.get_by_role("button", name="Revert").click()
    expect(page.locator(".messages")).to_contain_text("reverting to 'morning'")
    deadline = time.monotonic() + 60  # reverted: the snapshot is offered again
    while not off_the_loop(ready) and time.monotonic() < deadline:
        time.sleep(0.2)
    phone = logged_in_page(browser, portal_url, helpdesk_user.username, viewport=PHONE)
    phone.goto(f"{portal_url}/helpdesk/?q={employee.username}")
    phone.locator(f'tr[data-desktop="{desktop.pk}"]').get_by_text("Revert to a snapshot").click()
    shot(phone, "helpdesk-revert-phone")


def restore_offers_nothing_else(page: Page, desktop: Desktop) -> None:
    panel = page.locator(f'[data-disks="{desktop.pk}"]')
    expect(panel.locator("[data-field=restores] li").get_by_role("button")).to_have_text(["Cancel"])
    expect(panel.get_by_role("button", name="Back up now")).to_be_disabled()
    expect(panel.get_by_role("button", name="Take snapshot")).to_be_disabled()
    expect(panel.get_by_label("Snapshot name")).to_be_disabled()
    expect(panel.locator("[data-field=backups] li button")).to_have_count(0)
    expect(panel.locator("[data-field=snapshots] li button")).to_have_count(0)
    assert visible_actions(page, desktop) <= {"console"}


def test_restore_progress_and_cancel_on_the_dashboard(
    browser: Browser, portal_url: str, employee, demo_template, api_for, hypervisor, local_host
) -> None:
    """An in-place restore shows its percentage in the desktop's panel (which opens by
    itself) and is cancelled from there (confirmed): the desktop keeps its disk. The copy
    runs at a known pace on a worker of its own (see tests/disks/test_restores_live.py)."""
    import os
    import socket

    from tests.disks.test_restores_live import PACE, prepared
    from tests.fixtures import running_worker
    from vms.models import Host, Restore

    client = api_for(employee)
    desktop, _backup, _path = off_the_loop(lambda: prepared(client, demo_template, hypervisor))

    def to_slow_host() -> Host:
        slow = Host.objects.create(
            name="slowcopy", uri=local_host.uri, storage_pool=local_host.storage_pool
        )
        Desktop.objects.filter(pk=desktop.pk).update(host=slow)
        return slow

    slow = off_the_loop(to_slow_host)
    name = f"slow{os.getpid()}@{socket.gethostname()}"
    queues = f"{slow.queue_name},{slow.long_queue_name}"
    with running_worker(queues=queues, name=name, DISK_COPY_BANDWIDTH_MIB_S=PACE):
        page = logged_in_page(browser, portal_url, employee.username)
        live(page)
        page.on("dialog", lambda dialog: dialog.accept())
        panel = panel_of(page, desktop)
        restore_here = panel.locator("[data-field=backups] li").first
        restore_here.get_by_role("button", name="Restore here").click()
        progress = panel.locator("[data-field=restores] li")
        expect(progress).to_contain_text("Restoring from the backup of", timeout=30_000)
        expect(progress).to_contain_text(re.compile(r"[1-9]\d?%"), timeout=30_000)
        expect(progress.locator("progress")).to_be_visible()
        # While it runs nothing else is offered (issue 25, item 11): no Start/Stop/Reboot/
        # Reset/Delete, no snapshot, backup or other restore; only the restore's Cancel.
        restore_offers_nothing_else(page, desktop)
        shot(page, "dash-restore-progress")

        phone = logged_in_page(browser, portal_url, employee.username, viewport=PHONE)
        phone_panel = phone.locator(f'[data-disks="{desktop.pk}"]')
        assert phone_panel.get_attribute("open") is not None  # opened by itself
        expect(phone_panel.locator("[data-field=restores] li")).to_contain_text("%")
        restore_offers_nothing_else(phone, desktop)
        shot(phone, "dash-restore-progress-phone")

        progress.get_by_role("button", name="Cancel").click()
        expect(progress).to_contain_text("cancelled", timeout=30_000)
    restore = off_the_loop(lambda: Restore.objects.get(desktop=desktop))
    kept = off_the_loop(lambda: Desktop.objects.get(pk=desktop.pk))
    assert restore.status == "cancelled" and kept.volume_name == desktop.volume_name
