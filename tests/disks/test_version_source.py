"""Publishing an employee's desktop as everyone's template version (issue 25, low finding):
the admin confirms by naming the desktop's owner (API and admin form), and the version and
its audit row record the source desktop and its owner. Nothing is built: the fake host's
queue has no worker."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import AuditEvent, Desktop, TemplateVersion

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def prepared(employee: Any, fake_template: Any) -> Desktop:
    return make_desktop(employee, fake_template, status="stopped", name="Anna's desk")


def test_the_api_publishes_only_when_the_owner_is_named_and_records_the_source(
    api_for: Any, admin_user_: Any, employee: Any, other_employee: Any, prepared: Desktop
) -> None:
    url = f"/api/desktops/{prepared.pk}/publish-version/"
    admin = api_for(admin_user_)
    assert api_for(employee).post(url, {"confirm_owner": employee.username}).status_code == 403
    assert api_for(other_employee).post(url, {"confirm_owner": "x"}).status_code == 404
    for body in ({}, {"confirm_owner": ""}, {"confirm_owner": admin_user_.username}):
        refused = admin.post(url, body, format="json")
        assert refused.status_code == 400, (body, refused.content)
        assert f"its owner, {employee.username}" in refused.json()["detail"]
    assert not TemplateVersion.objects.exists()

    done = admin.post(url, {"confirm_owner": employee.username, "note": "v2"}, format="json")
    assert done.status_code == 202, done.content
    body = done.json()
    assert (body["made_from"], body["made_from_owner"]) == (str(prepared.pk), employee.pk)
    assert (body["made_from_owner_name"], body["made_from_name"]) == (
        employee.username,
        "Anna's desk",
    )
    version = TemplateVersion.objects.get(pk=body["id"])
    assert version.made_from_owner == employee and version.created_by == admin_user_
    event = AuditEvent.objects.get(action="template.version_publish")
    assert event.actor == admin_user_ and event.desktop_id == prepared.pk
    assert event.detail["source_owner"] == employee.username
    assert event.detail["source_desktop"] == str(prepared.pk)
    assert event.detail["source_desktop_name"] == "Anna's desk"


def test_the_admin_form_asks_for_the_owners_name_first(
    client: Client, admin_user_: Any, employee: Any, prepared: Desktop
) -> None:
    client.force_login(admin_user_)
    chosen = {"action": "publish_version", "_selected_action": [prepared.pk]}
    asked = client.post("/admin/vms/desktop/", {**chosen, "index": "0"})
    assert asked.status_code == 200
    text = asked.content.decode()
    assert f"<strong data-owner>{employee.username}</strong>" in text
    assert 'name="confirm_owner"' in text
    assert not TemplateVersion.objects.exists()  # nothing yet

    wrong = client.post("/admin/vms/desktop/", {**chosen, "post": "yes", "confirm_owner": "bob"})
    assert wrong.status_code == 200
    assert f"its owner, {employee.username}" in wrong.content.decode()
    assert not TemplateVersion.objects.exists()

    right = {**chosen, "post": "yes", "confirm_owner": employee.username}
    done = client.post("/admin/vms/desktop/", right, follow=True)
    assert f"from Anna&#x27;s desk of {employee.username}" in done.content.decode()
    version = TemplateVersion.objects.get(number=2)
    assert (version.made_from_owner, version.made_from_name) == (employee, "Anna's desk")
    page = client.get(f"/admin/vms/template/{version.template_id}/change/").content.decode()
    assert f"{employee.username} (Anna&#x27;s desk)" in page


def test_a_desktop_with_work_under_way_is_not_published(
    api_for: Any, admin_user_: Any, employee: Any, prepared: Desktop
) -> None:
    """Its disk is a restore's or a backup's now: which disk the version copied would
    depend on the order of two tasks (T63)."""
    Desktop.objects.filter(pk=prepared.pk).update(progress="restore")
    url = f"/api/desktops/{prepared.pk}/publish-version/"
    refused = api_for(admin_user_).post(url, {"confirm_owner": employee.username})
    assert refused.status_code == 409, refused.content
    assert "is restoring; publish it once that has finished" in refused.json()["detail"]
    assert not TemplateVersion.objects.filter(number__gt=1).exists()
