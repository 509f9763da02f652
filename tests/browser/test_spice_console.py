"""SPICE desktops in the browser (issue 13): Chromium, the real portal (daphne + the
Channels SPICE relay), a real Celery worker and a real QEMU guest with SPICE graphics.

The screen is read with OCR; what the guest receives is read back through its serial
port (its shell copies each line there with `cat > /dev/ttyS0`), so exact text is compared.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import type_like_a_person, wait_for_boot, wait_for_text
from tests.browser.test_console_ux import (
    PASTED,
    PHONE,
    logged_in,
    open_console,
    paste,
    running_desktop,
    serial_of,
    shot,
)
from vms.models import ConsoleSession, ConsoleType, Desktop, Template

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def spice_template(demo_template: Template) -> Template:
    """The demo template, switched to SPICE as an admin would."""
    Template.objects.filter(pk=demo_template.pk).update(console_type=ConsoleType.SPICE)
    demo_template.refresh_from_db()
    return demo_template


def _actual_size(page: Page) -> Any:
    """The SPICE canvas at 1:1, so the VGA text is crisp for OCR."""
    page.click("#btn-scale")
    canvas = page.locator("#screen canvas")
    canvas.wait_for(timeout=30_000)
    return canvas


# The state of the page's SPICE inputs channel: "ready" once linked, "error" once refused.
INPUTS_ARE = "(state) => (window.portalConsole.conn.inputs || {}).state === state"
# A tampered page links an inputs channel of its own and reports how that went.
FORGE_INPUTS = """async () => {
    const module = "/static/vendor/spice-html5/src/inputs.js";
    const { SpiceInputsConn } = await import(module);
    const c = window.portalConsole.conn;
    const inputs = new SpiceInputsConn({
        uri: c.ws.url, parent: c, connection_id: c.connection_id, type: 3, chan_id: 0,
    });
    inputs.onerror = () => {};
    for (let i = 0; i < 50 && !["error", "ready"].includes(inputs.state); i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return inputs.state;
}"""


def _wait_for_inputs(page: Page, state: str) -> None:
    page.wait_for_function(INPUTS_ARE, arg=state, timeout=30_000)


def test_spice_console_shows_the_screen_and_typing_reaches_the_guest(
    browser, portal_url, employee, spice_template, hypervisor
) -> None:
    desktop = running_desktop(employee, spice_template)
    with serial_of(desktop) as serial:
        page = logged_in(browser, portal_url, employee.username)
        open_console(page, portal_url, desktop, "full control")
        canvas = _actual_size(page)
        wait_for_boot(canvas.screenshot)
        _wait_for_inputs(page, "ready")

        # Keys typed on the canvas go through spice-html5's own key handlers.
        canvas.click()
        type_like_a_person(page, "cat > /dev/ttyS0\n")
        type_like_a_person(page, "Typed in SPICE!\n")
        assert serial.line(timeout=30) == "Typed in SPICE!"
        # Paste as keystrokes: Shift held around capitals and shifted symbols.
        paste(page, PASTED + "\n")
        assert serial.line() == PASTED
        page.select_option("#send-keys", "ctrl-d")  # cat ends; the shell is back
        page.click("#btn-scale")  # scaled again, as people see it
        shot(page, "spice-console-desktop")
        page.context.close()

    session = _ended(desktop, employee, mode="full")
    assert session.relay == "channels"
    assert session.bytes_from_guest > 10_000  # the display channel's pictures
    assert session.bytes_to_guest > 0


def test_spice_view_only_has_no_inputs_and_helpdesk_takes_control(
    browser, portal_url, employee, helpdesk_user, spice_template, hypervisor
) -> None:
    desktop = running_desktop(employee, spice_template)
    with serial_of(desktop) as serial:
        owner = logged_in(browser, portal_url, employee.username)
        open_console(owner, portal_url, desktop, "full control")
        wait_for_boot(_actual_size(owner).screenshot)
        paste(owner, "cat > /dev/ttyS0\n")

        # The owner stays at the console while help-desk watches (SPICE multi-client).
        helper = logged_in(browser, portal_url, helpdesk_user.username)
        open_console(helper, portal_url, desktop, "view only")
        canvas = _actual_size(helper)
        wait_for_boot(canvas.screenshot)
        # The relay refused the inputs channel's link; the page's keys go nowhere...
        _wait_for_inputs(helper, "error")
        canvas.click()
        type_like_a_person(helper, "intruder\n")
        # ...and a tampered page that links an inputs channel itself is refused too.
        forged = helper.evaluate(FORGE_INPUTS)
        assert forged == "error"
        shot(helper, "spice-console-helpdesk-view")
        # The owner was not disconnected, still sees the screen and still types.
        _wait_for_inputs(owner, "ready")
        paste(owner, "owner still here\n")
        assert serial.line() == "owner still here"  # "intruder" never arrived
        wait_for_text(owner.locator("#screen canvas").screenshot, "owners[t1l]il[l1]here")

        # Taking control with a reason: a full session, with an inputs channel.
        helper.fill("#control-reason", "ticket #7: SPICE help")
        helper.get_by_role("button", name="Take control").click()
        expect(helper.locator("#console-status")).to_have_text("Connected (full control).")
        _wait_for_inputs(helper, "ready")
        paste(helper, "helped\n")
        assert serial.line() == "helped"
        helper.context.close()
        owner.context.close()

    view = _ended(desktop, helpdesk_user, mode="view")
    assert view.dropped_messages >= 2  # two inputs channels refused
    full = _ended(desktop, helpdesk_user, mode="full")
    assert full.reason == "ticket #7: SPICE help"


def test_spice_console_on_a_phone(
    browser, portal_url, employee, spice_template, hypervisor
) -> None:
    desktop = running_desktop(employee, spice_template)
    page = logged_in(browser, portal_url, employee.username, **PHONE)
    open_console(page, portal_url, desktop, "full control")
    page.locator("#screen canvas").wait_for(timeout=30_000)
    # The guest's shell is up; the page shows what the guest shows (drawn within a second).
    wait_for_boot(lambda: hypervisor.screenshot(name=desktop.domain_name))
    time.sleep(2)
    shot(page, "spice-console-phone")
    box = page.locator("#screen canvas").bounding_box()
    assert box is not None and box["width"] <= 390
    page.context.close()


def _ended(desktop: Desktop, user: Any, *, mode: str, timeout: float = 15) -> ConsoleSession:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ConsoleSession.objects.filter(desktop=desktop, user=user, mode=mode).first()
        if found is not None and found.ended_at is not None:
            return found
        time.sleep(0.25)
    raise AssertionError(f"the relay did not record the end of the {mode} session")
