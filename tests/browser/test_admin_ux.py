"""The admin as an admin meets it, in Chromium against the real portal (daphne, the Celery
worker, a real QEMU guest): quotas picked by name, the desktop list and page with the
guest's screen and its actions, bulk stop that asks first, hosts' capacity as bars, and
the list on a phone. Screenshots go to docs/screenshots/admin-*.png."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import logged_in_page, shot
from tests.fixtures import make_desktop, wait_for_status
from vms.models import Desktop, DesktopStatus, Host, Quota
from vms.services.desktops.thumbnails import thumbnails_refresh
from vms.services.fleet.hosts import host_capacity_read

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def admin_page(browser: Browser, portal_url: str, user: Any, viewport: dict[str, int]) -> Page:
    """A fresh browser context logged in through the admin's own login form."""
    page = browser.new_context(viewport=viewport).new_page()  # type: ignore[arg-type]
    page.goto(f"{portal_url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url(f"{portal_url}/admin/")
    return page


def pick(page: Page, field: str, name: str) -> None:
    """Choose `name` in an autocomplete picker by typing part of it, as a person does."""
    page.locator(f"#id_{field} + .select2 .select2-selection").click()
    page.fill(".select2-container--open .select2-search__field", name[:3])
    page.locator(".select2-results__option", has_text=name).first.click()
    page.locator(f"#select2-id_{field}-container", has_text=name).wait_for()


def test_quota_for_a_group_picked_by_name_and_the_rule_said_in_words(
    browser: Browser, portal_url: str, admin_user_: Any, employee: Any
) -> None:
    page = admin_page(browser, portal_url, admin_user_, DESKTOP)
    page.goto(f"{portal_url}/admin/vms/quota/add/")
    page.fill("#id_max_desktops", "1")
    page.click("input[name=_save]")
    expect(page.locator(".errorlist.nonfield")).to_have_text(
        "Choose who this quota applies to: a user or a group."
    )

    pick(page, "user", employee.username)
    pick(page, "group", "employee")
    page.click("input[name=_save]")
    expect(page.locator(".errorlist.nonfield")).to_have_text("Choose a user or a group, not both.")
    assert "Constraint" not in page.content()
    shot(page, "admin-quota")

    page.click("#select2-id_user-container .select2-selection__clear")  # the picker's clear mark
    page.click("input[name=_save]")
    page.wait_for_url(f"{portal_url}/admin/vms/quota/")
    assert page.locator("#result_list th.column-applies_to").inner_text().strip() == "APPLIES TO"
    assert (
        page.locator(
            "#result_list td.field-applies_to, #result_list th.field-applies_to"
        ).inner_text()
        == "Group employee"
    )
    assert Quota.objects.get(group=Group.objects.get(name="employee")).max_desktops == 1
    page.context.close()


def _desktop_list_rows(employee: Any, template: Any, **fields: Any) -> dict[str, Desktop]:
    """Rows with no guest behind them, in states no action of these tests touches."""
    return {
        status: make_desktop(employee, template, name=f"{status}-desk", status=status, **fields)
        for status in (DesktopStatus.STOPPED, DesktopStatus.ERROR, DesktopStatus.DELETED)
    }


def test_desktops_list_page_actions_and_bulk_stop_that_asks_first(
    browser: Browser,
    portal_url: str,
    admin_user_: Any,
    employee: Any,
    demo_template: Any,
    local_host: Host,
) -> None:
    owner = logged_in_page(browser, portal_url, employee.username)
    owner.get_by_role("button", name="Launch Demo desktop").click()
    owner.wait_for_url(f"{portal_url}/")
    owner.context.close()
    real = wait_for_status(Desktop.objects.get(owner=employee).pk, DesktopStatus.RUNNING)
    rows = _desktop_list_rows(employee, demo_template, host=local_host)
    page = admin_page(browser, portal_url, admin_user_, DESKTOP)

    # The list: deleted desktops hidden until asked for; the key columns fit at 1280 px.
    page.goto(f"{portal_url}/admin/vms/desktop/")
    table = page.locator("#result_list")
    assert table.get_by_role("link", name="Demo desktop").is_visible()
    assert table.get_by_role("link", name="stopped-desk").is_visible()
    assert table.get_by_text("deleted-desk").count() == 0
    _assert_no_sideways_scroll(page)
    for column in ("name", "owner", "status_label", "host", "row_actions"):
        box = page.locator(f"#result_list th.column-{column}").bounding_box()
        assert box and box["x"] + box["width"] <= DESKTOP["width"], column
    shot(page, "admin-desktops")
    page.get_by_role("link", name="All, deleted included").click()
    expect(table.get_by_role("link", name="deleted-desk")).to_be_visible()

    # The desktop's page: its screen, console, actions; nothing to save.
    _wait_for_thumbnail(real)
    page.goto(f"{portal_url}/admin/vms/desktop/{real.pk}/change/")
    screen = page.get_by_role("img", name="Screen of Demo desktop")
    screen.wait_for()
    assert page.evaluate("img => img.naturalWidth", screen.element_handle()) == 320
    assert page.get_by_role("link", name="Open console").get_attribute("href") == (
        f"/desktops/{real.pk}/console/"
    )
    panel = page.locator(".desktop-actions")
    assert panel.get_by_role("button").all_inner_texts() == [
        "Stop",
        "Force stop",
        "Reboot",
        "Migrate",
        "Delete",
        "Reset",
    ]
    assert page.locator("input[name=_save], input[name=_continue]").count() == 0
    shot(page, "admin-desktop")

    # Bulk stop asks first, listing the desktops; start and reboot are there too.
    page.goto(f"{portal_url}/admin/vms/desktop/")
    options = page.locator("select[name=action] option").all_inner_texts()
    for wanted in (
        "Start the selected desktops",
        "Stop the selected desktops",
        "Reboot the selected desktops",
    ):
        assert wanted in options
    for desktop in (real, rows[DesktopStatus.STOPPED]):
        page.locator(f"input.action-select[value='{desktop.pk}']").check()
    page.select_option("select[name=action]", label="Stop the selected desktops")
    page.click("button[name=index]")
    page.locator("h1", has_text="Stop 2 desktops?").wait_for()
    listed = page.locator("table.bulk-desktops tbody tr")
    assert listed.count() == 2
    assert "Skipped: it is stopped" in listed.filter(has_text="stopped-desk").inner_text()
    assert Desktop.objects.get(pk=real.pk).status == DesktopStatus.RUNNING  # not yet
    shot(page, "admin-bulk-stop")
    page.get_by_role("button", name="Yes, stop 1 desktop").click()
    page.locator(".messagelist", has_text="Stop requested for 1 desktop.").wait_for()
    wait_for_status(real.pk, DesktopStatus.STOPPED)

    # Bulk start runs at once (it interrupts nobody).
    page.locator(f"input.action-select[value='{real.pk}']").check()
    page.select_option("select[name=action]", label="Start the selected desktops")
    page.click("button[name=index]")
    page.locator(".messagelist", has_text="Start requested for 1 desktop.").wait_for()
    wait_for_status(real.pk, DesktopStatus.RUNNING)

    # A button on the desktop's page runs its action and comes back to the page.
    page.goto(f"{portal_url}/admin/vms/desktop/{real.pk}/change/")
    page.locator(".desktop-actions").get_by_role("button", name="Force stop").click()
    # The action URL answers with a redirect back to this very page, with a message.
    expect(page.locator(".messagelist")).to_contain_text("Demo desktop: force stop requested.")
    assert page.url == f"{portal_url}/admin/vms/desktop/{real.pk}/change/"
    wait_for_status(real.pk, DesktopStatus.STOPPED)
    page.reload()
    assert page.locator(".desktop-actions").get_by_role("button").all_inner_texts() == [
        "Start",
        "Delete",
        "Reset",
    ]
    assert page.get_by_text("No screenshot: the desktop is stopped.").is_visible()
    page.context.close()


def _assert_no_sideways_scroll(page: Page) -> None:
    widths = page.evaluate(
        "() => { const r = document.querySelector('#changelist .results');"
        " return [r.scrollWidth, r.clientWidth, document.documentElement.scrollWidth,"
        " window.innerWidth]; }"
    )
    assert widths[0] <= widths[1], f"the table scrolls sideways: {widths}"
    assert widths[2] <= widths[3], f"the page scrolls sideways: {widths}"


def _wait_for_thumbnail(desktop: Desktop) -> None:
    """Take the guest's screenshot now (the worker's periodic job would, within a minute)."""
    thumbnails_refresh(host=desktop.host)  # type: ignore[arg-type]
    desktop.refresh_from_db()
    assert desktop.thumbnail_at is not None


def test_host_capacity_as_bars_and_read_from_the_host(
    browser: Browser,
    portal_url: str,
    admin_user_: Any,
    employee: Any,
    local_host: Host,
    fake_template: Any,
) -> None:
    found = host_capacity_read(uri=local_host.uri, pool=local_host.storage_pool)
    Host.objects.filter(pk=local_host.pk).update(
        capacity_vcpus=found.cpus, capacity_memory_mib=found.memory_mib, capacity_disk_gib=50
    )
    local = Host.objects.get(pk=local_host.pk)
    make_desktop(employee, fake_template, host=local, vcpus=1, memory_mib=1024, disk_gib=10)
    make_desktop(employee, fake_template, vcpus=4, memory_mib=2048, disk_gib=20)  # on 'fake'
    page = admin_page(browser, portal_url, admin_user_, DESKTOP)
    page.goto(f"{portal_url}/admin/vms/host/")
    local_row = page.locator("#result_list tr", has_text="qemu:///system")
    vcpus = local_row.locator("td.field-vcpus")
    assert vcpus.inner_text().strip() == f"1 / {found.cpus}"
    assert vcpus.locator("meter").get_attribute("value") == "1"
    assert local_row.locator("td.field-memory").inner_text().strip() == (
        f"1024 / {found.memory_mib} MiB"
    )
    assert local_row.locator("td.field-disk meter").is_visible()
    _assert_no_sideways_scroll(page)
    assert local_row.locator("td.field-state").inner_text().strip() == "Up, 1 desktop"
    shot(page, "admin-hosts")
    phone = admin_page(browser, portal_url, admin_user_, PHONE)
    phone.goto(f"{portal_url}/admin/vms/host/")
    name = phone.locator("#result_list tr", has_text="qemu:///system").locator("th a")
    box = name.bounding_box()  # the host's name, its way in, stays in view on a phone
    assert box and 0 <= box["x"] and box["x"] + box["width"] <= PHONE["width"]
    shot(phone, "admin-hosts-phone")

    # Adding a host: its capacity is read from it, and an unreachable one is said so.
    page.get_by_role("link", name="Add host").click()
    page.fill("#id_name", "lab1")
    page.fill("#id_uri", "test:///default")
    page.fill("#id_storage_pool", "default-pool")
    assert page.input_value("#id_capacity_vcpus") == ""  # not the model's 16 vCPUs
    page.get_by_role("button", name="Read capacity from the host").click()
    page.locator(".messagelist", has_text="Read from the host: 16 CPUs").wait_for()
    assert page.input_value("#id_capacity_vcpus") == "16"
    assert page.input_value("#id_capacity_memory_mib") == "3072"
    assert page.input_value("#id_capacity_disk_gib") == "100"
    assert page.input_value("#id_name") == "lab1"
    shot(page, "admin-host-add")

    page.fill("#id_uri", "qemu+ssh://127.0.0.1:1/system")
    for field in ("capacity_vcpus", "capacity_memory_mib", "capacity_disk_gib"):
        page.fill(f"#id_{field}", "")
    page.click("input[name=_save]")
    error = page.locator(".errorlist.nonfield")
    expect(error).to_contain_text("Could not read the host's capacity")
    expect(error).to_contain_text("Connection refused")
    assert not Host.objects.filter(name="lab1").exists()
    page.context.close()


def test_the_desktop_list_on_a_phone_keeps_its_first_columns_in_view(
    browser: Browser,
    portal_url: str,
    admin_user_: Any,
    employee: Any,
    fake_template: Any,
) -> None:
    _desktop_list_rows(employee, fake_template)
    make_desktop(employee, fake_template, name="Design desktop")
    page = admin_page(browser, portal_url, admin_user_, PHONE)
    page.goto(f"{portal_url}/admin/vms/desktop/")
    for column in ("name", "owner"):
        box = page.locator(f"#result_list th.column-{column}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], column
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "admin-phone")

    page.get_by_role("link", name="Design desktop").click()
    for button in page.locator(".desktop-actions button").all():
        box = button.bounding_box()
        assert box and box["x"] + box["width"] <= PHONE["width"], button.inner_text()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "admin-phone-desktop")
    page.context.close()
