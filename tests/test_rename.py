"""Naming desktops: at launch (page and API) and later (`desktop_rename`, the page's
Rename, PATCH /api/desktops/{id}/), with the same rule everywhere and an audit row."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import AuditEvent, Desktop, DesktopStatus
from vms.services.core.errors import InvalidName, InvalidTransition
from vms.services.desktops.requests import desktop_rename

pytestmark = pytest.mark.django_db
S = DesktopStatus
BAD_NAMES = [
    ("x" * 101, "at most 100 characters"),
    ("tab\there", "control characters"),
    ("line\nbreak", "control characters"),
    ("bell\x07", "control characters"),
    ("zero\u200bwidth", "control characters"),
]


@pytest.fixture
def desktop(employee, fake_template) -> Desktop:
    return make_desktop(employee, fake_template, name="Old name")


# --- the service ---------------------------------------------------------------------------


def test_the_owner_renames_and_the_audit_row_says_from_what_to_what(employee, desktop) -> None:
    desktop_rename(actor=employee, desktop=desktop, name="  Project X  ", source_ip="192.0.2.9")
    desktop.refresh_from_db()
    assert desktop.name == "Project X"
    event = AuditEvent.objects.get(action="desktop.rename", desktop=desktop)
    assert event.actor == employee
    assert event.detail == {"old": "Old name", "new": "Project X"}
    assert event.source_ip == "192.0.2.9"


def test_an_admin_may_rename_but_help_desk_may_not(admin_user_, helpdesk_user, desktop) -> None:
    desktop_rename(actor=admin_user_, desktop=desktop, name="By admin")
    with pytest.raises(PermissionDenied):
        desktop_rename(actor=helpdesk_user, desktop=desktop, name="By helper")
    desktop.refresh_from_db()
    assert desktop.name == "By admin"


@pytest.mark.parametrize(("name", "says"), [*BAD_NAMES, ("   ", "Give the desktop a name")])
def test_bad_names_are_refused_with_a_reason(employee, desktop, name, says) -> None:
    with pytest.raises(InvalidName, match=says):
        desktop_rename(actor=employee, desktop=desktop, name=name)
    desktop.refresh_from_db()
    assert desktop.name == "Old name"
    assert not AuditEvent.objects.filter(action="desktop.rename").exists()


def test_a_desktop_being_deleted_keeps_its_name(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, name="Going", status=S.DELETING)
    with pytest.raises(InvalidTransition):
        desktop_rename(actor=employee, desktop=desktop, name="Renamed")
    assert Desktop.objects.get(pk=desktop.pk).name == "Going"


# --- the API -------------------------------------------------------------------------------


def test_patch_renames_and_answers_the_desktop(api_for, employee, desktop) -> None:
    response = api_for(employee).patch(
        f"/api/desktops/{desktop.pk}/", {"name": "Via API"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Via API"
    assert Desktop.objects.get(pk=desktop.pk).name == "Via API"
    assert AuditEvent.objects.filter(action="desktop.rename", actor=employee).exists()


def test_another_users_desktop_answers_404(api_for, other_employee, desktop) -> None:
    response = api_for(other_employee).patch(
        f"/api/desktops/{desktop.pk}/", {"name": "Mine now"}, format="json"
    )
    assert response.status_code == 404
    assert Desktop.objects.get(pk=desktop.pk).name == "Old name"


def test_help_desk_sees_the_desktop_but_may_not_rename_it(api_for, helpdesk_user, desktop) -> None:
    response = api_for(helpdesk_user).patch(
        f"/api/desktops/{desktop.pk}/", {"name": "Helper's"}, format="json"
    )
    assert response.status_code == 403
    assert Desktop.objects.get(pk=desktop.pk).name == "Old name"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        *[({"name": name}, says) for name, says in BAD_NAMES],
        ({"name": ""}, "may not be blank"),
        ({}, "required"),
        ({"name": "nul\x00"}, "Null characters"),
    ],
)
def test_bad_input_is_400_naming_the_field(api_for, employee, desktop, body, says) -> None:
    response = api_for(employee).patch(f"/api/desktops/{desktop.pk}/", body, format="json")
    assert response.status_code == 400
    assert says.lower() in " ".join(response.json()["name"]).lower()
    assert Desktop.objects.get(pk=desktop.pk).name == "Old name"


def test_put_is_not_offered(api_for, employee, desktop) -> None:
    response = api_for(employee).put(f"/api/desktops/{desktop.pk}/", {"name": "X"}, format="json")
    assert response.status_code == 405


def test_the_schema_documents_the_rename(api_for, employee) -> None:
    schema = api_for(employee).get("/api/schema/?format=json").json()
    patch = schema["paths"]["/api/desktops/{id}/"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "DesktopRename"
    )


def test_launch_through_the_api_uses_the_same_rule(api_for, employee, fake_template) -> None:
    client = api_for(employee)
    refused = client.post(
        "/api/desktops/", {"template": fake_template.pk, "name": "a\tb"}, format="json"
    )
    assert refused.status_code == 400
    assert "control characters" in refused.json()["name"][0]
    launched = client.post(
        "/api/desktops/", {"template": fake_template.pk, "name": "  Spaced  "}, format="json"
    )
    assert launched.status_code == 202
    assert launched.json()["name"] == "Spaced"


# --- the pages -----------------------------------------------------------------------------


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_launch_form_names_the_desktop(employee, fake_template) -> None:
    client = _client(employee)
    response = client.post("/desktops/launch/", {"template": fake_template.pk, "name": "Mine"})
    assert response.status_code == 302
    assert Desktop.objects.get(owner=employee).name == "Mine"
    page = client.get("/").content.decode()
    assert "Mine is being prepared." in page


def test_the_launch_form_refuses_a_bad_name_with_a_reason(employee, fake_template) -> None:
    client = _client(employee)
    client.post("/desktops/launch/", {"template": fake_template.pk, "name": "x" * 101})
    assert not Desktop.objects.exists()
    assert "The name is too long: at most 100 characters." in client.get("/").content.decode()


def test_the_rename_form_renames_and_says_so(employee, desktop) -> None:
    client = _client(employee)
    response = client.post(f"/desktops/{desktop.pk}/rename/", {"name": "New name"})
    assert response.status_code == 302
    assert Desktop.objects.get(pk=desktop.pk).name == "New name"
    assert "Old name is now called New name." in client.get("/").content.decode()


def test_the_rename_form_explains_a_refusal(employee, desktop) -> None:
    client = _client(employee)
    client.post(f"/desktops/{desktop.pk}/rename/", {"name": "bad\x07"})
    assert Desktop.objects.get(pk=desktop.pk).name == "Old name"
    page = client.get("/").content.decode()
    assert "Old name was not renamed: The name may not contain control characters" in page


def test_the_rename_form_answers_404_for_another_users_desktop(other_employee, desktop) -> None:
    response = _client(other_employee).post(f"/desktops/{desktop.pk}/rename/", {"name": "Mine"})
    assert response.status_code == 404
    assert Desktop.objects.get(pk=desktop.pk).name == "Old name"
