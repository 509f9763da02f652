"""Abuse: logins, sessions, hostile input in forms and the API, and secrets in logs."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import Desktop, Template

pytestmark = pytest.mark.django_db


def _login(client: Client, username: str, password: str) -> int:
    return client.post("/login/", {"username": username, "password": password}).status_code


def test_failed_logins_are_throttled(employee, settings) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, employee.username, "wrong") == 200  # the form again
    assert _login(client, employee.username, "wrong") == 429  # the limit is reached
    # Locked out now, even with the right password.
    assert _login(client, employee.username, "pw-for-tests") in (403, 429)
    assert "_auth_user_id" not in client.session
    assert _login(Client(), "employee2-unrelated", "wrong") == 200  # others are not locked


def test_session_is_rotated_at_login(employee) -> None:
    client = Client()
    client.get("/login/")
    client.cookies["sessionid"] = "attacker-chosen-session"
    assert _login(client, employee.username, "pw-for-tests") == 302
    assert client.cookies["sessionid"].value != "attacker-chosen-session"
    assert client.get("/").status_code == 200


def test_helpdesk_search_survives_hostile_queries(helpdesk_user) -> None:
    client = Client()
    client.force_login(helpdesk_user)
    for query in ("\x00", "' OR 1=1 --", "<script>alert(1)</script>", "ü" * 500, "%"):
        response = client.get("/helpdesk/", {"q": query})
        assert response.status_code == 200
        assert b"<script>alert(1)</script>" not in response.content


@pytest.mark.parametrize(
    ("name", "field"),
    [("", "name"), ("x" * 101, "name"), ("bell\x07", "name"), ("nul\x00", "name")],
)
def test_bad_desktop_names_are_400(api_for, employee, fake_template, name, field) -> None:
    response = api_for(employee).post(
        "/api/desktops/", {"template": fake_template.pk, "name": name}, format="json"
    )
    if name == "":
        assert response.status_code == 202  # blank means "name it after the template"
        return
    assert response.status_code == 400
    assert field in response.json()
    assert not Desktop.objects.exists()


@pytest.mark.parametrize("template_id", [-1, 0, "abc", 2**63, None])
def test_bad_template_ids_are_400(api_for, employee, fake_template, template_id) -> None:
    response = api_for(employee).post("/api/desktops/", {"template": template_id}, format="json")
    assert response.status_code == 400
    assert not Desktop.objects.exists()


def test_names_with_markup_are_escaped_on_pages(employee, fake_template) -> None:
    Template.objects.filter(pk=fake_template.pk).update(
        name="<img src=x onerror=alert(1)>", description='<b>bold</b> & "quotes"'
    )
    client = Client()
    client.force_login(employee)
    page = client.get("/").content
    assert b"<img src=x onerror=alert(1)>" not in page
    assert b"&lt;img src=x onerror=alert(1)&gt;" in page
    assert b"<b>bold</b>" not in page


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vcpus", 0),
        ("vcpus", 10_000),
        ("memory_mib", 1),
        ("memory_mib", 10**9),
        ("disk_gib", 10**7),
    ],
)
def test_template_sizes_are_bounded(local_host, settings, field, value) -> None:
    from django.core.exceptions import ValidationError

    from vms.services.catalog.templates import template_import

    sizes = {"vcpus": 1, "memory_mib": 128, "disk_gib": 1, field: value}
    with pytest.raises(ValidationError) as refused:
        template_import(
            name=f"bounded-{field}-{value}", image_path=settings.DEMO_GUEST_IMAGE, **sizes
        )
    assert field in str(refused.value)
    assert not Template.objects.filter(name=f"bounded-{field}-{value}").exists()


def test_a_disk_smaller_than_the_image_is_raised_to_fit(local_host, settings) -> None:
    from vms.services.catalog.templates import template_import

    template = template_import(
        name="tiny disk", image_path=settings.DEMO_GUEST_IMAGE, memory_mib=128, disk_gib=0
    )
    assert template.disk_gib == 1  # the demo image is 64 MiB: rounded up to 1 GiB


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/var/lib/desktop-portal/images/../../../etc/passwd",
        "/var/lib/desktop-portal/images/nope.qcow2",
        "relative/path.qcow2",
        "",
    ],
)
def test_image_paths_outside_the_allowed_folders_are_refused(path) -> None:
    from vms.services.catalog.images import ImageRejected, image_inspect

    with pytest.raises(ImageRejected):
        image_inspect(path=path)


@pytest.mark.django_db(transaction=True)
def test_no_ticket_password_or_session_id_in_logs(
    caplog, employee, fake_template, fake_host, api_for
) -> None:
    from vms.models import DesktopStatus
    from vms.services.consoles import ConsoleClosed, Knock, console_admit

    caplog.set_level(logging.DEBUG)
    desktop = make_desktop(employee, fake_template, name="logged", status=DesktopStatus.RUNNING)
    client = api_for(employee)
    session_id = client.cookies["sessionid"].value
    ticket = client.post(f"/api/desktops/{desktop.pk}/console/", {}, format="json").json()["ticket"]
    codes = []
    for user_id in (employee.pk + 1000, employee.pk):  # a stolen ticket, then the owner
        with pytest.raises(ConsoleClosed) as closed:
            knock = Knock(
                origin="http://127.0.0.1",
                host="127.0.0.1",
                secure=False,
                protocols=["binary", f"ticket.{ticket}"],
                source_ip="127.0.0.1",
                desktop_id=str(desktop.pk),
                session_user_id=user_id,
            )
            console_admit(knock=knock, relay="channels")
        codes.append(closed.value.code)
    assert codes == [4403, 4401]  # refused, and the refusal used the ticket up
    logged = caplog.text
    assert "console ticket of user" in logged  # the refusal was logged...
    assert ticket not in logged  # ...without the ticket
    assert session_id not in logged
