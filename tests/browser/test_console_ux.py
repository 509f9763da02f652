"""The console page as people use it (Chromium, the real portal and relay, a real Celery
worker, real QEMU guests): paste as keystrokes, Ctrl-Alt-Del, a stop and a start, a phone,
and a help-desk person taking and releasing control.

What a guest receives is read back through its serial console (the guest's VGA shell
copies it there with `cat > /dev/ttyS0`; tests/guestshell.py), so the exact text is
compared, not an OCR guess."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    logged_in_page,
    off_thread,
    shot,
    wait_for_boot,
    wait_for_console,
    wait_for_text,
)
from tests.fixtures import wait_for_status
from tests.guestshell import GuestShell, guest_shell
from vms.models import ConsoleSession, Desktop
from vms.services.desktops.requests import desktop_create

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PASTED = 'Hello World! @#$%^&*()_+ "quoted" ~/path|pipe'
PRINTABLE_ASCII = "".join(chr(code) for code in range(0x20, 0x7F))


# --- helpers ---------------------------------------------------------------------------


def running_desktop(owner: Any, template: Any) -> Desktop:
    desktop = off_thread(desktop_create, user=owner, template_id=template.pk)
    return wait_for_status(desktop.pk, "running")


def logged_in(browser: Browser, portal_url: str, username: str, **options: Any) -> Page:
    """A fresh context (its own cookies and screen) logged in through the login form."""
    return logged_in_page(browser, portal_url, username, **(options or DESKTOP))


def open_console(page: Page, portal_url: str, desktop: Desktop, how: str) -> None:
    page.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(page)
    expect(page.locator("#console-status")).to_have_text(f"Connected ({how}).")


def guest_screen(hypervisor: Any, desktop: Desktop) -> Callable[[], bytes]:
    return lambda: hypervisor.screenshot(name=desktop.domain_name)


def paste(page: Page, text: str) -> None:
    """Type `text` through the paste panel and wait until the page says it is done."""
    panel = page.locator("details.paste")
    if panel.get_attribute("open") is None:
        panel.locator("summary").click()
    page.fill("#paste-text", text)
    page.click("#btn-paste")
    expect(page.locator("#console-status")).to_have_text(re.compile(r"^Typed "), timeout=30_000)


@contextmanager
def serial_of(desktop: Desktop) -> Iterator[GuestShell]:
    """The guest's serial console, its shell answering and idle at its prompt, so that
    what the guest's programs write there comes line by line."""
    with guest_shell(settings.LIBVIRT_URI, desktop.domain_name) as shell:
        yield shell


# --- 1, 3, 5: paste as keystrokes, Ctrl-Alt-Del, the title ------------------------------


def test_paste_types_the_text_exactly_and_ctrl_alt_del_asks_first(
    browser, portal_url, employee, demo_template, hypervisor
) -> None:
    desktop = running_desktop(employee, demo_template)
    with serial_of(desktop) as serial:
        page = logged_in(browser, portal_url, employee.username)
        open_console(page, portal_url, desktop, "full control")
        assert page.title() == f"Console · {desktop.name} · Desktop portal"
        wait_for_boot(guest_screen(hypervisor, desktop))

        # The guest's shell copies each line it is given to the serial port.
        paste(page, "cat > /dev/ttyS0\n")
        expect(page.locator("#console-status")).to_have_text("Typed 17 characters.")
        paste(page, PASTED)
        expect(page.locator("#console-status")).to_have_text(f"Typed {len(PASTED)} characters.")
        paste(page, "\n")
        assert serial.line() == PASTED
        # Every printable ASCII character, each with the key (and Shift) of a US keyboard.
        paste(page, PRINTABLE_ASCII + "\n")
        assert serial.line() == PRINTABLE_ASCII

        # What no key types is skipped, and the page says so (not sent as something else).
        paste(page, "café ✓\n")
        expect(page.locator("#console-status")).to_have_text(
            "Typed 5 characters. Skipped what a US keyboard cannot type: “é”, “✓”."
        )
        assert serial.line() == "caf "
        page.select_option("#send-keys", "ctrl-d")  # end of input: cat returns to the shell
        wait_for_text(page.locator("#screen canvas").screenshot, r"He[l1I]{2}oWor[l1I]d")
        shot(page, "console-desktop")

        # Ctrl-Alt-Del asks; cancelled, no key leaves the page.
        page.evaluate(
            """() => {
                const rfb = window.portalConsole;
                const send = rfb.sendKey.bind(rfb);
                window.sentKeys = [];
                rfb.sendKey = (sym, code, down) => {
                    window.sentKeys.push(code);
                    send(sym, code, down);
                };
            }"""
        )
        questions: list[str] = []

        def answer(accept: bool) -> None:
            def reply(dialog: Any) -> None:
                questions.append(dialog.message)
                dialog.accept() if accept else dialog.dismiss()

            page.once("dialog", reply)
            page.click("#btn-cad")

        answer(False)
        expect(page.locator("#console-status")).to_have_text("Ctrl-Alt-Del not sent.")
        assert page.evaluate("window.sentKeys") == []
        assert questions == [f"Send Ctrl-Alt-Del to {desktop.name}? Many systems restart at once."]

        # Accepted, the keys go and the guest's init restarts it (the kernel says so on
        # its serial console).
        answer(True)
        expect(page.locator("#console-status")).to_have_text("Ctrl-Alt-Del sent.")
        assert page.evaluate("window.sentKeys") == [
            "ControlLeft", "AltLeft", "Delete", "Delete", "AltLeft", "ControlLeft"
        ]  # fmt: skip
        serial.wait_for(r"reboot: Restarting system", timeout=60)
        page.context.close()


