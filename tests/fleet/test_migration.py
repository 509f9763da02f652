"""Live migration between two lab hosts through the hypervisor seam: the running guest
moves with its memory, its disk stays on the shared pool directory, its display listens on
the new host's address with its password, and a failed migration leaves it running where
it was."""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.fixtures import wait_for_status
from vms.hypervisor import HypervisorError, get_hypervisor
from vms.models import AuditEvent, Host
from vms.services.desktops.requests import desktop_act, desktop_create

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def _domains(uri: str) -> dict[str, bool]:
    conn = libvirt.open(uri)
    try:
        return {dom.name(): bool(dom.isActive()) for dom in conn.listAllDomains()}
    finally:
        conn.close()


def _display(uri: str, name: str) -> ET.Element:
    conn = libvirt.open(uri)
    try:
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    finally:
        conn.close()
    graphics = ET.fromstring(xml).find("./devices/graphics")  # noqa: S314
    assert graphics is not None
    return graphics


def _rfb_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(12)


def test_a_running_desktop_moves_live_between_lab_hosts(
    lab_host_joined, employee, demo_template
) -> None:
    first, second = lab_host_joined("laba"), lab_host_joined("labb")
    Host.objects.exclude(pk=first.pk).update(enabled=False)  # launch on the first
    desktop = desktop_create(user=employee, template_id=demo_template.pk)
    desktop = wait_for_status(desktop.pk, "running", timeout=120)
    assert desktop.host == first

    # Without UNSAFE libvirt checks the storage itself, and refuses the lab's pool (one
    # local directory it cannot know to be shared): the guest stays where it was.
    with pytest.raises(HypervisorError, match="MIGRATION_ALLOW_UNSAFE") as refused:
        get_hypervisor(first.uri).migrate_live(
            name=desktop.domain_name, to_uri=second.uri, to_address=second.console_address
        )
    assert refused.value.permanent and "unsafe" in refused.value.message.lower()
    assert _domains(first.uri).get(desktop.domain_name) is True
    assert desktop.domain_name not in _domains(second.uri)

    started = time.monotonic()
    stats = get_hypervisor(first.uri).migrate_live(
        name=desktop.domain_name, to_uri=second.uri, to_address=second.console_address,
        allow_unsafe=True,
    )  # fmt: skip
    took = time.monotonic() - started
    # QEMU's own figures: the guest paused briefly, as a live move does. QEMU aims at its
    # default limit of 300 ms for the last copy; the pause it measures also holds the
    # switch-over, which takes longer on a busy machine (324 ms seen with the suite on
    # four workers on 2 cores), so the bound is a second: a cold move pauses for longer.
    assert stats.elapsed_ms is not None and 0 < stats.elapsed_ms <= took * 1000 + 1000
    assert stats.downtime_ms is not None and 0 <= stats.downtime_ms <= 1000, stats

    assert _domains(second.uri).get(desktop.domain_name) is True
    assert desktop.domain_name not in _domains(first.uri)  # not left defined there either
    display = _display(second.uri, desktop.domain_name)
    assert display.get("listen") == second.console_address
    assert display.get("passwd"), "the display must keep its password on the new host"
    port = int(display.get("port", "0"))
    assert _rfb_banner(second.console_address, port) == b"RFB 003.008\n"
    assert took < 60, took

    # Back again (the disk is the same file, on the shared directory), then delete.
    get_hypervisor(second.uri).migrate_live(
        name=desktop.domain_name, to_uri=first.uri, to_address=first.console_address,
        allow_unsafe=True,
    )  # fmt: skip
    assert _domains(first.uri).get(desktop.domain_name) is True
    desktop_act(actor=employee, desktop=desktop, action="delete", source_ip="127.0.0.1")
    wait_for_status(desktop.pk, "deleted", timeout=60)
    assert desktop.domain_name not in _domains(first.uri)


def test_a_failed_migration_leaves_the_desktop_running_where_it_was(
    lab_host_in_portal, employee, demo_template
) -> None:
    Host.objects.exclude(pk=lab_host_in_portal.pk).update(enabled=False)
    desktop = desktop_create(user=employee, template_id=demo_template.pk)
    desktop = wait_for_status(desktop.pk, "running", timeout=120)

    # Nothing listens there (loopback, a closed port): the destination cannot be reached.
    with pytest.raises(HypervisorError):
        get_hypervisor(lab_host_in_portal.uri).migrate_live(
            name=desktop.domain_name, to_uri="qemu+ssh://127.0.0.1:1/system", to_address="127.0.0.1"
        )
    assert _domains(lab_host_in_portal.uri).get(desktop.domain_name) is True


def test_an_admin_migrates_a_running_desktop_through_the_api(
    lab_host_joined, api_for, admin_user_, employee, demo_template
) -> None:
    first, second = lab_host_joined("laba"), lab_host_joined("labb")
    Host.objects.exclude(pk=first.pk).update(enabled=False)
    desktop = desktop_create(user=employee, template_id=demo_template.pk)
    desktop = wait_for_status(desktop.pk, "running", timeout=120)
    Host.objects.filter(pk=second.pk).update(enabled=True)

    answer = api_for(admin_user_).post(
        f"/api/desktops/{desktop.pk}/migrate/", {"host": "labb"}, format="json"
    )
    assert answer.status_code == 202, answer.content
    assert answer.json()["desktop"]["status"] == "migrating"
    desktop = wait_for_status(desktop.pk, "running", timeout=120)
    assert desktop.host == second and desktop.migrate_to is None
    assert _domains(second.uri).get(desktop.domain_name) is True
    event = AuditEvent.objects.get(desktop=desktop, action="desktop.migrated")
    assert event.detail["source"] == "laba" and event.detail["target"] == "labb"
    assert api_for(admin_user_).get(f"/api/desktops/{desktop.pk}/").json()["host"] == "labb"
    assert "host" not in api_for(employee).get(f"/api/desktops/{desktop.pk}/").json()  # T74

    # Now on labb, the same request is refused: it is already there.
    again = api_for(admin_user_).post(
        f"/api/desktops/{desktop.pk}/migrate/", {"host": "labb"}, format="json"
    )
    assert again.status_code == 409 and "already runs on labb" in again.json()["detail"]
    desktop_act(actor=employee, desktop=desktop, action="delete", source_ip="127.0.0.1")
    wait_for_status(desktop.pk, "deleted", timeout=60)
