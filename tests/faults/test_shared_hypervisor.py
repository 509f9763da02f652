"""The fault tests run host 'faulty' beside host 'local' on the same libvirtd and pool.
Reconcile of one must not take the other's desktops for orphans."""

from __future__ import annotations

import pytest

from tests.faults.support import desktop_row, libvirt_objects
from vms.models import DesktopStatus
from vms.services.desktops import lifecycle
from vms.services.fleet.reconcile import ReconcileReport, reconcile_host

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_reconcile_spares_desktops_of_another_host_on_the_same_libvirt(
    faulty_host, local_host, employee, demo_template
) -> None:
    neighbour = desktop_row(employee, demo_template, local_host, "on local")
    lifecycle.desktop_provision(desktop_id=neighbour.pk)
    neighbour.refresh_from_db()
    assert neighbour.status == DesktopStatus.RUNNING, neighbour.last_error

    assert reconcile_host(host=faulty_host) == ReconcileReport()
    assert libvirt_objects(local_host) == ([neighbour.domain_name], [neighbour.volume_name])
