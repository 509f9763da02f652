"""Networks as an admin and an employee meet them, in Chromium against the real portal: an
admin adds a network on its admin page, puts it on a template (the inline) with a bandwidth
limit the template list shows, a network in use offers no Delete, and the dashboard card and
help-desk page show a desktop's addresses. The desktops here are rows with no guest behind
them, their addresses written as the heartbeat writes them from DHCP leases: no guest with
a network card runs on this machine's own host (the network rule; the real leases are
tests/fleet/test_networks_lab.py). Screenshots: docs/screenshots/admin-network*.png,
dash-network*.png, help-network*.png."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import logged_in_page
from tests.browser.test_admin_ux import DESKTOP, PHONE, admin_page, shot
from tests.fixtures import make_desktop
from vms.models import AuditEvent, DesktopInterface, DesktopStatus, Network, Template
from vms.services.networks.desktop_networks import (
    interfaces_allocate,
    network_create,
    template_networks_set,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_adds_a_network_and_puts_a_template_on_it(
    browser: Browser, portal_url: str, admin_user_: Any, fake_template: Template
) -> None:
    network_create(actor=admin_user_, name="desktops", mode="nat", subnet="10.80.0.0/24")
    page = admin_page(browser, portal_url, admin_user_, DESKTOP)
    page.goto(f"{portal_url}/admin/vms/network/add/")
    page.fill("#id_name", "office")
    page.select_option("#id_mode", "isolated")
    page.fill("#id_subnet", "10.80.0.0/25")
    page.fill("#id_gateway_ports", "8080, 443")
    page.click("input[name=_save]")
    expect(page.locator(".errorlist").first).to_contain_text("overlaps")
    page.fill("#id_subnet", "10.90.0.0/24")
    shot(page, "admin-network-add")
    page.click("input[name=_save]")
    expect(page.locator("#result_list")).to_contain_text("10.90.0.1")
    expect(page.locator("#result_list")).to_contain_text("443, 8080")
    shot(page, "admin-networks")
    office = Network.objects.get(name="office")
    assert office.mode == "isolated" and office.gateway_ports == [443, 8080]

    page.goto(f"{portal_url}/admin/vms/template/{fake_template.pk}/change/")
    page.get_by_text("Add another network").click()
    page.select_option("select[name$='-0-network']", label="office")
    page.fill("#id_bandwidth_kb_s", "2000")
    shot(page, "admin-template-networks")
    page.click("input[name=_save]")
    row = page.locator("#result_list tr", has_text=fake_template.name)
    expect(row).to_contain_text("office")
    expect(row).to_contain_text("2000 kB/s each way")
    assert list(fake_template.networks.values_list("name", flat=True)) == ["office"]
    assert AuditEvent.objects.filter(action="template.networks").exists()

    page.goto(f"{portal_url}/admin/vms/network/{office.pk}/change/")
    expect(page.locator(".deletelink")).to_have_count(0)  # in use: no Delete
    page.context.close()

    phone = admin_page(browser, portal_url, admin_user_, PHONE)
    phone.goto(f"{portal_url}/admin/vms/network/")
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"] + 1
    shot(phone, "admin-networks-phone")
    phone.context.close()


def test_the_dashboard_and_help_desk_show_a_desktops_addresses(
    browser: Browser,
    portal_url: str,
    admin_user_: Any,
    employee: Any,
    helpdesk_user: Any,
    fake_template: Template,
) -> None:
    office = network_create(actor=admin_user_, name="office", mode="isolated",
                            subnet="10.90.0.0/24")  # fmt: skip
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[office.pk])
    desktop = make_desktop(employee, fake_template, name="Work", status=DesktopStatus.STOPPED)
    interfaces_allocate(desktop=desktop)
    DesktopInterface.objects.filter(desktop=desktop).update(addresses=["10.90.0.2"])
    waiting = make_desktop(employee, fake_template, name="New", status=DesktopStatus.STOPPED)
    interfaces_allocate(desktop=waiting)

    for viewport, name in ((DESKTOP, "dash-network"), (PHONE, "dash-network-phone")):
        page = logged_in_page(browser, portal_url, employee.username, viewport=viewport)
        expect(page.locator(f"#desktop-{desktop.pk} [data-field=addresses]")).to_have_text(
            "office 10.90.0.2"
        )
        expect(page.locator(f"#desktop-{waiting.pk} [data-field=addresses]")).to_have_text(
            "office (no address yet)"
        )
        shot(page, name)
        page.context.close()

    for viewport, name in ((DESKTOP, "help-network"), (PHONE, "help-network-phone")):
        page = logged_in_page(browser, portal_url, helpdesk_user.username, viewport=viewport)
        page.goto(f"{portal_url}/helpdesk/?q={employee.username}")
        row = page.locator(f"tr[data-desktop='{desktop.pk}']")
        expect(row).to_contain_text("office 10.90.0.2")
        shot(page, name)
        page.context.close()
