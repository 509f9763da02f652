"""The whole desktop lifecycle on the real libvirtd, driven through the REST API and a real
Celery worker: launch -> provisioning -> running (VNC banner read from the endpoint the
hypervisor layer reports) -> stop -> start -> delete, with nothing left behind."""

from __future__ import annotations

import socket

import pytest

from tests.fixtures import wait_for_status
from vms.models import AuditEvent, Desktop, Template
from vms.services.desktops import lifecycle
from vms.settings_access import name_prefix

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def read_rfb_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        return sock.recv(12)


def test_full_lifecycle(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    client = api_for(employee)
    launched = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
    assert launched.status_code == 202, launched.content
    desktop_id = launched.json()["id"]

    desktop = wait_for_status(desktop_id, "running")
    assert desktop.progress == "ready"
    endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    assert endpoint.host == "127.0.0.1"
    assert read_rfb_banner(endpoint.host, endpoint.port) == b"RFB 003.008\n"
    assert client.get(f"/api/desktops/{desktop_id}/").json()["status"] == "running"

    assert client.post(f"/api/desktops/{desktop_id}/stop/").status_code == 202
    wait_for_status(desktop_id, "stopped")
    assert hypervisor.state(name=desktop.domain_name) == "shutoff"

    assert client.post(f"/api/desktops/{desktop_id}/start/").status_code == 202
    wait_for_status(desktop_id, "running")
    assert hypervisor.state(name=desktop.domain_name) == "running"

    assert client.delete(f"/api/desktops/{desktop_id}/").status_code == 202
    wait_for_status(desktop_id, "deleted")
    assert hypervisor.state(name=desktop.domain_name) == "missing"
    assert hypervisor.list_domains(prefix=desktop.domain_name) == []
    assert hypervisor.list_volumes(pool=local_host.storage_pool, prefix=name_prefix()) == []
    assert client.get(f"/api/desktops/{desktop_id}/").status_code == 404
    actions = list(
        AuditEvent.objects.filter(desktop_id=desktop_id).values_list("action", flat=True)
    )
    for expected in (
        "desktop.create",
        "desktop.running",
        "desktop.stop",
        "desktop.start",
        "desktop.delete",
        "desktop.deleted",
    ):
        assert expected in actions


def test_force_stop_while_starting_leaves_the_desktop_stopped_and_off(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    launched = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
    desktop_id = launched.json()["id"]
    wait_for_status(desktop_id, "running")
    assert client.post(f"/api/desktops/{desktop_id}/force-stop/").status_code == 202
    desktop = wait_for_status(desktop_id, "stopped")

    # Start, and pull the plug at once: whichever task the worker runs first, the
    # desktop ends stopped with its guest off (not running behind a "stopped" row).
    assert client.post(f"/api/desktops/{desktop_id}/start/").status_code == 202
    forced = client.post(f"/api/desktops/{desktop_id}/force-stop/")
    assert forced.status_code == 202, forced.content
    wait_for_status(desktop_id, "stopped")
    assert hypervisor.state(name=desktop.domain_name) in ("shutoff", "missing")


def test_a_boot_that_finds_its_desktop_force_stopped_powers_the_guest_off(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    """The branch the race above may or may not reach, taken on purpose: the boot starts
    the guest, then finds that a forced stop came in meanwhile."""
    client = api_for(employee)
    launched = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
    desktop_id = launched.json()["id"]
    wait_for_status(desktop_id, "running")
    client.post(f"/api/desktops/{desktop_id}/force-stop/")
    wait_for_status(desktop_id, "stopped")
    Desktop.objects.filter(pk=desktop_id).update(status="stopping")  # as a forced stop leaves it
    desktop = Desktop.objects.select_related("host", "template").get(pk=desktop_id)

    lifecycle._boot(desktop, hypervisor)

    desktop.refresh_from_db()
    assert desktop.status == "stopped"
    assert hypervisor.state(name=desktop.domain_name) == "shutoff"


def test_missing_base_image_ends_in_error_with_the_path(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    missing = "/var/lib/desktop-portal/test-desktops/no-such-base.qcow2"
    Template.objects.filter(pk=demo_template.pk).update(base_image_path=missing)
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(response.json()["id"], "error")
    assert f"base image {missing} is missing" in desktop.last_error
    assert hypervisor.list_volumes(pool=local_host.storage_pool, prefix=name_prefix()) == []
    assert hypervisor.list_domains(prefix=name_prefix()) == []


def test_template_name_with_xml_metacharacters(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    nasty = "<desk> & \"quotes\" 'x' ]]> ünïcødé"
    Template.objects.filter(pk=demo_template.pk).update(name=nasty)
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(response.json()["id"], "running")
    assert desktop.name == nasty
    (info,) = hypervisor.list_domains(prefix=desktop.domain_name)
    assert info.desktop_id == str(desktop.pk)
    client = api_for(employee)
    client.delete(f"/api/desktops/{desktop.pk}/")
    wait_for_status(desktop.pk, "deleted")
