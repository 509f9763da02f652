"""The employee dashboard and the login page as people use them, in Chromium against the
real portal, worker and QEMU guests: actions that fit the state, "Rebooting…", a named
launch whose steps can be read, quota and Launch buttons that follow deletions live,
renaming, long names, cards on a phone, and a login that keeps the username and tells a
wrong password from a lock-out. Screenshots go to docs/screenshots/."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TypeVar

import pytest
from django import db
from django.conf import settings
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import logged_in_page, off_thread, shot
from tests.fixtures import make_desktop
from vms.models import Desktop, DesktopStatus, Quota
from vms.services.desktops.requests import desktop_act

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}
STEPS = ["Queued", "Cloning disk", "Defining", "Starting"]
S = DesktopStatus
T = TypeVar("T")

# Records every text the launch-progress labels show, with the time it appeared, from
# the first moment of each page load (so nothing shown briefly escapes the test).
RECORD_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => {
  for (const label of document.querySelectorAll("[data-field=progress]")) {
    if (label.lastSeen !== label.textContent) {
      label.lastSeen = label.textContent;
      window.progressSeen.push([label.textContent, performance.now()]);
    }
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def off_the_loop(work: Callable[[], T]) -> T:
    """Run `work` in a thread of its own: Playwright's event loop runs in this one, and
    the services' live push (async_to_sync) refuses to run beside it."""

    def run() -> T:
        try:
            return work()
        finally:
            db.connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def live(page: Page) -> None:
    page.wait_for_function("document.body.dataset.live === 'connected'")


def visible_actions(page: Page, desktop: Desktop) -> set[str]:
    """The actions the desktop's row offers now (the Console link counts as "console")."""
    row = page.locator(f'tr[data-desktop="{desktop.pk}"]')
    offered = {
        form.get_attribute("data-action") or ""
        for form in row.locator("form[data-action]").all()
        if form.is_visible()
    }
    return offered | ({"console"} if row.locator("[data-console]").is_visible() else set())


def test_a_named_launch_reads_its_steps_then_actions_follow_each_state(
    browser: Browser, portal_url: str, employee, demo_template
) -> None:
    page = logged_in_page(browser, portal_url, employee.username)
    page.add_init_script(RECORD_PROGRESS)
    launch_form = page.locator(f'form.launch[data-template="{demo_template.pk}"]')
    launch_form.get_by_label("Name").fill("Quarterly report")
    page.get_by_role("button", name="Launch Demo desktop").click()
    desktop = Desktop.objects.get(owner=employee)
    assert desktop.name == "Quarterly report"
    row = page.locator(f'tr[data-desktop="{desktop.pk}"]')
    message = page.locator(f'[data-launched="{desktop.pk}"]')
    expect(message).to_have_text("Quarterly report is being prepared.")
    expect(row.locator("[data-field=name]")).to_have_text("Quarterly report")
    shot(page, "dash-launch-named")

    # The launch message follows its desktop: "… is running" once it runs (no reload).
    expect(row.locator("[data-field=status]")).to_have_text("Running", timeout=90_000)
    expect(message).to_have_text("Quarterly report is running.")
    assert row.locator("progress").is_hidden()
    _each_step_was_readable(page.evaluate("window.progressSeen"))
    assert visible_actions(page, desktop) == {"console", "stop", "reboot", "reset", "delete"}
    shot(page, "dashboard")

    # Reboot: "Rebooting…" (and no second Reboot) until the worker is done, then Running.
    # Asked for from elsewhere (the API, or help-desk), so this page stays and its live
    # feed shows it: a click's reload can land after a quick worker already finished,
    # and the page rendered then rightly shows Running (the server side of the label is
    # tests/test_dashboard_state.py).
    off_thread(desktop_act, actor=employee, desktop=desktop, action="reboot", source_ip="::1")
    expect(row.locator("[data-field=status]")).to_have_text("Rebooting…")
    assert "reboot" not in visible_actions(page, desktop)
    expect(row.locator("[data-field=status]")).to_have_text("Running", timeout=30_000)
    expect(row.locator('form[data-action="reboot"]')).to_be_visible()

    # Stop: only Start and Delete fit a stopped desktop; Start brings Stop and Reboot back.
    live(page)
    row.get_by_role("button", name="Stop").click()
    expect(row.locator("[data-field=status]")).to_have_text("Stopped", timeout=60_000)
    expect(row.locator('form[data-action="stop"]')).to_be_hidden()
    assert visible_actions(page, desktop) == {"start", "reset", "delete"}
    assert message.count() == 0  # "… is running" is no longer true: it went
    row.get_by_role("button", name="Start").click()
    expect(row.locator("[data-field=status]")).to_have_text("Running", timeout=60_000)
    expect(row.locator('form[data-action="start"]')).to_be_hidden()
    assert visible_actions(page, desktop) == {"console", "stop", "reboot", "reset", "delete"}
    page.context.close()