# --- 2: stop, start, and the console comes back by itself -------------------------------


def test_stopped_console_offers_start_and_reconnects_by_itself(
    browser, portal_url, employee, demo_template
) -> None:
    desktop = running_desktop(employee, demo_template)
    page = logged_in(browser, portal_url, employee.username)
    open_console(page, portal_url, desktop, "full control")
    status = page.locator("#console-status")
    start = page.locator("#desktop-offline").get_by_role("button", name="Start")
    page.evaluate("window.notReloaded = true")

    # Stopped and started from the dashboard in another tab: the console tab follows.
    dashboard = page.context.new_page()
    dashboard.goto(f"{portal_url}/")
    row = dashboard.locator(f'tr[data-desktop="{desktop.pk}"]')
    row.get_by_role("button", name="Stop").click()
    expect(status).to_have_text("This desktop is stopped.", timeout=60_000)
    expect(start).to_be_visible()
    assert page.locator("body").get_attribute("data-console") == "disconnected"
    expect(page.locator("#btn-cad")).to_be_disabled()  # nothing to send keys to
    page.locator("details.paste summary").click()
    expect(page.locator("#paste-note")).to_have_text("Not connected: nothing can be typed now.")
    expect(page.locator("#paste-text")).to_be_disabled()
    row = dashboard.locator(f'tr[data-desktop="{desktop.pk}"]')
    row.get_by_role("button", name="Start").click()
    expect(status).to_have_text("Connected (full control).", timeout=60_000)
    expect(page.locator("#desktop-offline")).to_be_hidden()
    assert page.evaluate("window.notReloaded") is True  # the live feed did it, no reload
    dashboard.close()

    # Stopped again; this time started from the console page's own Start button.
    off_thread(_act, desktop=desktop, actor=employee, action="stop")
    expect(status).to_have_text("This desktop is stopped.", timeout=60_000)
    expect(start).to_be_visible()
    page.locator("details.paste summary").click()  # closed again: the picture is of Start
    shot(page, "console-stopped")
    start.click()
    page.wait_for_url(f"{portal_url}/desktops/{desktop.pk}/console/")
    expect(page.locator(".message.success")).to_have_text(f"{desktop.name}: start requested.")
    expect(status).to_have_text("Connected (full control).", timeout=60_000)
    assert wait_for_status(desktop.pk, "running")
    page.context.close()


def _act(*, desktop: Desktop, actor: Any, action: str) -> None:
    from vms.services.desktops.requests import desktop_act

    desktop.refresh_from_db()
    desktop_act(actor=actor, desktop=desktop, action=action)


# --- 4: a phone ----------------------------------------------------------------------------


