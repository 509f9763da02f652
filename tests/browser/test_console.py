"""The console as people use it: Chromium, the real portal (daphne + Channels relay), a
real Celery worker and a real QEMU guest. Screens are read with OCR (tesseract)."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.conftest import (
    logged_in_page,
    type_like_a_person,
    wait_for_boot,
    wait_for_console,
    wait_for_text,
)
from tests.fixtures import wait_for_status
from vms.models import ConsoleSession, Desktop

# The shell's answer to `echo hello-$RANDOM`: a line of its own, "hello-" and up to five
# digits ($RANDOM unexpanded would be 7 letters). OCR of the VGA font blurs letters, digits
# and dashes, so only that shape is matched.
ECHOED = r"(?m)^h\S{2,5}-+\S{1,5}$"

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_employee_types_and_helpdesk_view_only_cannot(
    browser, portal_url, employee, helpdesk_user, demo_template, hypervisor
) -> None:
    # 1. The employee logs in and launches the demo desktop from the dashboard.
    page = logged_in_page(browser, portal_url, employee.username)
    page.get_by_role("button", name="Launch Demo desktop").click()
    page.wait_for_url(f"{portal_url}/")
    desktop = Desktop.objects.get(owner=employee)
    wait_for_status(desktop.pk, "running")

    # 2. The console shows the guest's boot text on the canvas.
    page.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(page)
    assert page.inner_text("#console-status") == "Connected (full control)."
    page.click("#btn-scale")  # 1:1, so the canvas shows the VGA text crisp for OCR
    canvas = page.locator("#screen canvas")
    wait_for_boot(canvas.screenshot)
    page.screenshot(path="var/console-employee.png")

    # 3. Typing reaches the guest's shell: $RANDOM expands, so the echo is the shell's.
    canvas.click()
    type_like_a_person(page, "echo hello-$RANDOM\n")
    text = wait_for_text(lambda: hypervisor.screenshot(name=desktop.domain_name), ECHOED)
    assert re.search(r"echohe[l1I]{2}o-[$S]RANDOM", text)

    # 4. Help-desk opens a view-only console in its own browser context; its keys are
    #    dropped by the relay and never reach the guest.
    helper = logged_in_page(browser, portal_url, helpdesk_user.username)
    helper.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(helper)
    assert helper.inner_text("#console-status") == "Connected (view only)."
    helper.click("#btn-scale")
    helper_canvas = helper.locator("#screen canvas")
    wait_for_text(helper_canvas.screenshot, ECHOED)
    # noVNC's own viewOnly would swallow the keys in the browser; send them straight
    # through the live connection instead, as a tampered page would.
    _send_keys_bypassing_view_only(helper, "echo intruder\n")
    time.sleep(3)
    screen = wait_for_text(lambda: hypervisor.screenshot(name=desktop.domain_name), ECHOED)
    assert "intruder" not in screen
    helper.context.close()

    session = _closed_session(desktop, helpdesk_user)
    assert session.mode == "view"
    assert session.dropped_messages > 0
    assert session.bytes_from_guest > 0
    owner_session = ConsoleSession.objects.get(desktop=desktop, user=employee)
    assert owner_session.mode == "full"
    page.context.close()


def _send_keys_bypassing_view_only(page, text: str) -> None:
    """Send RFB KeyEvents through the page's live noVNC connection, as a hostile client
    would; only the relay stands between them and the guest."""
    page.evaluate(
        """(text) => {
            const rfb = window.portalConsole;
            rfb.viewOnly = false;
            for (const char of text) {
                const sym = char === "\\n" ? 0xff0d : char.codePointAt(0);
                rfb.sendKey(sym, null, true);
                rfb.sendKey(sym, null, false);
            }
        }""",
        text,
    )


def _closed_session(desktop, user, timeout: float = 15) -> ConsoleSession:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = ConsoleSession.objects.filter(desktop=desktop, user=user).first()
        if session is not None and session.ended_at is not None:
            return session
        time.sleep(0.25)
    raise AssertionError("the relay did not record the end of the help-desk session")
