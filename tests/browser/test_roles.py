"""Each role's main path in Chromium, with screenshots of the main pages for the README
(docs/screenshots/)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

from tests.browser.conftest import logged_in_page, shot, wait_for_console
from vms.models import Desktop, Quota, Template

pytestmark = [pytest.mark.browser, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_employee_launches_watches_progress_opens_console_and_deletes(
    browser, portal_url, employee, demo_template
) -> None:
    page = logged_in_page(browser, portal_url, employee.username)
    page.get_by_role("button", name="Launch Demo desktop").click()
    desktop = Desktop.objects.get(owner=employee)
    row = page.locator(f'tr[data-desktop="{desktop.pk}"]')
    # The status changes arrive over the live feed: no reload happens from here on.
    page.wait_for_function("document.body.dataset.live === 'connected'")
    row.locator("[data-field=status]", has_text="Running").wait_for(timeout=90_000)
    assert row.locator("progress").is_hidden()
    shot(page, "dashboard")

    row.get_by_role("link", name="Console").click()
    wait_for_console(page)
    page.wait_for_timeout(1500)
    shot(page, "console")

    page.goto(f"{portal_url}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-desktop="{desktop.pk}"]').get_by_role("button", name="Delete").click()
    page.locator(f'tr[data-desktop="{desktop.pk}"]').wait_for(state="detached", timeout=60_000)
    desktop.refresh_from_db()
    assert desktop.status == "deleted"
    page.context.close()


def test_admin_imports_assigns_and_sets_a_quota_the_employee_meets(
    browser, portal_url, admin_user_, employee, local_host
) -> None:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{portal_url}/admin/login/?next=/admin/")
    page.fill("#id_username", admin_user_.username)
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.goto(f"{portal_url}/admin/vms/template/add/")
    page.fill("#id_name", "Design workstation")
    page.fill("#id_image_path", settings.DEMO_GUEST_IMAGE)
    page.fill("#id_memory_mib", "128")
    page.select_option("#id_assigned_groups_from", label="employee")
    page.click("#id_assigned_groups_add")
    page.click("input[name=_save]")
    page.wait_for_load_state()
    errors = page.locator(".errornote, .errorlist").all_inner_texts()
    assert not errors, errors
    page.wait_for_url(f"{portal_url}/admin/vms/template/")
    shot(page, "admin-templates")
    template = Template.objects.get(name="Design workstation")
    assert template.assigned_groups.filter(name="employee").exists()

    page.goto(f"{portal_url}/admin/vms/quota/add/")
    # The group is picked by typing its name (an autocomplete, not a list of every group).
    page.locator("#id_group + .select2 .select2-selection").click()
    page.fill(".select2-container--open .select2-search__field", "empl")
    page.locator(".select2-results__option", has_text="employee").click()
    # The pick lands a moment after the click (the results list re-renders as it loads).
    page.locator("#select2-id_group-container", has_text="employee").wait_for()
    page.fill("#id_max_desktops", "1")
    page.click("input[name=_save]")
    page.wait_for_load_state()
    errors = page.locator(".errornote, .errorlist").all_inner_texts()
    assert not errors, errors
    page.wait_for_url(f"{portal_url}/admin/vms/quota/")
    assert Quota.objects.get(group=Group.objects.get(name="employee")).max_desktops == 1

    person = logged_in_page(browser, portal_url, employee.username)
    person.get_by_role("button", name="Launch Design workstation").click()
    person.wait_for_url(f"{portal_url}/")
    button = person.get_by_role("button", name="Launch Design workstation")
    assert button.is_disabled()
    assert "Quota exceeded: desktops would be 2, the limit is 1." in person.content()
    shot(person, "quota")
    person.context.close()
    page.context.close()


def test_helpdesk_finds_the_employee_views_the_console_and_the_owner_sees_it(
    browser, portal_url, employee, helpdesk_user, demo_template
) -> None:
    from tests.fixtures import wait_for_status

    owner = logged_in_page(browser, portal_url, employee.username)
    owner.get_by_role("button", name="Launch Demo desktop").click()
    desktop = wait_for_status(Desktop.objects.get(owner=employee).pk, "running")
    owner.reload()
    owner.wait_for_function("document.body.dataset.live === 'connected'")
    banner = owner.locator(f'[data-watchers="{desktop.pk}"]')
    assert banner.is_hidden()

    helper = logged_in_page(browser, portal_url, helpdesk_user.username)
    helper.goto(f"{portal_url}/helpdesk/")
    helper.fill("#q", employee.username)
    helper.get_by_role("button", name="Search").click()
    helper.get_by_role("link", name="View console").click()
    wait_for_console(helper)
    assert helper.inner_text("#console-status") == "Connected (view only)."

    banner.wait_for(state="visible", timeout=15_000)
    # The notice's full form (reason, since when, End) is tested in test_helpdesk_ux.py,
    # which also takes the helpdesk and owner-notice screenshots.
    assert f"{helpdesk_user.username} (help desk) is viewing {desktop.name}" in banner.inner_text()
    helper.context.close()
    banner.wait_for(state="hidden", timeout=45_000)  # the notice goes when help-desk leaves
    owner.context.close()
