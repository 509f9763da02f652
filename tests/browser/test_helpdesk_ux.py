"""The help-desk side as people meet it, in Chromium against the real portal: where a
help-desk login lands, the compact and filterable search, and the owner's notice (who,
how, why, since when) with the End button that cuts the help-desk's console off.

Screenshots for docs/screenshots/: helpdesk.png, help-phone.png, owner-notice.png,
help-owner-notice-phone.png, help-owner-console-notice.png and help-console-ended.png.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import logged_in_page, shot, wait_for_console
from tests.fixtures import UserFactory, make_desktop, wait_for_status
from vms.models import AuditEvent, ConsoleSession, Desktop, DesktopStatus
from vms.services.desktops.thumbnails import thumbnail_path

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# The owner's browser is somewhere other than the server (UTC): "since" is its local time.
OWNER_ZONE = "Europe/Berlin"


def login(browser: Browser, portal_url: str, username: str, **context: Any) -> Page:
    """Log in through the real form in a fresh context; stay wherever the login lands."""
    return logged_in_page(browser, portal_url, username, **{"viewport": DESKTOP, **context})


@pytest.fixture
def screen_of() -> Iterator[Callable[[Desktop], None]]:
    """Give a desktop row a thumbnail (a drawn screen); the file goes afterwards."""
    written: list[Path] = []

    def store(desktop: Desktop) -> None:
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (720, 400), (22, 96, 136))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 372, 720, 400), fill=(30, 30, 30))  # a task bar
        draw.rectangle((140, 60, 580, 320), fill=(240, 240, 240))  # a window
        for line in range(10):
            draw.text((156, 76 + 22 * line), f"report line {line}", fill=(20, 20, 20))
        path = thumbnail_path(desktop.pk)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        written.append(path)
        Desktop.objects.filter(pk=desktop.pk).update(thumbnail_at=timezone.now())

    yield store
    for path in written:
        path.unlink(missing_ok=True)


def test_helpdesk_lands_on_the_help_desk_and_narrows_the_search(
    browser, portal_url, employee, other_employee, helpdesk_user, fake_template, screen_of
) -> None:
    for name in ("alpha", "beta"):
        make_desktop(employee, fake_template, name=name)
    screen_of(Desktop.objects.get(name="alpha"))
    make_desktop(helpdesk_user, fake_template, name="helpers-own")
    idle = UserFactory(username="employee3", first_name="Erin", last_name="Idle")
    idle.groups.add(*employee.groups.all())

    helper = login(browser, portal_url, helpdesk_user.username)
    assert helper.url == f"{portal_url}/helpdesk/"  # not an empty employee dashboard
    assert helper.get_by_role("link", name="My desktops").is_visible()  # their own stay near

    helper.fill("#q", "e")
    helper.get_by_role("button", name="Search").click()
    helper.wait_for_url(re.compile(r"/helpdesk/\?q=e"))
    users = helper.locator("tbody[data-user]")
    assert users.evaluate_all("els => els.map(e => e.dataset.user)") == [
        "employee1",
        "employee2",
        "employee3",
        "helper",
    ]
    helper.get_by_label("Employees only").check()
    helper.get_by_label("With desktops only").check()
    helper.get_by_role("button", name="Search").click()
    helper.wait_for_url(re.compile(r"employees=1&with_desktops=1"))
    assert users.evaluate_all("els => els.map(e => e.dataset.user)") == ["employee1"]
    assert helper.get_by_label("Employees only").is_checked()  # the form keeps the filters
    assert helper.get_by_label("With desktops only").is_checked()
    rows = helper.locator("tr[data-desktop]")
    assert rows.count() == 2
    # One row per desktop, the user's name once beside them.
    assert helper.locator("th.helpdesk-user").all_inner_texts() == ["employee1"]
    assert rows.nth(0).get_by_role("link", name="View console").is_visible()
    thumb = rows.nth(0).get_by_role("img", name="Screen of alpha")
    expect(thumb).to_have_js_property("naturalWidth", 720)  # loaded, and shown small:
    assert thumb.bounding_box()["width"] == 64
    shot(helper, "helpdesk")

    phone = login(browser, portal_url, helpdesk_user.username, viewport=PHONE)
    phone.goto(f"{portal_url}/helpdesk/?q=e&with_desktops=1")
    assert phone.locator("tr[data-desktop]").count() == 3
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the results overflow a phone's screen ({width}px)"
    shot(phone, "help-phone")

    # A tampered filter gets a message, not a stack trace.
    answer = helper.goto(f"{portal_url}/helpdesk/?q=e&employees=yes")
    assert answer is not None and answer.status == 400
    alert = helper.get_by_role("alert")
    assert "takes the value 1 (on) or nothing" in alert.inner_text()
    helper.context.close()
    phone.context.close()


def test_owner_sees_who_how_why_and_since_when_and_ends_the_session(
    browser, portal_url, employee, helpdesk_user, demo_template
) -> None:
    owner = login(browser, portal_url, employee.username, timezone_id=OWNER_ZONE, locale="en-GB")
    owner.get_by_role("button", name="Launch Demo desktop").click()
    desktop = wait_for_status(Desktop.objects.get(owner=employee).pk, "running")
    owner.reload()
    owner.wait_for_function("document.body.dataset.live === 'connected'")
    banner = owner.locator(f'[data-watchers="{desktop.pk}"]')
    assert banner.is_hidden()

    # Help-desk looks, then takes control with a reason.
    helper = login(browser, portal_url, helpdesk_user.username)
    helper.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(helper)
    banner.get_by_text("is viewing").wait_for(timeout=15_000)
    helper.fill("#control-reason", "ticket #1234: printer setup")
    helper.get_by_role("button", name="Take control").click()
    helper.locator("#console-status", has_text="Connected (full control).").wait_for(timeout=45_000)

    # The owner's notice, live: who, in control, why, and since when in the owner's time.
    banner.get_by_text("is in control of").wait_for(timeout=15_000)
    expect(banner.locator(".watcher")).to_have_count(1)  # the view-only session has gone
    session = ConsoleSession.objects.get(desktop=desktop, user=helpdesk_user, mode="full")
    since = session.started_at.astimezone(ZoneInfo(OWNER_ZONE)).strftime("%H:%M")
    assert banner.locator(".watcher p").inner_text() == (
        f"{helpdesk_user.username} (help desk) is in control of {desktop.name} "
        f"· since {since} · Reason: “ticket #1234: printer setup”"
    )
    owner.reload()  # the page as rendered by the server says the same, in local time too
    banner.get_by_text(f"since {since}").wait_for()
    owner.wait_for_function("document.body.dataset.live === 'connected'")
    shot(owner, "owner-notice")
    phone = owner.context.new_page()
    phone.set_viewport_size(PHONE)
    phone.goto(f"{portal_url}/")
    shot(phone, "help-owner-notice-phone")
    phone.close()

    # On their own console page the owner sees the same notice, and ends the session
    # there: their own console stays up; the help-desk's is cut off and says why.
    own = owner.context.new_page()
    own.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(own)
    notice = own.locator("#watchers")
    notice.get_by_text(f"since {since}").wait_for()
    assert "Reason: “ticket #1234: printer setup”" in notice.inner_text()
    shot(own, "help-owner-console-notice")
    notice.get_by_role("button", name=f"End {helpdesk_user.username}'s session").click()
    own.get_by_role("status").filter(has_text="You ended helper's console session.").wait_for()
    notice.wait_for(state="hidden")
    banner.wait_for(state="hidden")  # the dashboard hears it live too
    helper.wait_for_selector("body[data-console=disconnected]", timeout=15_000)
    assert helper.inner_text("#console-status") == (
        "The desktop's owner (or an admin) ended this console session."
    )
    assert own.evaluate("document.body.dataset.console") == "connected"
    assert own.inner_text("#console-status") == "Connected (full control)."
    shot(helper, "help-console-ended")
    session.refresh_from_db()
    assert session.close_reason == "ended by the desktop's owner"
    assert AuditEvent.objects.filter(action="console.end", actor=employee).exists()
    owner.reload()  # and it stays gone
    assert owner.locator(f'[data-watchers="{desktop.pk}"]').is_hidden()
    own.close()
    helper.context.close()
    owner.context.close()
    assert Desktop.objects.get(pk=desktop.pk).status == DesktopStatus.RUNNING