def test_phone_shows_a_readable_screen_and_its_keyboard_types(
    browser, portal_url, employee, demo_template, hypervisor
) -> None:
    desktop = running_desktop(employee, demo_template)
    page = logged_in(browser, portal_url, employee.username, **PHONE)
    open_console(page, portal_url, desktop, "full control")
    wait_for_boot(guest_screen(hypervisor, desktop))
    canvas = page.locator("#screen canvas").bounding_box()
    box = page.locator("#screen").bounding_box()
    assert canvas and box
    assert canvas["width"] >= 0.8 * 390, canvas  # the guest's screen spans the phone's width
    assert canvas["height"] >= 0.5 * canvas["width"] * 0.9, canvas  # in its own shape (720x400)
    assert box["height"] <= canvas["height"] + 2, (box, canvas)  # no tall empty black box
    shot(page, "console-phone")

    keyboard = page.get_by_role("button", name="Keyboard")
    expect(keyboard).to_be_visible()
    keyboard.tap()
    assert page.evaluate("document.activeElement.id") == "osk-input"
    page.keyboard.type("echo osk-$((6*7))x", delay=30)
    page.keyboard.press("Backspace")
    page.keyboard.press("Enter")
    wait_for_text(guest_screen(hypervisor, desktop), r"(?m)^[o0]sk-+4[2Z]$")
    page.context.close()


# --- 6 and the view-only paste panel: help desk takes and releases control ----------------


def test_helpdesk_takes_control_with_a_reason_and_releases_it(
    browser, portal_url, employee, helpdesk_user, demo_template, hypervisor
) -> None:
    desktop = running_desktop(employee, demo_template)
    page = logged_in(browser, portal_url, helpdesk_user.username)
    open_console(page, portal_url, desktop, "view only")
    wait_for_boot(guest_screen(hypervisor, desktop))
    take = page.locator("#take-control")
    release = page.get_by_role("button", name="Release control")
    page.locator("details.paste summary").click()
    _expect_view_only(page)
    expect(release).to_be_hidden()
    shot(page, "console-helpdesk-view")

    page.fill("#control-reason", "   ")  # no reason, no control; the view stays
    page.get_by_role("button", name="Take control").click()
    expect(page.locator("#console-status")).to_have_text(
        "Say why you are taking control: the reason is recorded."
    )
    assert page.locator("body").get_attribute("data-console") == "connected"
    _expect_view_only(page)

    page.fill("#control-reason", "ticket #42: printer settings")
    page.get_by_role("button", name="Take control").click()
    expect(page.locator("#console-status")).to_have_text("Connected (full control).")
    expect(take).to_be_hidden()
    expect(release).to_be_visible()
    expect(page.locator("#control-held")).to_contain_text("ticket #42: printer settings")
    expect(page.locator("#paste-text")).to_be_enabled()
    expect(page.locator("#paste-note")).to_be_hidden()
    paste(page, "echo helped-$((6*7))\n")
    wait_for_text(guest_screen(hypervisor, desktop), r"(?m)^he[l1I]ped-+4[2Z]$")
    shot(page, "console-helpdesk-control")

    release.click()
    expect(page.locator("#console-status")).to_have_text("Connected (view only).")
    expect(take).to_be_visible()
    expect(release).to_be_hidden()
    _expect_view_only(page)
    full = _ended_session(desktop, helpdesk_user, mode="full")
    assert full.reason == "ticket #42: printer settings"
    sessions = ConsoleSession.objects.filter(desktop=desktop, user=helpdesk_user)
    assert [s.mode for s in sessions.order_by("started_at")] == ["view", "full", "view"]
    page.context.close()


def _expect_view_only(page: Page) -> None:
    expect(page.locator("#paste-note")).to_have_text("View only: take control to type.")
    expect(page.locator("#paste-text")).to_be_disabled()
    expect(page.locator("#btn-paste")).to_be_disabled()
    expect(page.locator("#btn-cad")).to_be_disabled()


def _ended_session(desktop: Desktop, user: Any, *, mode: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ConsoleSession.objects.filter(desktop=desktop, user=user, mode=mode).first()
        if found is not None and found.ended_at is not None:
            return found
        time.sleep(0.25)
    raise AssertionError(f"the relay did not record the end of the {mode} session")
