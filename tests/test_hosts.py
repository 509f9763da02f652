"""Registering a hypervisor host: the URI's scheme must name a backend this portal has, so an
unusable host is refused on the admin's form, not at the first launch. Nothing connects."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from vms.models import Host
from vms.services.core.errors import ServiceError
from vms.services.fleet.hosts import host_check_uri

FORM = {
    "name": "hv1",
    "storage_pool": "desktops",
    "enabled": "on",
    "capacity_vcpus": "16",
    "capacity_memory_mib": "16384",
    "capacity_disk_gib": "500",
}


@pytest.fixture
def admin_client_(admin_user_: Any) -> Client:
    client = Client()
    client.force_login(admin_user_)
    return client


def test_served_uris_pass_and_others_are_refused_with_the_reason() -> None:
    assert host_check_uri(" qemu+ssh://root@hv1.invalid/system ") == (
        "qemu+ssh://root@hv1.invalid/system"
    )
    with pytest.raises(ServiceError, match="no hypervisor backend serves 'esx' URIs"):
        host_check_uri("esx://esxi1.invalid/")


def test_admin_refuses_a_host_no_backend_serves(admin_client_: Client) -> None:
    page = admin_client_.post("/admin/vms/host/add/", {**FORM, "uri": "hyperv://hv1.invalid/"})
    assert page.status_code == 200  # the form again, with the reason on the URI field
    assert "no hypervisor backend serves &#x27;hyperv&#x27; URIs" in page.content.decode()
    assert "docs/hypervisors.md" in page.content.decode()
    assert not Host.objects.filter(name="hv1").exists()


def test_admin_registers_a_served_host_under_its_uri(admin_client_: Client) -> None:
    # The form asks a new host for its capacity: a loopback port where nothing listens
    # refuses at once, and no traffic leaves the machine.
    page = admin_client_.post(
        "/admin/vms/host/add/", {**FORM, "uri": " qemu+ssh://127.0.0.1:1/system"}
    )
    assert page.status_code == 302, page.content.decode()[:2000]
    assert Host.objects.get(name="hv1").uri == "qemu+ssh://127.0.0.1:1/system"
    listing = admin_client_.get("/admin/vms/host/").content.decode()
    assert ">URI<" in listing and "qemu+ssh://127.0.0.1:1/system" in listing
