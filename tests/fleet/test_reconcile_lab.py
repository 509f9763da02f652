"""Reconcile on a lab host that shares the pool directory: another host's running desktop
keeps its disk (each host lists the others' volumes once its pool is refreshed)."""

from __future__ import annotations

import os

import libvirt
import pytest
from django.conf import settings

from tests.fixtures import wait_for_status
from vms.models import Host
from vms.services.desktops.requests import desktop_act, desktop_create
from vms.services.fleet.reconcile import reconcile_host

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_reconcile_never_removes_a_disk_another_host_uses(
    lab_host_joined, employee, demo_template
) -> None:
    first, second = lab_host_joined("laba"), lab_host_joined("labb")
    Host.objects.exclude(pk=first.pk).update(enabled=False)
    desktop = desktop_create(user=employee, template_id=demo_template.pk)
    desktop = wait_for_status(desktop.pk, "running", timeout=120)
    conn = libvirt.open(second.uri)
    try:
        conn.storagePoolLookupByName(second.storage_pool).refresh(0)  # as a restart would
    finally:
        conn.close()

    report = reconcile_host(host=second)

    assert desktop.volume_name not in report.removed_volumes
    assert os.path.exists(os.path.join(settings.STORAGE_POOL_PATH, desktop.volume_name))
    desktop.refresh_from_db()
    assert desktop.status == "running"
    desktop_act(actor=employee, desktop=desktop, action="delete", source_ip="127.0.0.1")
    wait_for_status(desktop.pk, "deleted", timeout=60)