def _each_step_was_readable(seen: list[list[object]]) -> None:
    """Every launch step shown stayed at least ~1 s, in order, none twice (no flicker)."""
    shown = [(str(text), float(at)) for text, at in seen]
    steps = [text for text, _ in shown if text]
    assert steps, f"no launch step was ever shown: {shown}"
    assert steps == sorted(set(steps), key=STEPS.index), f"steps out of order: {shown}"
    for (text, start), (_, end) in pairwise(shown):
        if text:
            assert end - start >= 950, f"{text!r} was shown for {end - start:.0f} ms: {shown}"


def test_quota_and_launch_buttons_follow_a_delete_without_a_reload(
    browser: Browser, portal_url: str, employee, demo_template, local_host, api_for
) -> None:
    Quota.objects.create(
        user=employee, max_desktops=1, max_vcpus=4, max_memory_mib=4096, max_disk_gib=40
    )
    # A stopped desktop whose guest was never made: deleting it is quick and real.
    desktop = make_desktop(employee, demo_template, host=local_host, status=S.STOPPED)
    page = logged_in_page(browser, portal_url, employee.username)
    live(page)
    page.evaluate("window.notReloaded = true")
    launch = page.get_by_role("button", name="Launch Demo desktop")
    figures = page.locator('[data-meter="max_desktops"] [data-field=figures]')
    refusal = page.locator(f"#refusal-{demo_template.pk}")
    expect(launch).to_be_disabled()
    expect(figures).to_have_text("1 / 1")
    expect(refusal).to_have_text("Quota exceeded: desktops would be 2, the limit is 1.")

    # Deleted elsewhere (a script, another tab): this page only hears of it live.
    client = api_for(employee)
    answer = off_the_loop(lambda: client.delete(f"/api/desktops/{desktop.pk}/"))
    assert answer.status_code == 202
    page.locator(f'tr[data-desktop="{desktop.pk}"]').wait_for(state="detached", timeout=60_000)
    expect(figures).to_have_text("0 / 1")
    expect(page.locator('[data-meter="max_memory_mib"] [data-field=figures]')).to_have_text(
        "0 / 4096 MiB"
    )
    expect(launch).to_be_enabled()
    expect(refusal).to_be_hidden()
    assert page.evaluate("window.notReloaded") is True
    page.context.close()


LONG_NAME = "Finance quarter-end consolidation workstation with a very long name " + "x" * 32


