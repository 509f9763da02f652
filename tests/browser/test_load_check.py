"""static/js/load-check.js: a page whose module scripts did not all arrive says so, rather
than sit half-made (a console at "Connecting…" for ever).

The dropped connection is made on purpose: Playwright aborts one module's request (a
network that drops one request out of ninety cannot be had on demand here). The pages,
the portal and the browser are real; the desktop is a row with no guest behind it (the
page's scripts are what is tested, not a console)."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.browser.conftest import logged_in_page, shot
from tests.fixtures import make_desktop
from vms.models import DesktopStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True}
FAILED = "Part of this page did not load. Reload the page to try again."


def _drop(route: Route) -> None:
    route.abort("connectionreset")


def test_a_module_that_never_arrives_is_said_on_the_console_page(
    browser: Browser, portal_url: str, employee: Any, fake_template: Any
) -> None:
    desktop = make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    page = logged_in_page(browser, portal_url, employee.username)
    page.route("**/static/vendor/novnc/core/util/int.js", _drop)  # a leaf, deep in the graph
    page.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    expect(page.locator("#console-status")).to_have_text(FAILED)
    expect(page.locator("body")).to_have_attribute("data-scripts", "failed")
    shot(page, "console-scripts-failed")

    page.unroute("**/static/vendor/novnc/core/util/int.js")
    page.reload()  # what the page asks for: the scripts run, the status is the page's own
    expect(page.locator("#console-status")).to_have_text("This desktop is stopped.")
    expect(page.locator("body")).not_to_have_attribute("data-scripts", "failed")
    page.context.close()

    phone = logged_in_page(browser, portal_url, employee.username, **PHONE)
    phone.route("**/static/vendor/novnc/core/util/int.js", _drop)
    phone.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    expect(phone.locator("#console-status")).to_have_text(FAILED)
    shot(phone, "console-scripts-failed-phone")
    phone.context.close()


def test_a_module_that_never_arrives_is_said_on_the_dashboard(
    browser: Browser, portal_url: str, employee: Any, fake_template: Any
) -> None:
    make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    page = logged_in_page(browser, portal_url, employee.username)
    page.route("**/static/js/http.js", _drop)
    page.goto(f"{portal_url}/")
    expect(page.get_by_role("alert")).to_have_text(FAILED)
    shot(page, "dashboard-scripts-failed")
    page.context.close()
