"""Employees never see the management plane through the desktop API: a desktop's host
name is for help-desk and admins only (docs/threat-model.md T74)."""

from __future__ import annotations

import pytest

from tests.fixtures import make_desktop

pytestmark = pytest.mark.django_db


def test_the_desktop_api_shows_the_host_to_helpdesk_and_admins_only(
    api_for, employee, helpdesk_user, admin_user_, fake_template, fake_host
) -> None:
    desktop = make_desktop(employee, fake_template, name="mine", status="stopped", host=fake_host)
    mine = api_for(employee)
    answers = [
        mine.get(f"/api/desktops/{desktop.pk}/").json(),
        *mine.get("/api/desktops/").json(),
        mine.post(f"/api/desktops/{desktop.pk}/start/").json()["desktop"],
        mine.patch(f"/api/desktops/{desktop.pk}/", {"name": "renamed"}, format="json").json(),
    ]
    for answer in answers:
        assert answer["id"] == str(desktop.pk) and "host" not in answer, answer
        assert fake_host.name not in str(answer) and fake_host.uri not in str(answer)
    for staff in (helpdesk_user, admin_user_):
        theirs = api_for(staff).get(f"/api/desktops/{desktop.pk}/").json()
        assert theirs["host"] == fake_host.name
        listed = api_for(staff).get("/api/desktops/", {"user": employee.username}).json()
        assert [row["host"] for row in listed] == [fake_host.name]