def test_long_names_are_cut_renamed_live_and_rows_are_cards_on_a_phone(
    browser: Browser, portal_url: str, employee, demo_template, local_host, api_for
) -> None:
    long_one = make_desktop(employee, demo_template, host=local_host, name=LONG_NAME[:100])
    short = make_desktop(employee, demo_template, host=local_host, name="Design", status=S.STOPPED)
    page = logged_in_page(browser, portal_url, employee.username)
    live(page)
    name = page.locator(f'tr[data-desktop="{long_one.pk}"] [data-field=name]')
    assert name.get_attribute("title") == LONG_NAME[:100]
    assert name.evaluate("el => getComputedStyle(el).textOverflow") == "ellipsis"
    assert name.evaluate("el => el.scrollWidth > el.clientWidth")  # cut, not stretched
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # Renamed elsewhere (the API): the row follows live.
    page.evaluate("window.notReloaded = true")
    client = api_for(employee)
    response = off_the_loop(
        lambda: client.patch(f"/api/desktops/{short.pk}/", {"name": "Design review"}, format="json")
    )
    assert response.status_code == 200
    short_name = page.locator(f'tr[data-desktop="{short.pk}"] [data-field=name]')
    expect(short_name).to_have_text("Design review")
    assert page.evaluate("window.notReloaded") is True

    # Renamed here: the row's Rename.
    row = page.locator(f'tr[data-desktop="{short.pk}"]')
    row.locator("summary", has_text="Rename").click()
    row.get_by_label("New name").fill("Design review 2")
    row.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Design review is now called Design review 2.")).to_be_visible()
    expect(short_name).to_have_text("Design review 2")
    bad = page.locator(f'tr[data-desktop="{short.pk}"]')
    bad.locator("summary", has_text="Rename").click()
    bad.get_by_label("New name").fill("tab\there")
    bad.get_by_role("button", name="Save").click()
    expect(page.get_by_text("The name may not contain control characters")).to_be_visible()

    phone = logged_in_page(browser, portal_url, employee.username)
    phone.set_viewport_size(PHONE)
    phone.reload()
    live(phone)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    card = phone.locator(f'tr[data-desktop="{long_one.pk}"]')
    assert card.evaluate("el => getComputedStyle(el).display") == "block"
    status_cell = card.locator("td[data-label=Status]")
    label = status_cell.evaluate("el => getComputedStyle(el, '::before').content")
    assert label == '"Status"'
    assert phone.locator("table.desktops thead").evaluate("el => el.offsetHeight") <= 1
    box = card.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    shot(phone, "dash-phone")
    page.context.close()
    phone.context.close()


def _login_page(browser: Browser, portal_url: str, viewport: dict[str, int]) -> Page:
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(f"{portal_url}/login/")
    return page


def _try_login(page: Page, username: str, password: str) -> int:
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button[type=submit]")
    return answer.value.status


def test_a_wrong_password_keeps_the_username_and_a_lockout_says_for_how_long(
    browser: Browser, portal_url: str, employee
) -> None:
    page = _login_page(browser, portal_url, {"width": 1280, "height": 900})
    assert _try_login(page, employee.username, "not-the-password") == 200
    expect(page.locator("#login-error")).to_have_text("The username or password is wrong.")
    expect(page.locator("#id_username")).to_have_value(employee.username)
    expect(page.locator("#id_password")).to_have_value("")
    expect(page.locator("#id_password")).to_be_focused()
    shot(page, "login-error")

    for _ in range(settings.AXES_FAILURE_LIMIT - 2):
        assert _try_login(page, employee.username, "still-wrong") == 200
    assert _try_login(page, employee.username, "the-last-wrong-one") == 429
    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    expect(page.locator("#login-error")).to_have_text(
        f"Too many failed attempts. You are locked out for {minutes} more minutes; try again then."
    )
    expect(page.locator("#id_username")).to_have_value(employee.username)
    shot(page, "login-locked")
    # Locked means locked: the right password is refused the same way now.
    assert _try_login(page, employee.username, "pw-for-tests") == 429
    expect(page.locator("#login-error")).to_contain_text("You are locked out for")

    phone = _login_page(browser, portal_url, PHONE)
    assert _try_login(phone, "someone-else", "wrong") == 200
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(phone, "dash-login-phone")
    page.context.close()
    phone.context.close()
