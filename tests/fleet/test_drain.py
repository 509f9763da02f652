"""Maintenance on real lab hosts: draining a host moves its running desktops live and
re-homes its stopped one; the stopped one then starts on its new host."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.fixtures import wait_for_status
from vms.models import AuditEvent, Desktop, Host, Quota
from vms.services.desktops.requests import desktop_act, desktop_create
from vms.services.disks.leases import desktop_disk_path
from vms.services.fleet.membership import (
    HostNotEmpty,
    host_disable,
    host_drain_pass,
    host_maintenance_set,
)

from .conftest import LAB_WORKERS
from .test_recovery import launch_on, running_on

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_draining_a_host_moves_every_desktop_and_it_takes_no_new_ones(
    two_hosts,
    admin_user_,
    employee,
    demo_template,
) -> None:
    laba, labb = two_hosts
    Quota.objects.create(
        user=employee, max_desktops=6, max_vcpus=6
    )  # three to drain, three launched after
    Host.objects.filter(pk__in=[laba.pk, labb.pk]).update(cpu_overcommit=4.0)  # 2 CPUs each
    running = [launch_on(laba, labb, employee, demo_template) for _ in range(2)]
    stopped = launch_on(laba, labb, employee, demo_template)
    desktop_act(actor=employee, desktop=stopped, action="stop")
    wait_for_status(stopped.pk, "stopped", timeout=60)

    assert host_maintenance_set(actor=admin_user_, host=Host.objects.get(pk=laba.pk), enabled=True)
    for _ in range(90):  # the drain task's passes (vms.tasks.host_drain), run here
        if not host_drain_pass(host_id=laba.pk, actor_id=admin_user_.pk):
            break
        time.sleep(2)
    else:
        raise AssertionError("the host was not drained within 3 minutes")
    on_b = {d.pk for d in Desktop.objects.filter(host=labb, status__in=["running", "stopped"])}
    assert {d.pk for d in running} | {stopped.pk} <= on_b
    for desktop in running:
        assert desktop.domain_name in running_on(labb)
        assert desktop.domain_name not in running_on(laba)
    assert AuditEvent.objects.filter(action="desktop.migrated").count() == 2
    rehomed = AuditEvent.objects.get(action="desktop.rehomed", desktop=stopped)
    assert rehomed.detail["target"] == "labb"

    stopped.refresh_from_db()
    desktop_act(actor=employee, desktop=stopped, action="start")
    wait_for_status(stopped.pk, "running", timeout=120)
    assert stopped.domain_name in running_on(labb)
    for _ in range(3):  # laba is in maintenance: every new desktop is placed on labb
        assert desktop_create(user=employee, template_id=demo_template.pk).host == labb


def test_a_stranded_desktop_still_deletes_and_starts_and_a_host_leaves_only_when_empty(
    two_hosts, employee, demo_template
) -> None:
    laba, labb = two_hosts
    Quota.objects.create(user=employee, max_desktops=2, max_vcpus=2)
    doomed, kept = (launch_on(laba, labb, employee, demo_template) for _ in range(2))
    for desktop in (doomed, kept):
        desktop_act(actor=employee, desktop=desktop, action="stop")
        wait_for_status(desktop.pk, "stopped", timeout=60)
    disk = Path(desktop_disk_path(doomed.volume_name))
    assert disk.exists()

    # What `scripts/lab-host down` used to do with desktops still on the host: its worker
    # stopped, the host disabled.
    worker = LAB_WORKERS["laba"]
    worker.send_signal(signal.SIGSTOP)
    try:
        Host.objects.filter(pk=laba.pk).update(enabled=False)
        desktop_act(actor=employee, desktop=Desktop.objects.get(pk=doomed.pk), action="delete")
        wait_for_status(doomed.pk, "deleted", timeout=90)
        assert not disk.exists()  # its disk went with it, removed by labb's worker
        desktop_act(actor=employee, desktop=Desktop.objects.get(pk=kept.pk), action="start")
        kept = wait_for_status(kept.pk, "running", timeout=120)
        assert kept.host == labb and kept.domain_name in running_on(labb)
    finally:
        worker.send_signal(signal.SIGCONT)
    Host.objects.filter(pk=laba.pk).update(enabled=True)

    # labb may not leave while its desktop runs there; stopped, it is handed to laba first.
    with pytest.raises(HostNotEmpty, match=r"\(running\)"):
        host_disable(name="labb")
    assert Host.objects.get(pk=labb.pk).enabled
    desktop_act(actor=employee, desktop=kept, action="stop")
    wait_for_status(kept.pk, "stopped", timeout=60)
    host_disable(name="labb")
    assert not Host.objects.get(pk=labb.pk).enabled
    assert Desktop.objects.get(pk=kept.pk).host == laba
