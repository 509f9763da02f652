"""What the dashboard shows live, on the request side (nothing boots): the reboot's busy
label from the action table, and `/?part=state` (quota meters, Launch refusals, own
desktops) that the page re-reads when desktops come, go or change."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import Desktop, DesktopStatus, Quota
from vms.services.desktops.events import desktop_payload
from vms.services.desktops.requests import desktop_act
from vms.services.desktops.worker import desktop_progress_clear

pytestmark = pytest.mark.django_db
S = DesktopStatus


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_reboot_shows_rebooting_until_its_worker_clears_it(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, name="Busy")
    desktop_act(actor=employee, desktop=desktop, action="reboot")
    desktop.refresh_from_db()
    payload = desktop_payload(desktop)
    assert (desktop.status, payload["status_label"]) == (S.RUNNING, "Rebooting…")
    assert "reboot" not in payload["actions"] and "stop" in payload["actions"]
    page = _client(employee).get("/").content.decode()
    assert 'data-field="status">Rebooting…</span>' in page
    assert 'data-action="reboot" hidden' in page

    desktop_progress_clear(desktop, step="reboot")
    desktop.refresh_from_db()
    payload = desktop_payload(desktop)
    assert payload["status_label"] == "Running" and "reboot" in payload["actions"]


def test_clearing_leaves_a_newer_note_alone(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, progress="cloning", status=S.PROVISIONING)
    desktop_progress_clear(desktop, step="reboot")
    assert Desktop.objects.get(pk=desktop.pk).progress == "cloning"


def test_state_has_meters_refusals_and_only_own_desktops(
    employee, other_employee, fake_template
) -> None:
    Quota.objects.create(
        user=employee, max_desktops=1, max_vcpus=4, max_memory_mib=4096, max_disk_gib=40
    )
    mine = make_desktop(employee, fake_template, name="Mine")
    make_desktop(other_employee, fake_template, name="Theirs")
    client = _client(employee)
    state = client.get("/?part=state").json()
    meters = {meter["key"]: meter for meter in state["meters"]}
    assert (meters["max_desktops"]["used"], meters["max_desktops"]["limit"]) == (1, 1)
    assert meters["max_memory_mib"]["used"] == 256 and meters["max_memory_mib"]["unit"] == "MiB"
    assert state["refusals"] == {
        str(fake_template.pk): "Quota exceeded: desktops would be 2, the limit is 1."
    }
    assert [d["name"] for d in state["desktops"]] == ["Mine"]

    Desktop.objects.filter(pk=mine.pk).update(status=S.DELETED)
    state = client.get("/?part=state").json()
    assert state["meters"][0]["used"] == 0
    assert state["refusals"] == {str(fake_template.pk): ""}
    assert state["desktops"] == []


def test_state_needs_a_login(fake_template) -> None:
    response = Client().get("/?part=state")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
