"""Template versions as an admin publishes them, in Chromium against the real portal,
worker and a real QEMU guest: the desktop list's "Publish" action on a stopped desktop,
then the template's page listing its versions and whether each base is still in use.
Screenshots (desktop and phone) go to docs/screenshots/admin-template-versions*.png."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_admin_ux import DESKTOP, PHONE, admin_page, shot
from tests.browser.test_dashboard_ux import off_the_loop
from tests.browser.test_disks_ux import running_desktop
from tests.fixtures import wait_for_status
from vms.models import TemplateVersion

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_admin_publishes_a_stopped_desktop_as_a_new_version(
    browser: Browser, portal_url: str, admin_user_, employee, demo_template, api_for
) -> None:
    client = api_for(employee)
    desktop_id = running_desktop(client, demo_template).pk
    off_the_loop(lambda: client.post(f"/api/desktops/{desktop_id}/stop/"))
    off_the_loop(lambda: wait_for_status(desktop_id, "stopped"))

    page = admin_page(browser, portal_url, admin_user_, DESKTOP)
    page.goto(f"{portal_url}/admin/vms/desktop/")
    page.locator(f'input[name="_selected_action"][value="{desktop_id}"]').check()
    page.select_option("select[name=action]", "publish_version")
    page.click("button[name=index]")
    # Asked first, naming the owner, whose username the admin types (issue 25).
    expect(page.locator("[data-owner]")).to_have_text(employee.username)
    page.get_by_label("Type the owner's username to confirm").fill("someone-else")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".errornote")).to_contain_text(f"owner, {employee.username}")
    page.get_by_label("Type the owner's username to confirm").fill(employee.username)
    shot(page, "admin-publish-confirm")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".messagelist")).to_contain_text(
        f"Building Demo desktop v2 from Demo desktop of {employee.username}"
    )

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        version = TemplateVersion.objects.get(template=demo_template, number=2)
        if version.status != "building":
            break
        time.sleep(0.3)
    assert version.status == "ready", version.last_error
    page.goto(f"{portal_url}/admin/vms/template/{demo_template.pk}/change/")
    rows = page.locator("#versions-group tbody tr")
    expect(rows.first).to_contain_text("ready")
    expect(rows.first).to_contain_text(f"{employee.username} (Demo desktop)")
    expect(page.locator("#versions-group")).to_contain_text("imported image")
    shot(page, "admin-template-versions")
    phone = admin_page(browser, portal_url, admin_user_, PHONE)
    phone.goto(f"{portal_url}/admin/vms/template/{demo_template.pk}/change/")
    expect(phone.locator("#versions-group")).to_contain_text("imported image")
    shot(phone, "admin-template-versions-phone")
