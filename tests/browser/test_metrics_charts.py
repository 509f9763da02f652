"""The monitoring charts in Chromium: drawn with data on the owner's dashboard, the
help-desk's user page and the admin's host page (desktop and phone sizes, screenshots in
docs/screenshots/), and a value pushed live reaches an open chart."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from django.utils import timezone

from tests.browser.conftest import SHOTS, logged_in_page, off_thread
from tests.fixtures import make_desktop
from tests.metrics import helpers
from tests.metrics.helpers import stats_for
from vms.models import Desktop
from vms.services.metrics.sampling import metrics_rollup

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
POINTS = 120  # half an hour of samples every 15 s


def record(*args, **kwargs) -> int:
    """One pass recorded (and pushed live) outside Playwright's thread."""
    return off_thread(lambda: helpers.record(*args, **kwargs))


@pytest.fixture
def measured(fake_host, fake_template, employee):
    """A running desktop sampled for the last half hour (a busy spell in the middle), and
    a second one, so the host page has two desktops."""
    desktop = make_desktop(employee, fake_template, domain_name="dpm-shot", name="Office desk")
    quiet = make_desktop(employee, fake_template, domain_name="dpm-quiet", name="Spare desk")
    start = timezone.now() - dt.timedelta(seconds=15 * POINTS)
    cpu = spare = 0.0
    for i in range(POINTS):
        cpu += 15 * (0.15 + 0.6 * max(math.sin(i / 12), 0))  # seconds of CPU per 15 s
        spare += 0.3
        memory = (150 + 60 * math.sin(i / 20)) * 1024
        record(fake_host, start + dt.timedelta(seconds=15 * i),
               stats_for(desktop, cpu_s=cpu, memory_used_kib=int(memory)),
               stats_for(quiet, cpu_s=spare), busy_s=cpu * 1.2, total_s=30 * i,
               pool_used=0.93)  # fmt: skip
    metrics_rollup()  # the usage report's hourly rows
    desktop.cpu_s = cpu  # type: ignore[attr-defined]  # where its counter stands
    return desktop


def wait_for_charts(page, count: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('[data-chart] canvas').length >= {count} && "
        "[...document.querySelectorAll('[data-chart]')]"
        ".every(c => c.closest('[hidden]') || Number(c.dataset.points) > 0)"
    )


def test_charts_draw_and_take_live_values(
    browser, portal_url, employee, measured, fake_host, fake_template
):
    late = make_desktop(employee, fake_template, domain_name="dpm-late", status="stopped")
    page = logged_in_page(browser, portal_url, employee.username)
    assert page.locator(f'[data-metrics-desktop="{late.pk}"]').is_hidden()
    wait_for_charts(page, 4)
    box = page.locator(f'[data-metrics-desktop="{measured.pk}"]')
    assert box.locator("[data-field=value]").first.inner_text().startswith("CPU ")
    assert int(box.locator('[data-chart="cpu_percent"]').get_attribute("data-points")) == POINTS
    page.wait_for_selector("body[data-live=connected]")
    Desktop.objects.filter(pk=late.pk).update(status="running")  # it started meanwhile
    both = (stats_for(measured, cpu_s=measured.cpu_s + 4.5), stats_for(late, cpu_s=1))
    record(fake_host, timezone.now(), *both)
    page.wait_for_function(
        f'document.querySelector(\'[data-metrics-desktop="{measured.pk}"] '
        f"[data-chart=cpu_percent]').dataset.points === '{POINTS + 1}'"
    )
    page.locator(f'[data-metrics-desktop="{late.pk}"]').wait_for(state="visible")
    Desktop.objects.filter(pk=late.pk).delete()  # not in the screenshots
    page.reload()
    wait_for_charts(page, 4)
    page.screenshot(path=str(SHOTS / "metrics-dashboard.png"), full_page=True)
    phone = logged_in_page(browser, portal_url, employee.username, **PHONE)
    wait_for_charts(phone, 4)
    phone.screenshot(path=str(SHOTS / "metrics-dashboard-phone.png"), full_page=True)


def test_the_helpdesk_sees_the_charts(browser, portal_url, helpdesk_user, measured):
    page = logged_in_page(browser, portal_url, helpdesk_user.username)
    page.goto(f"{portal_url}/helpdesk/?q=employee1")
    wait_for_charts(page, 4)
    page.screenshot(path=str(SHOTS / "metrics-helpdesk.png"), full_page=True)


def test_the_admin_host_page_draws_the_host(browser, portal_url, admin_user_, measured, fake_host):
    for name, context in (("metrics-host", {}), ("metrics-host-phone", PHONE)):
        page = logged_in_page(browser, portal_url, admin_user_.username, **context)
        page.goto(f"{portal_url}/admin/vms/host/{fake_host.pk}/change/")
        wait_for_charts(page, 3 + 4)  # the host's three and two desktops' two each
        host = page.locator("[data-metrics-host=fake]")
        assert host.locator('[data-chart="running_desktops"]').get_attribute("data-points")
        assert "2 running" in host.inner_text() and "93 % full" in host.inner_text()
        desktop = host.locator(f'[data-metrics-desktop="{measured.pk}"] [data-field=value]')
        memory = desktop.nth(1).inner_text()
        assert memory.endswith(" MiB") and memory[0].isdigit()  # its own, not the host's
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_usage_report_page(browser, portal_url, admin_user_, measured):
    for name, context in (("metrics-usage-report", {}), ("metrics-usage-report-phone", PHONE)):
        page = logged_in_page(browser, portal_url, admin_user_.username, **context)
        page.goto(f"{portal_url}/admin/vms/host/usage/")
        assert "employee1" in page.locator("table.usage-report").inner_text()
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
