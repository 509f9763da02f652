"""A person at the console while an admin migrates the desktop: the page says the desktop
is moving, then reconnects by itself to the new host and says so (Chromium, the real
portal, two lab hosts)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import logged_in_page, off_thread, wait_for_console
from tests.fixtures import wait_for_status
from vms.models import Host
from vms.services.desktops.requests import desktop_act, desktop_create

pytestmark = [pytest.mark.libvirt, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_console_follows_its_desktop_to_another_host(
    lab_host_joined, browser, portal_url, api_for, admin_user_, employee, demo_template
) -> None:
    first, second = lab_host_joined("laba"), lab_host_joined("labb")
    Host.objects.exclude(pk=first.pk).update(enabled=False)
    made = off_thread(desktop_create, user=employee, template_id=demo_template.pk)
    desktop = wait_for_status(made.pk, "running", timeout=120)
    Host.objects.filter(pk=second.pk).update(enabled=True)
    page = logged_in_page(browser, portal_url, employee.username)
    page.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
    wait_for_console(page)
    page.evaluate(
        """() => { window.seen = []; new MutationObserver(() =>
             window.seen.push(document.getElementById('console-status').textContent))
           .observe(document.getElementById('console-status'),
                    {childList: true, characterData: true, subtree: true}); }"""
    )

    answer = off_thread(
        api_for(admin_user_).post,
        path=f"/api/desktops/{desktop.pk}/migrate/",
        data={"host": second.name},
        format="json",
    )
    assert answer.status_code == 202, answer.content
    wait_for_status(desktop.pk, "running", timeout=120)
    page.wait_for_function(
        "window.seen.some(t => t.includes('moved to another host'))", timeout=30_000
    )
    page.wait_for_function(
        "document.getElementById('console-status').textContent === 'Connected (full control).'",
        timeout=45_000,
    )
    seen = page.evaluate("window.seen")
    assert any("moving to another host" in text for text in seen), seen
    page.context.close()
    desktop.refresh_from_db()
    assert desktop.host == second
    off_thread(desktop_act, actor=employee, desktop=desktop, action="delete", source_ip="::1")
    wait_for_status(desktop.pk, "deleted", timeout=60)
