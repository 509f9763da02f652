"""GET /api/hosts/: the fleet for admins (capacity, allocation, state), nobody else."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.factories import DesktopFactory
from vms.models import AuditEvent, DesktopStatus, Host

pytestmark = pytest.mark.django_db


def test_admins_see_each_host_with_capacity_use_and_state(
    api_for, admin_user_, employee, fake_template, fake_host
) -> None:
    Host.objects.filter(pk=fake_host.pk).update(last_check_ok=True)
    Host.objects.create(name="down1", uri="test:///default", last_check_ok=False)
    Host.objects.create(name="off1", uri="test:///default", enabled=False, last_check_ok=True)
    DesktopFactory(owner=employee, template=fake_template, vcpus=2, memory_mib=512)
    DesktopFactory(owner=employee, template=fake_template, status=DesktopStatus.DELETED)

    answer = api_for(admin_user_).get("/api/hosts/")
    assert answer.status_code == 200
    hosts = {h["name"]: h for h in answer.json()}
    assert hosts["fake"]["state"] == "up" and hosts["down1"]["state"] == "down"
    assert hosts["off1"]["state"] == "disabled"
    assert hosts["fake"]["use"] == {"vcpus": 2, "memory_mib": 512, "disk_gib": 1}
    assert hosts["fake"]["capacity"]["vcpus"] == fake_host.capacity_vcpus
    one = api_for(admin_user_).get("/api/hosts/fake/")
    assert one.status_code == 200 and one.json()["uri"] == "test:///default"


def test_the_list_takes_the_same_queries_however_many_hosts(api_for, admin_user_) -> None:
    client = api_for(admin_user_)
    Host.objects.create(name="h0", uri="test:///default")
    with CaptureQueriesContext(connection) as few:
        client.get("/api/hosts/")
    Host.objects.bulk_create(Host(name=f"h{i}", uri="test:///default") for i in range(1, 30))
    with CaptureQueriesContext(connection) as many:
        client.get("/api/hosts/")
    assert len(many) == len(few)


def test_everyone_else_is_refused(api_for, employee, helpdesk_user) -> None:
    assert api_for(employee).get("/api/hosts/").status_code == 403
    assert api_for(helpdesk_user).get("/api/hosts/").status_code == 403
    assert APIClient().get("/api/hosts/").status_code == 403


def test_an_unknown_host_is_404(api_for, admin_user_) -> None:
    assert api_for(admin_user_).get("/api/hosts/nope/").status_code == 404


def test_registering_a_host_refuses_a_console_address_that_is_not_one() -> None:
    from vms.services.core.errors import ServiceError
    from vms.services.fleet.membership import host_register

    with pytest.raises(ServiceError, match="not an IP address"):
        host_register(name="bad", uri="test:///default", console_address="hv1.example")
    assert not Host.objects.filter(name="bad").exists()


def test_maintenance_is_202_drains_and_reports_state(
    api_for, admin_user_, employee, fake_template, fake_host
) -> None:
    Host.objects.filter(pk=fake_host.pk).update(last_check_ok=True, load_cpu_percent=12.5)
    DesktopFactory(owner=employee, template=fake_template, status=DesktopStatus.STOPPED)
    client = api_for(admin_user_)
    answer = client.post("/api/hosts/fake/maintenance/", {"enabled": True}, format="json")
    assert answer.status_code == 202
    body = answer.json()
    assert body["state"] == "maintenance" and body["maintenance"] is True
    assert body["desktops"] == 1 and body["load"]["cpu_percent"] == 12.5
    assert AuditEvent.objects.filter(action="host.maintenance", actor=admin_user_).count() == 1
    answer = client.post("/api/hosts/fake/maintenance/", {"enabled": False}, format="json")
    assert answer.status_code == 202 and answer.json()["state"] == "up"


def test_maintenance_refuses_bad_bodies_strangers_and_unknown_hosts(
    api_for, admin_user_, employee, helpdesk_user, fake_host
) -> None:
    client = api_for(admin_user_)
    bad = client.post("/api/hosts/fake/maintenance/", {"enabled": "maybe"}, format="json")
    assert bad.status_code == 400 and "enabled" in bad.json()
    assert client.post("/api/hosts/fake/maintenance/", {}, format="json").status_code == 400
    assert client.post("/api/hosts/nope/maintenance/", {"enabled": True}).status_code == 404
    for user in (employee, helpdesk_user):
        refused = api_for(user).post("/api/hosts/fake/maintenance/", {"enabled": True})
        assert refused.status_code == 403
    assert not Host.objects.filter(maintenance=True).exists()
