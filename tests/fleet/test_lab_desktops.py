"""Desktops on a lab host: placed there, run by that host's libvirtd and Celery worker, and
their console reached through both relays at the host's own address (the endpoint still
comes from libvirt)."""

from __future__ import annotations

import libvirt
import pytest

from tests.fixtures import wait_for_status
from tests.relay.conftest import connect, mint_ticket, session_cookie
from vms.models import Host
from vms.services.desktops.requests import desktop_act, desktop_create

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_a_desktop_placed_on_a_lab_host_runs_there_with_its_console_through_each_relay(
    lab_host_in_portal, relay, employee, demo_template
) -> None:
    Host.objects.filter(name="local").update(enabled=False)  # only the lab host has room
    desktop = desktop_create(user=employee, template_id=demo_template.pk)
    assert desktop.host == lab_host_in_portal
    desktop = wait_for_status(desktop.pk, "running", timeout=120)

    conn = libvirt.open(lab_host_in_portal.uri)
    try:
        assert conn.lookupByName(desktop.domain_name).isActive()
    finally:
        conn.close()
    local = libvirt.open("qemu:///system")
    try:
        assert desktop.domain_name not in [d.name() for d in local.listAllDomains()]
    finally:
        local.close()

    ticket = mint_ticket(employee, desktop)
    outcome = connect(relay.url, desktop, ticket["ticket"], cookie=session_cookie(employee))
    assert outcome.code is None, outcome
    width, height = (
        int.from_bytes(outcome.server_init[:2]),
        int.from_bytes(outcome.server_init[2:4]),
    )
    assert width > 0 and height > 0

    desktop_act(actor=employee, desktop=desktop, action="delete", source_ip="127.0.0.1")
    wait_for_status(desktop.pk, "deleted", timeout=60)
    conn = libvirt.open(lab_host_in_portal.uri)
    try:
        assert desktop.domain_name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
