"""Pages: they render from the database only, in a constant number of queries, and every
page and action answers 404 or 403 to users without the right."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from vms.hypervisor import connection as libvirt_connection
from vms.models import Desktop, DesktopStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def libvirt_calls(monkeypatch) -> list[str]:
    """Records every operation the hypervisor layer sends to libvirt (and still sends it)."""
    calls: list[str] = []
    real_call = libvirt_connection.LibvirtConnection.call

    def spy(self, fn):  # type: ignore[no-untyped-def]
        calls.append(self.uri)
        return real_call(self, fn)

    monkeypatch.setattr(libvirt_connection.LibvirtConnection, "call", spy)
    return calls


def _desktops(owner, template, count: int) -> None:
    Desktop.objects.bulk_create(
        Desktop(
            owner=owner,
            template=template,
            host=template_host(),
            name=f"d{i}",
            status=DesktopStatus.RUNNING,
            vcpus=1,
            memory_mib=256,
            disk_gib=1,
        )
        for i in range(count)
    )


def template_host():
    from vms.models import Host

    return Host.objects.get(name="fake")


def _render(user) -> tuple[int, int]:
    client = Client()
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/")
    assert response.status_code == 200
    return response.content.count(b"data-desktop="), len(queries)


def test_dashboard_queries_do_not_grow_with_desktops(
    employee, fake_template, libvirt_calls
) -> None:
    _desktops(employee, fake_template, 2)
    rows_few, queries_few = _render(employee)
    _desktops(employee, fake_template, 30)
    rows_many, queries_many = _render(employee)
    assert (rows_few, rows_many) == (2, 32)
    assert queries_many == queries_few
    assert libvirt_calls == []  # rendering never reaches libvirt
    from vms.hypervisor import get_hypervisor

    get_hypervisor("test:///default").state(name="no-such-domain")
    assert libvirt_calls == ["test:///default"]  # ...and the spy does see libvirt calls


def test_console_page_renders_without_libvirt(employee, fake_template, libvirt_calls) -> None:
    _desktops(employee, fake_template, 1)
    desktop = Desktop.objects.get(owner=employee)
    client = Client()
    client.force_login(employee)
    response = client.get(f"/desktops/{desktop.pk}/console/")
    assert response.status_code == 200
    assert b'data-mode="full"' in response.content
    assert libvirt_calls == []


def test_pages_refuse_users_without_the_right(
    employee, other_employee, helpdesk_user, fake_template
) -> None:
    _desktops(employee, fake_template, 1)
    desktop = Desktop.objects.get(owner=employee)
    stranger = Client()
    stranger.force_login(other_employee)
    helper = Client()
    helper.force_login(helpdesk_user)
    anonymous = Client()
    pages = [f"/desktops/{desktop.pk}/console/", f"/desktops/{desktop.pk}/thumbnail.png"]
    actions = [
        f"/desktops/{desktop.pk}/{verb}/"
        for verb in ("start", "stop", "force-stop", "reboot", "delete")
    ]
    for url in pages:
        assert stranger.get(url).status_code == 404, url
        assert anonymous.get(url).status_code == 302, url  # to the login page
    for url in actions:
        assert stranger.post(url).status_code == 404, url
        assert anonymous.post(url).status_code == 302, url
    assert stranger.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": "x"}).status_code == 404
    assert helper.get(f"/desktops/{desktop.pk}/console/").status_code == 200
    assert helper.post(f"/desktops/{desktop.pk}/delete/").status_code == 403
    assert helper.post(f"/desktops/{desktop.pk}/nonsense/").status_code == 404
    for who in (stranger, helper):
        for url in ("/admin/", "/admin/vms/desktop/", "/admin/vms/template/add/"):
            assert who.get(url).status_code == 403, url
    assert anonymous.get("/admin/").status_code == 302  # to the admin's login form
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.RUNNING


def test_get_is_not_allowed_on_actions(employee, fake_template) -> None:
    _desktops(employee, fake_template, 1)
    desktop = Desktop.objects.get(owner=employee)
    client = Client()
    client.force_login(employee)
    assert client.get(f"/desktops/{desktop.pk}/stop/").status_code == 405


def test_launch_form_reports_the_quota(employee, fake_template) -> None:
    from vms.models import Quota

    Quota.objects.create(
        user=employee, max_desktops=0, max_vcpus=9, max_memory_mib=9999, max_disk_gib=99
    )
    client = Client()
    client.force_login(employee)
    response = client.post("/desktops/launch/", {"template": fake_template.pk}, follow=True)
    assert b"Quota exceeded: desktops would be 1, the limit is 0." in response.content
    assert not Desktop.objects.exists()


def test_helpdesk_finds_a_user_and_their_desktops(helpdesk_user, employee, fake_template) -> None:
    _desktops(employee, fake_template, 2)
    client = Client()
    client.force_login(helpdesk_user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/helpdesk/", {"q": "employee1"})
    assert response.status_code == 200
    assert response.content.count(b"View console") == 2
    assert b"/delete/" not in response.content  # help-desk may not delete
    assert len(queries) < 15
    assert client.get("/helpdesk/", {"q": "nobody-like-this"}).status_code == 200


def test_helpdesk_page_is_for_helpdesk_only(employee) -> None:
    client = Client()
    client.force_login(employee)
    assert client.get("/helpdesk/").status_code == 403


def test_actions_never_redirect_off_site(employee, fake_template) -> None:
    _desktops(employee, fake_template, 1)
    desktop = Desktop.objects.get(owner=employee)
    client = Client()
    client.force_login(employee)
    response = client.post(f"/desktops/{desktop.pk}/reboot/", {"next": "https://evil.example/"})
    assert response["Location"] == "/"
    response = client.post(f"/desktops/{desktop.pk}/reboot/", {"next": "/helpdesk/?q=x"})
    assert response["Location"] == "/helpdesk/?q=x"


def test_launch_button_is_disabled_with_the_reason_when_over_quota(employee, fake_template) -> None:
    from vms.models import Quota

    Quota.objects.create(
        user=employee, max_desktops=5, max_vcpus=9, max_memory_mib=100, max_disk_gib=99
    )
    client = Client()
    client.force_login(employee)
    page = client.get("/").content.decode()
    assert 'aria-label="Launch Office" disabled' in page
    assert "Quota exceeded: memory (MiB) would be 256, the limit is 100." in page
