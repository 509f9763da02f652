"""The REST API contract (docs/architecture.md, section 3), on the request side: nothing
boots here."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from tests.fixtures import make_desktop
from vms.models import AuditEvent, Desktop, DesktopStatus, Quota, Template
from vms.settings_access import name_prefix

pytestmark = pytest.mark.django_db
S = DesktopStatus


def _desktop(owner, template, status=S.RUNNING) -> Desktop:
    return make_desktop(owner, template, status=status)


def test_templates_lists_only_assigned_and_enabled(api_for, employee, fake_template) -> None:
    Template.objects.create(name="Secret", base_image_path="/x.qcow2")
    Template.objects.create(
        name="Off", base_image_path="/y.qcow2", enabled=False
    ).assigned_users.add(employee)
    names = [t["name"] for t in api_for(employee).get("/api/templates/").json()]
    assert names == ["Office"]


def test_launch_answers_202_and_records_audit(api_for, employee, fake_template) -> None:
    response = api_for(employee).post(
        "/api/desktops/", {"template": fake_template.pk, "name": "Mine"}, format="json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "provisioning" and body["name"] == "Mine"
    desktop = Desktop.objects.get(pk=body["id"])
    assert desktop.host.name == "fake"
    assert desktop.domain_name.startswith(name_prefix())
    assert AuditEvent.objects.filter(
        action="desktop.create", desktop=desktop, actor=employee
    ).exists()


def test_launch_of_unassigned_template_is_403(api_for, other_employee, fake_template) -> None:
    other_employee.groups.clear()
    response = api_for(other_employee).post(
        "/api/desktops/", {"template": fake_template.pk}, format="json"
    )
    assert response.status_code == 403
    assert not Desktop.objects.exists()


def test_launch_of_unknown_template_is_400(api_for, employee, fake_template) -> None:
    response = api_for(employee).post("/api/desktops/", {"template": 999999}, format="json")
    assert response.status_code == 400
    assert "template" in response.json()


def test_over_quota_is_409_naming_the_limit(api_for, employee, fake_template) -> None:
    Quota.objects.create(
        user=employee, max_desktops=1, max_vcpus=8, max_memory_mib=8192, max_disk_gib=80
    )
    client = api_for(employee)
    assert (
        client.post("/api/desktops/", {"template": fake_template.pk}, format="json").status_code
        == 202
    )
    response = client.post("/api/desktops/", {"template": fake_template.pk}, format="json")
    assert response.status_code == 409
    assert "desktops" in response.json()["detail"]
    assert response.json()["limit"] == "desktops"
    assert Desktop.objects.count() == 1


def test_another_users_desktop_is_404_everywhere(
    api_for, employee, other_employee, fake_template
) -> None:
    desktop = _desktop(employee, fake_template)
    client = api_for(other_employee)
    base = f"/api/desktops/{desktop.pk}/"
    assert client.get(base).status_code == 404
    for verb in ("start", "stop", "reboot", "force-stop", "console"):
        assert client.post(f"{base}{verb}/").status_code == 404, verb
    assert client.delete(base).status_code == 404
    assert client.get("/api/desktops/").json() == []
    desktop.refresh_from_db()
    assert desktop.status == S.RUNNING


def test_helpdesk_sees_any_desktop_filtered_by_user(
    api_for, helpdesk_user, employee, other_employee, fake_template
) -> None:
    mine = _desktop(employee, fake_template)
    _desktop(other_employee, fake_template)
    client = api_for(helpdesk_user)
    assert len(client.get("/api/desktops/").json()) == 2
    listed = client.get("/api/desktops/", {"user": employee.username}).json()
    assert [d["id"] for d in listed] == [str(mine.pk)]


def test_helpdesk_may_stop_but_not_delete(api_for, helpdesk_user, employee, fake_template) -> None:
    desktop = _desktop(employee, fake_template)
    client = api_for(helpdesk_user)
    assert client.post(f"/api/desktops/{desktop.pk}/stop/").status_code == 202
    assert client.delete(f"/api/desktops/{desktop.pk}/").status_code == 403
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPING


def test_employee_cannot_filter_into_other_users(
    api_for, employee, other_employee, fake_template
) -> None:
    _desktop(other_employee, fake_template)
    assert api_for(employee).get("/api/desktops/", {"user": other_employee.username}).json() == []


@pytest.mark.parametrize(
    ("status", "verb", "code", "after"),
    [
        (S.STOPPED, "start", 202, S.STARTING),
        (S.RUNNING, "start", 409, S.RUNNING),
        (S.RUNNING, "stop", 202, S.STOPPING),
        (S.STOPPED, "stop", 409, S.STOPPED),
        (S.RUNNING, "reboot", 202, S.RUNNING),
        (S.STOPPED, "reboot", 409, S.STOPPED),
        (S.RUNNING, "force-stop", 202, S.STOPPING),
        (S.STOPPING, "force-stop", 202, S.STOPPING),
        (S.STARTING, "force-stop", 202, S.STOPPING),
        (S.STOPPED, "force-stop", 409, S.STOPPED),
    ],
)
def test_power_actions_follow_the_state_table(
    api_for, employee, fake_template, status, verb, code, after
) -> None:
    desktop = _desktop(employee, fake_template, status=status)
    response = api_for(employee).post(f"/api/desktops/{desktop.pk}/{verb}/")
    assert response.status_code == code, response.content
    if code == 409:
        assert status in response.json()["detail"]
    desktop.refresh_from_db()
    assert desktop.status == after


def test_delete_is_202_then_deleting(api_for, employee, fake_template) -> None:
    desktop = _desktop(employee, fake_template, status=S.STOPPED)
    response = api_for(employee).delete(f"/api/desktops/{desktop.pk}/")
    assert response.status_code == 202
    desktop.refresh_from_db()
    assert desktop.status == S.DELETING
    assert api_for(employee).delete(f"/api/desktops/{desktop.pk}/").status_code == 409


def test_anonymous_is_refused(client, fake_template) -> None:
    assert client.get("/api/desktops/").status_code in (401, 403)
    assert client.post("/api/desktops/", {"template": fake_template.pk}).status_code in (401, 403)


def test_session_api_requires_csrf(employee, fake_template) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(employee)
    response = client.post("/api/desktops/", {"template": fake_template.pk})
    assert response.status_code == 403
    assert not Desktop.objects.exists()


def test_token_auth_for_scripts(employee, fake_template) -> None:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    token = Token.objects.create(user=employee)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert (
        client.post("/api/desktops/", {"template": fake_template.pk}, format="json").status_code
        == 202
    )


def test_schema_is_served(api_for, employee) -> None:
    response = api_for(employee).get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/desktops/{id}/force-stop/" in response.content


def test_group_assignment_grants_template(api_for, other_employee, fake_template) -> None:
    group = Group.objects.create(name="designers")
    other_employee.groups.set([group])
    assert api_for(other_employee).get("/api/templates/").json() == []
    fake_template.assigned_groups.add(group)
    assert len(api_for(other_employee).get("/api/templates/").json()) == 1
